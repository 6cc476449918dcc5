/**
 * Every avatar says, machine-readably, that a model made it (EU AI Act art. 50(2)): IPTC's digital
 * source type `trainedAlgorithmicMedia` in XMP, with the model as the AI system used and a credit
 * line. Added to the encoded bytes without re-encoding them, where common readers look:
 * - PNG: an uncompressed iTXt chunk `XML:com.adobe.xmp` after IHDR (sharp's own XMP goes into a
 *   compressed zTXt chunk that readers such as exifreader skip);
 * - JPEG: an APP1 segment with Adobe's XMP namespace, after SOI (and JFIF's APP0);
 * - WebP: an `XMP ` chunk, the file made extended (VP8X) to announce it.
 */
import { crc32 } from 'node:zlib';
import type { TileFormat } from '../shared/keys.ts';

export const TRAINED_ALGORITHMIC_MEDIA = 'http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia';

export interface Marking {
  /** The image model that drew it. */
  model: string;
  /** Who to credit, from AVATAR_CREDIT. */
  credit: string;
}

const escapeXml = (text: string) => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

export function xmpPacket({ model, credit }: Marking): string {
  return [
    '<?xpacket begin="\uFEFF" id="W5M0MpCehiHzreSzNTczkc9d"?>',
    '<x:xmpmeta xmlns:x="adobe:ns:meta/">',
    ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">',
    '  <rdf:Description rdf:about=""',
    '    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"',
    '    xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"',
    '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"',
    `    Iptc4xmpExt:DigitalSourceType="${TRAINED_ALGORITHMIC_MEDIA}"`,
    `    Iptc4xmpExt:AISystemUsed="${escapeXml(model)}"`,
    `    photoshop:Credit="${escapeXml(credit)}"`,
    '    xmp:CreatorTool="persona-avatars"/>',
    ' </rdf:RDF>',
    '</x:xmpmeta>',
    '<?xpacket end="r"?>',
  ].join('\n');
}

function pngChunk(type: string, data: Buffer): Buffer {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([length, body, crc]);
}

function markPng(png: Buffer, xmp: string): Buffer {
  // Keyword, then no compression, no language, no translated keyword, then the packet in UTF-8.
  const data = Buffer.concat([Buffer.from('XML:com.adobe.xmp\0\0\0\0\0', 'latin1'), Buffer.from(xmp, 'utf8')]);
  const afterIhdr = 8 + 8 + png.readUInt32BE(8) + 4;
  return Buffer.concat([png.subarray(0, afterIhdr), pngChunk('iTXt', data), png.subarray(afterIhdr)]);
}

function markJpeg(jpeg: Buffer, xmp: string): Buffer {
  const payload = Buffer.concat([Buffer.from('http://ns.adobe.com/xap/1.0/\0', 'latin1'), Buffer.from(xmp, 'utf8')]);
  const header = Buffer.from([0xff, 0xe1, 0, 0]);
  header.writeUInt16BE(payload.length + 2, 2);
  // After SOI, and after JFIF's APP0 when there is one: JFIF wants its segment first.
  const at = jpeg[2] === 0xff && jpeg[3] === 0xe0 ? 4 + jpeg.readUInt16BE(4) : 2;
  return Buffer.concat([jpeg.subarray(0, at), header, payload, jpeg.subarray(at)]);
}

function riffChunk(type: string, data: Buffer): Buffer {
  const header = Buffer.alloc(8);
  header.write(type, 0, 'latin1');
  header.writeUInt32LE(data.length, 4);
  return Buffer.concat([header, data, data.length % 2 ? Buffer.alloc(1) : Buffer.alloc(0)]);
}

const VP8X_XMP = 0x04;
const VP8X_ALPHA = 0x10;

function markWebp(webp: Buffer, xmp: string, width: number, height: number): Buffer {
  let chunks = webp.subarray(12);
  const first = chunks.toString('latin1', 0, 4);
  if (first === 'VP8X') {
    chunks = Buffer.from(chunks);
    chunks[8] = chunks[8]! | VP8X_XMP;
  } else {
    // A simple file (one VP8 or VP8L chunk) becomes extended: VP8X names its canvas and features.
    const vp8x = Buffer.alloc(10);
    // VP8L keeps an alpha bit in its header; VP8 has no alpha without an ALPH chunk.
    const alpha = first === 'VP8L' && (chunks.readUInt32LE(9) >>> 28) & 1;
    vp8x[0] = VP8X_XMP | (alpha ? VP8X_ALPHA : 0);
    vp8x.writeUIntLE(width - 1, 4, 3);
    vp8x.writeUIntLE(height - 1, 7, 3);
    chunks = Buffer.concat([riffChunk('VP8X', vp8x), chunks]);
  }
  const body = Buffer.concat([Buffer.from('WEBP', 'latin1'), chunks, riffChunk('XMP ', Buffer.from(xmp, 'utf8'))]);
  const header = Buffer.alloc(8);
  header.write('RIFF', 0, 'latin1');
  header.writeUInt32LE(body.length, 4);
  return Buffer.concat([header, body]);
}

/** The avatar's bytes with its marking; its pixels and encoding unchanged. */
export function marked(image: Buffer, format: TileFormat, size: { width: number; height: number }, marking: Marking): Buffer {
  const xmp = xmpPacket(marking);
  if (format === 'png') return markPng(image, xmp);
  if (format === 'jpeg') return markJpeg(image, xmp);
  return markWebp(image, xmp, size.width, size.height);
}
