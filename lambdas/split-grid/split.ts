import sharp from 'sharp';
import { GridLayoutMismatch } from '../shared/errors.ts';
import type { TileFormat } from '../shared/keys.ts';
import { detectCells, equalCells, type Box, type RawImage } from './detect.ts';

export interface Tile {
  box: Box;
  data: Buffer;
}

/**
 * Decodes once, flattening transparency onto white so it reads as background. A grid that does
 * not decode has no layout at all: the workflow draws it again, as for a wrong layout.
 */
export async function decode(image: Buffer, what = 'grid'): Promise<RawImage> {
  try {
    const { data, info } = await sharp(image).flatten({ background: '#ffffff' }).raw().toBuffer({ resolveWithObject: true });
    return { data, width: info.width, height: info.height, channels: info.channels };
  } catch (error) {
    throw new GridLayoutMismatch(`${what} cannot be decoded (${(error as Error).message.trim()}); the workflow draws this grid again, at most twice, then fails the run`);
  }
}

export async function encodeTiles(raw: RawImage, boxes: Box[], format: TileFormat): Promise<Tile[]> {
  const { width, height, channels } = raw;
  return Promise.all(
    boxes.map(async (box) => ({
      box,
      data: await sharp(raw.data, { raw: { width, height, channels: channels as 3 } })
        .extract(box)
        .toFormat(format)
        .toBuffer(),
    })),
  );
}

/** Cuts a generated grid into its cells, found from the pixels (see detect.ts). */
export async function splitGrid(image: Buffer, rows: number, cols: number, format: TileFormat = 'png', what?: string): Promise<Tile[]> {
  const raw = await decode(image, what);
  return encodeTiles(raw, detectCells(raw, rows, cols, what), format);
}

/** The seed's equal split, for comparison in the bench. */
export async function splitEqually(image: Buffer, rows: number, cols: number, format: TileFormat = 'png'): Promise<Tile[]> {
  const raw = await decode(image);
  return encodeTiles(raw, equalCells(raw.width, raw.height, rows, cols), format);
}
