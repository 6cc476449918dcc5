/**
 * Avatars of one size: every tile of a run is cropped to the same dimensions around its subject
 * (sharp's attention strategy finds the face and skin tones), scaled but never stretched.
 */
import sharp from 'sharp';
import { PNG_OPTIONS, type TileFormat } from '../shared/keys.ts';

export interface Dimensions {
  width: number;
  height: number;
}

/**
 * The run's avatar size: `width` wide at `aspect` (e.g. "4:5"), or with `auto` the largest such
 * box every tile holds, so no avatar is upscaled.
 */
export function avatarDimensions(tiles: Dimensions[], width: number | 'auto', aspect: string): Dimensions {
  const [a, b] = aspect.split(':').map(Number) as [number, number];
  const w = width === 'auto' ? Math.floor(Math.min(...tiles.map((t) => Math.min(t.width, (t.height * a) / b)))) : width;
  return { width: w, height: Math.round((w * b) / a) };
}

/** One avatar at `size`, in `format`; bytes already at that size and format are kept as they are. */
export async function uniformAvatar(image: Buffer, size: Dimensions, format: TileFormat, quality: number): Promise<Buffer> {
  const meta = await sharp(image).metadata();
  if (meta.width === size.width && meta.height === size.height && meta.format === format) return image;
  return sharp(image)
    .resize(size.width, size.height, { fit: 'cover', position: sharp.strategy.attention })
    .toFormat(format, format === 'png' ? PNG_OPTIONS : { quality })
    .toBuffer();
}
