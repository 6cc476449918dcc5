"""The Python service's split, for comparison: Pillow, an equal 2x2 split, each tile trimmed of
its uniform border (the seed's split_and_trim_image). Usage: pillow-split.py OUT GRID..."""
import os
import sys

from PIL import Image, ImageChops


def trim(tile):
    background = Image.new(tile.mode, tile.size, tile.getpixel((0, 0)))
    box = ImageChops.difference(tile, background).getbbox()
    return tile.crop(box) if box else tile


def main(out, grids):
    for path in grids:
        grid = Image.open(path).convert("RGB")
        width, height = grid.size
        name = os.path.splitext(os.path.basename(path))[0]
        os.makedirs(os.path.join(out, name), exist_ok=True)
        for row in range(2):
            for col in range(2):
                box = (col * width // 2, row * height // 2, (col + 1) * width // 2, (row + 1) * height // 2)
                trim(grid.crop(box)).save(os.path.join(out, name, f"img_{row * 2 + col}.png"))


main(sys.argv[1], sys.argv[2:])
