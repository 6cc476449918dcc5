/**
 * The face index: every accepted base's identity embedding, with a pointer to its persona's
 * manifest, kept in the bucket beside the avatars (keys.ts: faces/).
 *
 * It is a log. Entry n is the object `faces/log/{n}`, written once with S3's conditional write
 * (`If-None-Match: *`): of two checks registering at the same moment one gets n and the other
 * finds n taken, reads it, and compares itself with it before it tries n+1. So every face is
 * compared with every face registered before it, however many runs register at once, and no
 * write ever replaces another. Each thousand entries are also written as one chunk, so a cold
 * Lambda reads 100,000 faces in a hundred requests; a warm one keeps what it read and reads only
 * what is new. No listing: the stages may not list the bucket, so the log is read by number until
 * the first key that is not there.
 *
 * Embeddings are kept as signed bytes, scaled to their largest component: cosine similarity
 * needs only their direction, and a byte per dimension keeps it within about 0.003.
 */
import { faceIndexKeys } from './keys.ts';
import type { ObjectStore } from './store.ts';

export interface IndexedFace {
  seq: number;
  personaId: string;
  runId: string;
  batchId?: string;
  /** The manifest its run publishes (avatars/{personaId}/runs/{runId}/manifest.json). */
  manifestKey: string;
  /** When it was registered (ISO 8601). */
  at: string;
}

interface StoredFace extends IndexedFace {
  /** The embedding as signed bytes, base64. */
  embedding: string;
}

export interface Nearest {
  face: IndexedFace;
  /** Cosine similarity, rounded to three places. */
  similarity: number;
}

export type Registration = { registered: IndexedFace } | { collided: Nearest };

/** Entries per chunk. */
const CHUNK = 1000;
/** Objects read at once while catching up. */
const READS_AT_ONCE = 32;

export function quantize(embedding: number[]): Int8Array {
  const largest = embedding.reduce((m, v) => Math.max(m, Math.abs(v)), 0) || 1;
  return Int8Array.from(embedding, (v) => Math.round((v * 127) / largest));
}

/**
 * Objects 0 to `most`-1 up to the first that is not there (the log's end): the first alone, then,
 * when there was one, the rest at once. A warm copy with nothing new to read makes one request.
 */
async function readAhead<T>(read: (i: number) => Promise<T | undefined>, most: number): Promise<T[]> {
  const first = await read(0);
  if (first === undefined) return [];
  const rest = await Promise.all(Array.from({ length: most - 1 }, (_, i) => read(i + 1)));
  const missing = rest.findIndex((r) => r === undefined);
  return [first, ...((missing < 0 ? rest : rest.slice(0, missing)) as T[])];
}

const encode = (v: Int8Array) => Buffer.from(v.buffer, v.byteOffset, v.length).toString('base64');

const norm = (v: Int8Array) => Math.sqrt(v.reduce((sum, x) => sum + x * x, 0)) || 1;

export class FaceIndex {
  private readonly store: ObjectStore;
  private readonly chunk: number;
  /** What each entry says besides its embedding, which is kept in `vectors` only. */
  private faces: IndexedFace[] = [];
  private dimensions = 0;
  private vectors = new Int8Array(0);
  private norms = new Float64Array(0);

  /** `chunk`: entries per chunk (1,000; fewer in specs). */
  constructor(store: ObjectStore, options: { chunk?: number } = {}) {
    this.store = store;
    this.chunk = options.chunk ?? CHUNK;
  }

  /** How many faces this copy of the index holds. */
  get size(): number {
    return this.faces.length;
  }

  private add(entries: StoredFace[]): void {
    for (const entry of entries) {
      if (entry.seq !== this.faces.length) throw new Error(`face index: entry ${entry.seq} read where ${this.faces.length} belongs (${faceIndexKeys.entry(entry.seq)})`);
      const bytes = Buffer.from(entry.embedding, 'base64');
      const vector = new Int8Array(bytes.buffer, bytes.byteOffset, bytes.length);
      if (this.dimensions === 0) this.dimensions = vector.length;
      if (vector.length !== this.dimensions) throw new Error(`face index: entry ${entry.seq} has ${vector.length} dimensions, the index ${this.dimensions}`);
      const n = this.faces.length;
      if ((n + 1) * this.dimensions > this.vectors.length) {
        const grown = new Int8Array(Math.max(1024, n * 2) * this.dimensions);
        grown.set(this.vectors);
        this.vectors = grown;
        const norms = new Float64Array(Math.max(1024, n * 2));
        norms.set(this.norms);
        this.norms = norms;
      }
      this.vectors.set(vector, n * this.dimensions);
      this.norms[n] = norm(vector);
      const { embedding: _, ...face } = entry;
      this.faces.push(face);
    }
  }

  /** One reader or registrant at a time in this process: two catching up at once would read the same entries twice. */
  private turn: Promise<unknown> = Promise.resolve();

  private exclusive<T>(work: () => Promise<T>): Promise<T> {
    const result = this.turn.then(work);
    this.turn = result.catch(() => undefined);
    return result;
  }

  /** Reads what was registered since this copy last looked. */
  refresh(): Promise<void> {
    return this.exclusive(() => this.catchUp());
  }

  private async catchUp(): Promise<void> {
    for (;;) {
      const next = this.faces.length;
      if (next % this.chunk === 0) {
        const chunks = await readAhead((i) => this.store.getJsonIfExists<StoredFace[]>(faceIndexKeys.chunk(next + i * this.chunk)), 8);
        for (const chunk of chunks) this.add(chunk);
        if (chunks.length > 0) continue;
      }
      // Entries up to the next chunk boundary, a window at a time.
      const end = Math.min(next + READS_AT_ONCE, (Math.floor(next / this.chunk) + 1) * this.chunk);
      const found = await readAhead((i) => this.store.getJsonIfExists<StoredFace>(faceIndexKeys.entry(next + i)), end - next);
      this.add(found);
      if (found.length > 0 && this.faces.length % this.chunk === 0) await this.writeChunk(this.faces.length - this.chunk);
      if (found.length < end - next) return;
    }
  }

  /** A full thousand read one by one is written as its chunk for the next cold reader (once: a conditional write). */
  private async writeChunk(start: number): Promise<void> {
    const d = this.dimensions;
    const entries = this.faces.slice(start, start + this.chunk).map((face, i) => ({ ...face, embedding: encode(this.vectors.subarray((start + i) * d, (start + i + 1) * d)) }));
    await this.store.putNew(faceIndexKeys.chunk(start), JSON.stringify(entries), 'application/json');
  }

  /** The most similar face of another persona, among those this copy holds. */
  nearest(embedding: number[] | Int8Array, exceptPersonaId?: string): Nearest | undefined {
    const q = embedding instanceof Int8Array ? embedding : quantize(embedding);
    if (this.dimensions !== 0 && q.length !== this.dimensions) throw new Error(`face index: an embedding of ${q.length} dimensions against an index of ${this.dimensions}`);
    const qNorm = norm(q);
    const { vectors, norms, dimensions: d } = this;
    let best = -1;
    let bestScore = -Infinity;
    for (let i = 0; i < this.faces.length; i++) {
      let dot = 0;
      const offset = i * d;
      for (let j = 0; j < d; j++) dot += q[j]! * vectors[offset + j]!;
      const score = dot / (qNorm * norms[i]!);
      if (score > bestScore && this.faces[i]!.personaId !== exceptPersonaId) {
        best = i;
        bestScore = score;
      }
    }
    if (best < 0) return undefined;
    return { face: this.faces[best]!, similarity: Math.round(bestScore * 1000) / 1000 };
  }

  /** The face a run registered already (a check run again after it registered), if any. */
  registeredBy(personaId: string, runId: string): IndexedFace | undefined {
    return this.faces.find((f) => f.personaId === personaId && f.runId === runId);
  }

  /**
   * Adds a face unless another persona's, registered before it, is at least `threshold` alike
   * (then that one is answered, and nothing is written). `threshold` Infinity registers it anyway.
   */
  register(face: Omit<IndexedFace, 'seq'>, embedding: number[], threshold: number): Promise<Registration> {
    return this.exclusive(() => this.registerNow(face, quantize(embedding), threshold));
  }

  private async registerNow(face: Omit<IndexedFace, 'seq'>, q: Int8Array, threshold: number): Promise<Registration> {
    for (;;) {
      await this.catchUp();
      const already = this.registeredBy(face.personaId, face.runId);
      if (already) return { registered: already };
      const nearest = this.nearest(q, face.personaId);
      if (nearest && nearest.similarity >= threshold) return { collided: nearest };
      const entry: StoredFace = { seq: this.faces.length, ...face, embedding: encode(q) };
      if (await this.store.putNew(faceIndexKeys.entry(entry.seq), JSON.stringify(entry), 'application/json')) {
        this.add([entry]);
        if (this.faces.length % this.chunk === 0) await this.writeChunk(this.faces.length - this.chunk);
        return { registered: this.faces[entry.seq]! };
      }
      // Someone took this number first: read theirs, compare with it, try the next.
    }
  }
}

const indexes = new WeakMap<ObjectStore, FaceIndex>();

/** The index of the store's bucket, one copy per process (a warm Lambda keeps what it read). */
export function faceIndexOf(store: ObjectStore): FaceIndex {
  let index = indexes.get(store);
  if (!index) indexes.set(store, (index = new FaceIndex(store)));
  return index;
}
