/**
 * Whether bytes from an image API are a whole image of the size asked, read from the file's own
 * structure (no decoder: the image stages do not carry sharp). A truncated or garbled answer is
 * caught before it is stored and before anything is built on it.
 */
export interface Size {
  width: number;
  height: number;
}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
const PNG_END = Buffer.from([0, 0, 0, 0, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82]);

function pngSize(image: Buffer): Size | string {
  if (image.length < 33 || image.toString('latin1', 12, 16) !== 'IHDR') return 'a PNG without its header';
  if (!image.subarray(-12).equals(PNG_END)) return 'a truncated PNG (no end chunk)';
  return { width: image.readUInt32BE(16), height: image.readUInt32BE(20) };
}

function jpegSize(image: Buffer): Size | string {
  if (image[image.length - 2] !== 0xff || image[image.length - 1] !== 0xd9) return 'a truncated JPEG (no end marker)';
  // Walk the segments to the frame header (SOF0-SOF15, except DHT, JPG and DAC).
  for (let at = 2; at + 9 < image.length; ) {
    if (image[at] !== 0xff) return 'a JPEG with a broken segment';
    const marker = image[at + 1]!;
    if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) return { height: image.readUInt16BE(at + 5), width: image.readUInt16BE(at + 7) };
    at += 2 + image.readUInt16BE(at + 2);
  }
  return 'a JPEG without a frame header';
}

function webpSize(image: Buffer): Size | string {
  if (image.readUInt32LE(4) + 8 !== image.length) return 'a truncated WebP';
  const chunk = image.toString('latin1', 12, 16);
  if (chunk === 'VP8X') return { width: 1 + image.readUIntLE(24, 3), height: 1 + image.readUIntLE(27, 3) };
  if (chunk === 'VP8 ') return { width: image.readUInt16LE(26) & 0x3fff, height: image.readUInt16LE(28) & 0x3fff };
  if (chunk === 'VP8L') {
    const bits = image.readUInt32LE(21);
    return { width: (bits & 0x3fff) + 1, height: ((bits >> 14) & 0x3fff) + 1 };
  }
  return 'a WebP without an image chunk';
}

/** What is wrong with `image`, or undefined when it is whole and, if given, of `expected` size. */
export function imageProblem(image: Buffer, expected?: Size): string | undefined {
  let size: Size | string;
  if (image.length >= 8 && image.subarray(0, 8).equals(PNG_SIGNATURE)) size = pngSize(image);
  else if (image[0] === 0xff && image[1] === 0xd8) size = jpegSize(image);
  else if (image.length >= 30 && image.toString('latin1', 0, 4) === 'RIFF' && image.toString('latin1', 8, 12) === 'WEBP') size = webpSize(image);
  else return `not an image (${image.length} bytes starting ${JSON.stringify(image.subarray(0, 8).toString('latin1'))})`;
  if (typeof size === 'string') return size;
  if (expected && (size.width !== expected.width || size.height !== expected.height)) {
    return `${size.width}x${size.height} instead of the ${expected.width}x${expected.height} asked`;
  }
  return undefined;
}
