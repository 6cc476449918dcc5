/**
 * Faces and identity embeddings, fully offline: @vladmandic/human's face detector and description
 * model (faceres), which ship inside its package, on TensorFlow.js's WASM backend. Loaded once per
 * process (about a second), then about 0.2 s an image.
 */
import { readFile } from 'node:fs/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import sharp from 'sharp';
import { faceAssetDirs } from './assets.ts';

/** The package's exports map lacks "./", so its Node WASM build is loaded by path, on first use. */
const loadHuman = () => import('../../node_modules/@vladmandic/human/dist/human.node-wasm.js');

export interface Face {
  /** Detector confidence, 0 to 1. */
  score: number;
  box: [number, number, number, number];
  embedding: number[];
  /** The description model's estimates: gender with its confidence (0 to 1), and apparent age in years. */
  gender: 'male' | 'female' | 'unknown';
  genderScore: number;
  age: number;
}

/** Detections this sure are faces; the largest one is the image's subject. */
const CONFIDENT = 0.5;

export const subjectOf = (faces: Face[]): Face | undefined => faces.find((f) => f.score >= CONFIDENT);

/** Who finds faces for check-base and check-identity: in-process on Lambda; in a worker thread locally. */
export interface FaceFinder {
  facesIn(image: Buffer): Promise<Face[]>;
  /**
   * Start loading the models now, for a run that will check faces later: a worker thread loads
   * them on another core while the run's first stages go on. Without it, the first check loads them.
   */
  warmUp?(): void;
}

/** For check-base's and check-identity's handlers: the detector in this process. */
export function faceFinder(): { faces: FaceFinder } {
  return { faces: { facesIn } };
}

type HumanLike = InstanceType<Awaited<ReturnType<typeof loadHuman>>['Human']>;

/** tfjs loads models through fetch, which cannot read file:// URLs: read those from disk. */
function fetchWithFiles(fetchUrl: typeof fetch): typeof fetch {
  return (async (input: string | URL | Request, init?: RequestInit) => {
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
    if (!url.startsWith('file://')) return fetchUrl(input, init);
    const body = await readFile(fileURLToPath(url));
    return new Response(body, { headers: { 'content-type': url.endsWith('.json') ? 'application/json' : 'application/octet-stream' } });
  }) as typeof fetch;
}

let loading: Promise<HumanLike> | undefined;
let readsFiles = false;

async function human(): Promise<HumanLike> {
  if (!readsFiles) {
    globalThis.fetch = fetchWithFiles(globalThis.fetch);
    readsFiles = true;
  }
  const dirs = faceAssetDirs();
  // Bundled with tfjs into the Lambda, which then needs only the .wasm binaries and the models.
  const { Human } = await loadHuman();
  const instance = new Human({
    backend: 'wasm',
    wasmPath: `${pathToFileURL(dirs.wasm).href}/`,
    modelBasePath: `${pathToFileURL(dirs.models).href}/`,
    debug: false,
    cacheSensitivity: 0,
    face: {
      enabled: true,
      detector: { rotation: false, maxDetected: 5, minConfidence: 0.3, return: false },
      mesh: { enabled: true },
      iris: { enabled: false },
      description: { enabled: true },
      emotion: { enabled: false },
      antispoof: { enabled: false },
      liveness: { enabled: false },
    },
    body: { enabled: false },
    hand: { enabled: false },
    object: { enabled: false },
    gesture: { enabled: false },
    segmentation: { enabled: false },
  });
  await instance.load();
  return instance;
}

/** The detector and description model, loaded on first use; a failed load is tried again. */
export function models(): Promise<HumanLike> {
  loading ??= human().catch((error: unknown) => {
    loading = undefined;
    throw error;
  });
  return loading;
}

/** Every face in an encoded image, largest first. */
export async function facesIn(image: Buffer): Promise<Face[]> {
  const h = await models();
  const { data, info } = await sharp(image).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const tensor = h.tf.tensor3d(new Uint8Array(data.buffer, data.byteOffset, data.length), [info.height, info.width, 3], 'int32');
  try {
    const result = await h.detect(tensor);
    return result.face
      .filter((f) => f.embedding && f.embedding.length > 0)
      .map((f): Face => ({
        score: f.score,
        box: f.box,
        embedding: f.embedding!,
        gender: f.gender === 'male' || f.gender === 'female' ? f.gender : 'unknown',
        genderScore: f.genderScore ?? 0,
        age: f.age ?? 0,
      }))
      .sort((a, b) => b.box[2] * b.box[3] - a.box[2] * a.box[3]);
  } finally {
    h.tf.dispose(tensor);
  }
}

/** Cosine similarity of two identity embeddings: 1 the same, about 0.35 two different people. */
export function similarity(a: number[], b: number[]): number {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i]! * b[i]!;
    na += a[i]! ** 2;
    nb += b[i]! ** 2;
  }
  return dot / Math.sqrt(na * nb);
}
