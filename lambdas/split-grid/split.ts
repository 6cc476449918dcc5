import sharp from 'sharp';
import { GridLayoutMismatch } from '../shared/errors.ts';
import type { TileFormat } from '../shared/keys.ts';
import { detectCells, equalCells, type Box, type RawImage } from './detect.ts';

export interface Tile {
  box: Box;
  data: Buffer;
}

/**
 * Decodes once, alpha kept: a transparent pixel reads as background (detect.ts) and each tile is
 * flattened onto white as it is encoded, in sharp's threads, instead of the whole grid here. A
 * grid that does not decode has no layout at all: the workflow draws it again, as for a wrong layout.
 */
export async function decode(image: Buffer, what = 'grid'): Promise<RawImage> {
  try {
    const { data, info } = await sharp(image).raw().toBuffer({ resolveWithObject: true });
    return { data, width: info.width, height: info.height, channels: info.channels };
  } catch (error) {
    throw new GridLayoutMismatch(`${what} cannot be decoded (${(error as Error).message.trim()}); the workflow draws this grid again, at most twice, then fails the run`);
  }
}

/**
 * zlib's fastest level: tiles are intermediate on AWS (publish encodes the avatars) and, from
 * `avatars split`, still smaller than the Python service's (bench: about 0.9x its bytes, for a
 * fifth less encoding time than level 6).
 */
const TILE_PNG_COMPRESSION = 1;

export async function encodeTiles(raw: RawImage, boxes: Box[], format: TileFormat): Promise<Tile[]> {
  const { width, height, channels } = raw;
  const hasAlpha = channels === 2 || channels === 4;
  return Promise.all(
    boxes.map(async (box) => {
      const tile = sharp(raw.data, { raw: { width, height, channels: channels as 1 | 2 | 3 | 4 } }).extract(box);
      const flat = hasAlpha ? tile.flatten({ background: '#ffffff' }) : tile;
      return { box, data: await (format === 'png' ? flat.png({ compressionLevel: TILE_PNG_COMPRESSION }) : flat.toFormat(format)).toBuffer() };
    }),
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
