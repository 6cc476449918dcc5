import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { composeGrid, gridLayout, portraits, random, seedOf, type Cell } from '../local/avatar-art.ts';
import { GridLayoutMismatch } from '../lambdas/shared/errors.ts';
import { splitGrid } from '../lambdas/split-grid/split.ts';

/** Saturated, lightly noisy cell pictures: nothing in them looks like a white gutter. */
const PALETTE = [[200, 40, 60], [30, 120, 200], [40, 160, 90], [150, 60, 180], [220, 140, 20], [20, 90, 110]];

async function cellPicture(width: number, height: number, i: number): Promise<Buffer> {
  const [r, g, b] = PALETTE[i % PALETTE.length]!;
  const flat = await sharp({ create: { width, height, channels: 3, background: { r: r!, g: g!, b: b! } } }).png().toBuffer();
  const noise = await sharp({ create: { width, height, channels: 3, background: '#808080', noise: { type: 'gaussian', mean: 128, sigma: 12 } } }).png().toBuffer();
  return sharp(flat).composite([{ input: noise, blend: 'soft-light' }]).png().toBuffer();
}

async function makeGrid(width: number, height: number, seed: string, rows = 2, cols = 2, maxGutter = 40): Promise<{ png: Buffer; cells: Cell[] }> {
  const rnd = random(seedOf(seed));
  const cells = gridLayout(width, height, rows, cols, rnd, maxGutter);
  const pictures = await Promise.all(cells.map((c, i) => cellPicture(c.width, c.height, i)));
  return { png: await composeGrid(width, height, cells, pictures, rnd), cells };
}

function expectBoxesNear(found: { left: number; top: number; width: number; height: number }[], truth: Cell[]) {
  expect(found).toHaveLength(truth.length);
  found.forEach((box, i) => {
    const t = truth[i]!;
    const edges = [box.left - t.left, box.top - t.top, box.left + box.width - (t.left + t.width), box.top + box.height - (t.top + t.height)];
    expect(Math.max(...edges.map(Math.abs)), `cell ${i}: found ${JSON.stringify(box)}, truth ${JSON.stringify(t)}`).toBeLessThanOrEqual(2);
  });
}

describe('split-grid cell detection', () => {
  for (const [width, height] of [[1024, 1024], [1536, 1024], [1024, 1536]] as const) {
    it(`finds every cell within 2 px on ${width}x${height} grids with uneven gutters, margins and off-centre cells`, async () => {
      for (let n = 0; n < 6; n++) {
        const { png, cells } = await makeGrid(width, height, `${width}x${height}#${n}`);
        const tiles = await splitGrid(png, 2, 2);
        expectBoxesNear(tiles.map((t) => t.box), cells);
      }
    });
  }

  it('reads transparent gutters as white, and gives tiles without transparency', async () => {
    const { png, cells } = await makeGrid(1024, 1024, 'transparent');
    // The white of the gutters made transparent (dark underneath), as a model may draw them.
    const { data, info } = await sharp(png).ensureAlpha().raw().toBuffer({ resolveWithObject: true });
    for (let p = 0; p < data.length; p += 4) if (data[p]! > 230 && data[p + 1]! > 230 && data[p + 2]! > 230) data.set([0, 0, 0, 0], p);
    const transparent = await sharp(data, { raw: { width: info.width, height: info.height, channels: 4 } }).png().toBuffer();
    const tiles = await splitGrid(transparent, 2, 2);
    expectBoxesNear(tiles.map((t) => t.box), cells);
    for (const tile of tiles) expect((await sharp(tile.data).metadata()).hasAlpha).toBe(false);
  });

  it('cuts an opaque grid that carries an alpha channel into tiles of its exact pixels, without alpha', async () => {
    const { png } = await makeGrid(1024, 1024, 'opaque-alpha');
    expect((await sharp(png).metadata()).channels).toBe(4);
    const tiles = await splitGrid(png, 2, 2);
    const grid = await sharp(png).removeAlpha().raw().toBuffer({ resolveWithObject: true });
    for (const { box, data } of tiles) {
      const tile = await sharp(data).raw().toBuffer({ resolveWithObject: true });
      expect(tile.info.channels).toBe(3);
      const expected = await sharp(grid.data, { raw: grid.info }).extract(box).raw().toBuffer();
      expect(tile.data.equals(expected), `tile at ${JSON.stringify(box)}`).toBe(true);
    }
  });

  it('finds off-centre cells on a grid with no gutters at all, by the seams between pictures', async () => {
    const { png, cells } = await makeGrid(1024, 1024, 'no-gutters', 2, 2, 0);
    expectBoxesNear((await splitGrid(png, 2, 2)).map((t) => t.box), cells);
  });

  it('falls back to an equal split when nothing separates the cells', async () => {
    const plain = await sharp({ create: { width: 800, height: 600, channels: 3, background: '#336699' } }).png().toBuffer();
    const tiles = await splitGrid(plain, 2, 2);
    expect(tiles.map((t) => t.box)).toEqual([
      { left: 0, top: 0, width: 400, height: 300 },
      { left: 400, top: 0, width: 400, height: 300 },
      { left: 0, top: 300, width: 400, height: 300 },
      { left: 400, top: 300, width: 400, height: 300 },
    ]);
  });

  it('stores the tiles of a photographic grid in at most 1.25x the bytes of the smallest PNGs of their pixels', async () => {
    const rnd = random(seedOf('photographic'));
    const tiles = await splitGrid(await composeGrid(1024, 1024, gridLayout(1024, 1024, 2, 2, rnd), await portraits(), rnd), 2, 2);
    const smallest = await Promise.all(tiles.map((t) => sharp(t.data).png({ compressionLevel: 9, adaptiveFiltering: true }).toBuffer()));
    const bytes = (images: Buffer[]) => images.reduce((sum, image) => sum + image.length, 0);
    expect(bytes(tiles.map((t) => t.data)) / bytes(smallest)).toBeLessThanOrEqual(1.25);
  });

  it('encodes each tile as an image of its box, in the format asked for', async () => {
    const { png } = await makeGrid(1024, 1024, 'formats');
    const tiles = await splitGrid(png, 2, 2, 'webp');
    const meta = await sharp(tiles[0]!.data).metadata();
    expect(meta.format).toBe('webp');
    expect([meta.width, meta.height]).toEqual([tiles[0]!.box.width, tiles[0]!.box.height]);
  });

  it('throws GridLayoutMismatch when the model drew three panels instead of four', async () => {
    const { png } = await makeGrid(1536, 1024, 'three-panels', 1, 3, 30);
    await expect(splitGrid(png, 2, 2)).rejects.toBeInstanceOf(GridLayoutMismatch);
  });

  it('throws GridLayoutMismatch when the model drew six panels instead of four', async () => {
    const { png } = await makeGrid(1536, 1024, 'six-panels', 2, 3, 30);
    await expect(splitGrid(png, 2, 2)).rejects.toThrow(/not a 2x2 grid/);
  });

  it('throws GridLayoutMismatch naming the size of an image wider than any grid a model draws', async () => {
    const strip = await sharp({ create: { width: 70_000, height: 64, channels: 3, background: '#ffffff' } }).png().toBuffer();
    const error = (await splitGrid(strip, 2, 2).catch((e: unknown) => e)) as Error;
    expect(error).toBeInstanceOf(GridLayoutMismatch);
    expect(error.message).toMatch(/70000x64/);
  });
});
