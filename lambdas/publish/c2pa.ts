/**
 * C2PA, behind one small module: a signed manifest embedded in an image (PNG `caBX`, WebP `C2PA`,
 * JPEG APP11) and read back with its validation. The library is `@contentauth/c2pa-wasm` (pinned),
 * whose npm build asks two things of its host that are adapted here and nowhere else:
 * - its signer callback returns a whole COSE_Sign1 (RFC 9052) padded to the reserved size, so the
 *   structure is built here around a plain ES256 signature, which any key can give (a PEM key,
 *   or a KMS key through `C2paSigner.sign`), in the few CBOR items it takes (cbor-x would bring
 *   an optional native decoder whose platform packages the lockfile cannot pin);
 * - its Builder reads a Blob through `FileReaderSync`, a browser worker API Node lacks: it is
 *   given a byte view that answers the calls the library makes (`size`, `slice`, `arrayBuffer`).
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import init, { WasmBuilder, WasmReader } from '@contentauth/c2pa-wasm';
import { ConfigurationError } from '../shared/errors.ts';
import { contentTypes, type TileFormat } from '../shared/keys.ts';
import { TRAINED_ALGORITHMIC_MEDIA } from './marking.ts';

export { TRAINED_ALGORITHMIC_MEDIA };

/** Who signs: a certificate chain and a key that signs with ES256 (ECDSA P-256, SHA-256). */
export interface C2paSigner {
  /** The signing certificate's subject, as readers show it. */
  name: string;
  /** DER certificates, the signing one first, then the issuers up to (not including) the root. */
  chain: Uint8Array[];
  /** An ES256 signature of `bytes`, as r‖s (64 bytes). */
  sign(bytes: Uint8Array): Promise<Uint8Array>;
  /** When the signing certificate stops being valid, if known: the signer is read again then. */
  notAfter?: Date;
}

/** An image and its format, as this module takes them. */
export interface Asset {
  bytes: Uint8Array;
  format: TileFormat;
}

export interface C2paAction {
  action: string;
  digitalSourceType?: string;
  /** The software (or model) that did it. */
  softwareAgent?: string;
  /** Ingredient labels the action acts on. */
  ingredients?: string[];
}

export interface C2paManifestDefinition {
  title: string;
  actions: C2paAction[];
  /** Files this one is made from, by label: `parentOf` the one it was opened from. */
  parent?: Asset & { label: string; title: string };
}

export type ValidationState = 'Invalid' | 'Valid' | 'Trusted';

export interface C2paReport {
  state: ValidationState;
  /** The active manifest as the reader gives it (claim_generator_info, assertions, ingredients…). */
  manifest: ActiveManifest;
  /** Failure codes of the active manifest (`assertion.dataHash.mismatch`, `signingCredential.untrusted`…). */
  failures: string[];
  /** The manifest of its `parentOf` ingredient, kept inside it, if that had one. */
  parent?: ActiveManifest;
}

export interface ActiveManifest {
  title?: string;
  signature_info?: { issuer?: string; common_name?: string; alg?: string };
  assertions: { label: string; data: { actions?: Record<string, unknown>[] } }[];
  ingredients?: { title?: string; relationship?: string; label?: string; active_manifest?: string; validation_results?: unknown }[];
}

/** The actions a manifest says made the image (its actions assertion, v1 or v2). */
export function manifestActions(manifest: ActiveManifest): Record<string, unknown>[] {
  return manifest.assertions.find((a) => a.label.startsWith('c2pa.actions'))?.data.actions ?? [];
}

/** Who signed a manifest, as readers name them: the certificate's common name, else its organisation. */
export function manifestSigner(manifest: ActiveManifest | undefined): string | undefined {
  return manifest?.signature_info?.common_name ?? manifest?.signature_info?.issuer;
}

/** The .wasm beside a Lambda bundle (infra copies it there), else in node_modules. */
export function c2paWasmPath(): string {
  const here = typeof __filename === 'string' ? dirname(__filename) : dirname(fileURLToPath(import.meta.url));
  const beside = join(here, 'c2pa_bg.wasm');
  return existsSync(beside) ? beside : createRequire(join(here, 'c2pa.ts')).resolve('@contentauth/c2pa-wasm/c2pa.wasm');
}

let loaded: Promise<unknown> | undefined;

/** Compiles the library once per process (about 9 MB of WASM). */
function ready(): Promise<unknown> {
  (globalThis as { FileReaderSync?: unknown }).FileReaderSync ??= ByteReader;
  loaded ??= init({ module_or_path: readFileSync(c2paWasmPath()) });
  return loaded;
}

/** Bytes that pass for a Blob with the library: it slices one and reads the slices, or reads it whole. */
class ByteBlob {
  readonly bytes: Uint8Array;
  constructor(bytes: Uint8Array) {
    this.bytes = bytes;
  }
  get size(): number {
    return this.bytes.length;
  }
  slice(start = 0, end = this.bytes.length): ByteBlob {
    return new ByteBlob(this.bytes.subarray(start, end));
  }
  /** A copy of exactly these bytes (a Buffer's `slice` would share its whole pool). */
  copy(): ArrayBuffer {
    return new Uint8Array(this.bytes).buffer;
  }
  async arrayBuffer(): Promise<ArrayBuffer> {
    return this.copy();
  }
}

/** What the library calls `new FileReaderSync()` for. */
class ByteReader {
  readAsArrayBuffer(blob: ByteBlob): ArrayBuffer {
    return blob.copy();
  }
}

const asBlob = (bytes: Uint8Array) => new ByteBlob(bytes) as unknown as Blob;

/** CBOR (RFC 8949), the little of it COSE_Sign1 needs: a tagged item's tag, then its value. */
class Tagged {
  readonly tag: number;
  readonly value: Cbor;
  constructor(tag: number, value: Cbor) {
    this.tag = tag;
    this.value = value;
  }
}
type Cbor = number | string | Uint8Array | null | Cbor[] | Map<number | string, Cbor> | Tagged;

/** A major type and its argument, in the shortest form. */
function head(major: number, n: number): Buffer {
  if (n < 24) return Buffer.from([(major << 5) | n]);
  if (n < 0x100) return Buffer.from([(major << 5) | 24, n]);
  if (n < 0x10000) return Buffer.from([(major << 5) | 25, n >> 8, n & 0xff]);
  const b = Buffer.alloc(5);
  b[0] = (major << 5) | 26;
  b.writeUInt32BE(n, 1);
  return b;
}

function cbor(value: Cbor): Buffer {
  if (value === null) return Buffer.from([0xf6]);
  if (typeof value === 'number') return value >= 0 ? head(0, value) : head(1, -1 - value);
  if (typeof value === 'string') return Buffer.concat([head(3, Buffer.byteLength(value)), Buffer.from(value, 'utf8')]);
  if (value instanceof Uint8Array) return Buffer.concat([head(2, value.length), value]);
  if (value instanceof Tagged) return Buffer.concat([head(6, value.tag), cbor(value.value)]);
  if (Array.isArray(value)) return Buffer.concat([head(4, value.length), ...value.map(cbor)]);
  return Buffer.concat([head(5, value.size), ...[...value].flatMap(([k, v]) => [cbor(k), cbor(v)])]);
}

/** COSE's header labels (alg, x5chain), ES256's algorithm id, Sign1's tag. */
const COSE_ALG = 1;
const COSE_ES256 = -7;
const COSE_X5CHAIN = 33;
const COSE_SIGN1_TAG = 18;

/** Room kept for the signature beyond the certificates (headers, padding, the 64-byte signature). */
const SIGNATURE_ROOM = 1024;

/**
 * The COSE_Sign1 the library embeds: ES256 and the certificate chain in the protected header, the
 * claim detached, and padding in the unprotected header so the whole is exactly `size` bytes.
 */
async function coseSign1(claim: Uint8Array, signer: C2paSigner, size: number): Promise<Uint8Array> {
  const chain = signer.chain.length === 1 ? signer.chain[0]! : signer.chain;
  const protectedHeader = cbor(new Map<number, Cbor>([[COSE_ALG, COSE_ES256], [COSE_X5CHAIN, chain]]));
  const toBeSigned = cbor(['Signature1', protectedHeader, new Uint8Array(0), claim]);
  const signature = await signer.sign(toBeSigned);
  const encode = (pad: number) => cbor(new Tagged(COSE_SIGN1_TAG, [protectedHeader, new Map([['pad', new Uint8Array(pad)]]), null, signature]));
  let pad = Math.max(0, size - encode(0).length);
  // The pad's own length prefix grows at 24, 256 and 65,536 bytes: settle on the size that fits.
  for (let tries = 0; tries < 4; tries++) {
    const sign1 = encode(pad);
    if (sign1.length === size) return sign1;
    pad -= sign1.length - size;
    if (pad < 0) break;
  }
  throw new Error(`C2PA signature of ${encode(0).length} bytes does not fit the ${size} bytes reserved for it`);
}

/** The C2PA actions assertion: what was done to make the image, by what, from which ingredients. */
function actionsAssertion(actions: C2paAction[]) {
  return {
    label: 'c2pa.actions.v2',
    data: {
      actions: actions.map(({ action, digitalSourceType, softwareAgent, ingredients }) => ({
        action,
        ...(digitalSourceType ? { digitalSourceType } : {}),
        ...(softwareAgent ? { softwareAgent: { name: softwareAgent } } : {}),
        ...(ingredients ? { parameters: { ingredientIds: ingredients } } : {}),
      })),
    },
  };
}

/**
 * What the library's check after signing failed on, from its error text: the signing credential's
 * failure codes (an untrusted one aside: trust is the reader's to give), or a COSE certificate error.
 */
function refusedCredential(message: string): string | undefined {
  const failures = message.split(/failure: \[/).slice(1).map((part) => part.split(/\] \}/)[0]!);
  const codes = failures.flatMap((part) => [...part.matchAll(/code: "(signingCredential\.[a-zA-Z.]+)"/g)].map((m) => m[1]!)).filter((c) => c !== 'signingCredential.untrusted');
  return codes.length > 0 ? [...new Set(codes)].join(', ') : /CoseCert[A-Za-z]*/.exec(message)?.[0];
}

/** The image with a signed C2PA manifest embedded; nothing else in it changes. */
export async function signC2pa(image: Asset, definition: C2paManifestDefinition, signer: C2paSigner, generator: { name: string; version: string }): Promise<Buffer> {
  await ready();
  const builder = WasmBuilder.fromJson(
    JSON.stringify({
      claim_generator_info: [generator],
      title: definition.title,
      format: contentTypes[image.format],
      assertions: [actionsAssertion(definition.actions)],
    }),
  );
  try {
    const { parent } = definition;
    if (parent) {
      await builder.addIngredientFromBlob(
        JSON.stringify({ title: parent.title, relationship: 'parentOf', label: parent.label, format: contentTypes[parent.format] }),
        contentTypes[parent.format],
        asBlob(parent.bytes),
      );
    }
    const reserveSize = signer.chain.reduce((sum, c) => sum + c.length, 0) + SIGNATURE_ROOM;
    const signed = await builder
      .sign({ alg: 'es256', reserveSize, sign: (claim) => coseSign1(claim, signer, reserveSize) as Promise<Uint8Array<ArrayBuffer>> }, [], contentTypes[image.format], asBlob(image.bytes))
      .catch((error: unknown) => {
        // The library checks what it signed: a certificate it refuses is the configuration's to fix.
        const refused = refusedCredential(String((error as Error)?.message ?? error));
        if (refused) throw new ConfigurationError(`C2PA signing as "${signer.name}" refused: ${refused}; renew or replace the signing certificate (README: Marking)`);
        throw error;
      });
    return Buffer.from(signed);
  } finally {
    builder.free();
  }
}

/** The image's C2PA manifest and its validation, or undefined when it has none. */
export async function readC2pa(image: Asset, trustAnchorsPem?: string): Promise<C2paReport | undefined> {
  await ready();
  const context = trustAnchorsPem ? JSON.stringify({ trust: { trust_anchors: trustAnchorsPem } }) : null;
  let reader: WasmReader;
  try {
    reader = await WasmReader.fromBytes(contentTypes[image.format], image.bytes, context);
  } catch (error) {
    // JumbfNotFound: the image carries no manifest at all.
    if (/NotFound/.test(String((error as Error)?.message ?? error))) return undefined;
    throw error;
  }
  try {
    const store = JSON.parse(reader.json()) as {
      active_manifest?: string;
      manifests: Record<string, ActiveManifest>;
      validation_state?: ValidationState;
      validation_results?: { activeManifest?: { failure?: { code: string }[] } };
    };
    if (!store.active_manifest) return undefined;
    const manifest = store.manifests[store.active_manifest]!;
    const parentLabel = manifest.ingredients?.find((i) => i.relationship === 'parentOf')?.active_manifest;
    return {
      state: store.validation_state ?? 'Invalid',
      manifest,
      failures: (store.validation_results?.activeManifest?.failure ?? []).map((f) => f.code),
      ...(parentLabel && store.manifests[parentLabel] ? { parent: store.manifests[parentLabel] } : {}),
    };
  } finally {
    reader.free();
  }
}
