/**
 * How each avatar says what made it: IPTC XMP first (marking.ts), then, when publish has a
 * certificate, a signed C2PA manifest last, since any byte changed after signing invalidates it.
 * The manifest's parent is the image the model drew (the grid it was cut from), kept as a
 * `parentOf` ingredient with that image's own manifest (OpenAI's), so the chain back to the model's
 * signed original survives the crop.
 */
import sharp from 'sharp';
import packageJson from '../../package.json' with { type: 'json' };
import { formatOf } from '../shared/image-provider.ts';
import type { TileFormat } from '../shared/keys.ts';
import { manifestSigner, readC2pa, signC2pa, type C2paAction, type C2paSigner } from './c2pa.ts';
import { marked, TRAINED_ALGORITHMIC_MEDIA, type Marking } from './marking.ts';
import type { Dimensions } from './uniform.ts';

/** What the manifest records of each avatar's marking. */
export interface Provenance {
  digitalSourceType: typeof TRAINED_ALGORITHMIC_MEDIA;
  /** IPTC XMP always; a C2PA manifest too when it is signed. */
  marking: 'xmp' | 'xmp+c2pa';
  signed: boolean;
  /** Who signed the C2PA manifest: the certificate's common name. */
  signer?: string;
  /** The image the model drew, this avatar's C2PA parent, and who signed that image (OpenAI, say), if anyone did. */
  parent: { key: string; signedBy?: string };
  aiSystemUsed: string;
}

/** An image the model drew, as the avatars cut from it name it. */
export interface DrawnImage {
  key: string;
  bytes: Buffer;
  format: TileFormat;
  size: Dimensions;
  /** The signer of the C2PA manifest it came with, if any. */
  signedBy?: string;
}

export const CLAIM_GENERATOR = { name: packageJson.name, version: packageJson.version };

export async function drawnImage(key: string, bytes: Buffer): Promise<DrawnImage> {
  const format = formatOf(bytes);
  if (!format) throw new Error(`${key} is not a PNG, JPEG or WebP image`);
  const [manifest, { width = 0, height = 0 }] = await Promise.all([readC2pa({ bytes, format }), sharp(bytes).metadata()]);
  const signedBy = manifestSigner(manifest?.manifest);
  return { key, bytes, format, size: { width, height }, ...(signedBy ? { signedBy } : {}) };
}

export interface AvatarOrigin {
  /** What drew it and whom to credit. */
  marking: Marking;
  /** The image it was cut from. */
  parent: DrawnImage;
  /** The part of the parent it shows. */
  box: Dimensions;
  /** The avatar's name inside its manifest. */
  title: string;
}

/** What was done to the drawn image to make the avatar: opened, then cut out of it and scaled. */
function actionsOf({ marking, parent, box }: AvatarOrigin, size: Dimensions): C2paAction[] {
  const actions: C2paAction[] = [{ action: 'c2pa.opened', ingredients: ['drawn'], digitalSourceType: TRAINED_ALGORITHMIC_MEDIA, softwareAgent: marking.model }];
  const cut = box.width !== parent.size.width || box.height !== parent.size.height || box.width * size.height !== box.height * size.width;
  if (cut) actions.push({ action: 'c2pa.cropped' });
  if (size.width !== box.width && size.height !== box.height) actions.push({ action: 'c2pa.resized' });
  return actions;
}

/** The avatar with its marking: XMP, then a C2PA manifest signed by `signer` when there is one. */
export async function markAvatar(
  avatar: Buffer,
  format: TileFormat,
  size: Dimensions,
  origin: AvatarOrigin,
  signer: C2paSigner | undefined,
): Promise<{ bytes: Buffer; provenance: Provenance }> {
  const withXmp = marked(avatar, format, size, origin.marking);
  const parent = { key: origin.parent.key, ...(origin.parent.signedBy ? { signedBy: origin.parent.signedBy } : {}) };
  const provenance: Pick<Provenance, 'digitalSourceType' | 'aiSystemUsed' | 'parent'> = { digitalSourceType: TRAINED_ALGORITHMIC_MEDIA, aiSystemUsed: origin.marking.model, parent };
  if (!signer) return { bytes: withXmp, provenance: { ...provenance, marking: 'xmp', signed: false } };
  const bytes = await signC2pa(
    { bytes: withXmp, format },
    {
      title: origin.title,
      actions: actionsOf(origin, size),
      parent: { bytes: origin.parent.bytes, format: origin.parent.format, label: 'drawn', title: origin.parent.key.split('/').at(-1)! },
    },
    signer,
    CLAIM_GENERATOR,
  );
  return { bytes, provenance: { ...provenance, marking: 'xmp+c2pa', signed: true, signer: signer.name } };
}
