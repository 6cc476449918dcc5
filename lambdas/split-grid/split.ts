import sharp from 'sharp';
import { GridLayoutMismatch } from '../shared/errors.ts';
import { PNG_OPTIONS, type TileFormat } from '../shared/keys.ts';
import { detectCells, equalCells, type Box, type RawImage } from './detect.ts';

export interface Tile {
  box: Box;
  data: Buffer;
}

/**
 * Decodes once. Transparency is flattened onto white: a transparent gutter reads as background,
 * and the tiles, cut from these pixels, come out opaque. Most grids with an alpha channel are
 * opaque all over, and flattening their 4 MB of pixels nearly doubles a decode (10.6 against
 * 6.0 ms a grid), so those keep their alpha channel here and lose it as each tile is cut. A grid
 * that does not decode has no layout at all: the workflow draws it again, as for a wrong layout.
 */
async function decode(image: Buffer, what = 'grid'): Promise<RawImage> {
  try {
    const { data, info } = await sharp(image).raw().toBuffer({ resolveWithObject: true });
    const { width, height, channels } = info;
    if (!hasAlpha(channels) || isOpaque(data, channels)) return { data, width, height, channels };
    const flat = await sharp(data, { raw: { width, height, channels } }).flatten({ background: '#ffffff' }).raw().toBuffer({ resolveWithObject: true });
    release(data);
    return { data: flat.data, width, height, channels: flat.info.channels };
  } catch (error) {
    throw new GridLayoutMismatch(`${what} cannot be decoded (${(error as Error).message.trim()})`);
  }
}

/** Grey with alpha, or colour with alpha: the last channel is alpha. */
const hasAlpha = (channels: number) => channels === 2 || channels === 4;

function isOpaque(data: Uint8Array, channels: number): boolean {
  for (let i = channels - 1; i < data.length; i += channels) if (data[i] !== 255) return false;
  return true;
}

async function encodeTiles(raw: RawImage, boxes: Box[], format: TileFormat): Promise<Tile[]> {
  const { width, height, channels } = raw;
  return Promise.all(
    boxes.map(async (box) => {
      const region = sharp(raw.data, { raw: { width, height, channels: channels as 1 | 2 | 3 | 4 } }).extract(box);
      // Only an opaque grid still has its alpha channel (see decode).
      const tile = hasAlpha(channels) ? region.removeAlpha() : region;
      return { box, data: await (format === 'png' ? tile.png(PNG_OPTIONS) : tile.toFormat(format)).toBuffer() };
    }),
  );
}

/**
 * Gives a buffer's memory back now rather than at the next garbage collection, so the allocator
 * hands it to the next grid: fresh pages cost a page fault each, and a decoded grid is 4 MB of
 * them (bench: half the time of decoding many grids). Only a buffer that owns all its memory;
 * nothing may use it afterwards. Node 22 and later (ArrayBuffer transfer); a no-op before.
 */
export function release(data: Uint8Array): void {
  const memory = data.buffer as ArrayBuffer;
  if (data.byteOffset === 0 && data.byteLength === memory.byteLength) memory.transfer?.(0);
}

/** Decodes, cuts where `cellsOf` says and encodes, the decoded pixels released once the tiles are out. */
async function cut(image: Buffer, cellsOf: (raw: RawImage) => Box[], format: TileFormat, what?: string): Promise<Tile[]> {
  const raw = await decode(image, what);
  try {
    return await encodeTiles(raw, cellsOf(raw), format);
  } finally {
    release(raw.data);
  }
}

/** Cuts a generated grid into its cells, found from the pixels (see detect.ts). */
export function splitGrid(image: Buffer, rows: number, cols: number, format: TileFormat = 'png', what?: string, options: { gutters?: boolean } = {}): Promise<Tile[]> {
  return cut(image, (raw) => detectCells(raw, rows, cols, what, options), format, what);
}

/** The seed's equal split, for comparison in the bench. */
export function splitEqually(image: Buffer, rows: number, cols: number, format: TileFormat = 'png'): Promise<Tile[]> {
  return cut(image, (raw) => equalCells(raw.width, raw.height, rows, cols), format);
}
