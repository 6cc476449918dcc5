/**
 * OpenAI's Batch API, as the batch mode's rounds use it: request lines uploaded as JSON Lines
 * files (`purpose: batch`), one batch per file and endpoint, completed within 24 h at half the
 * price; their output and error files read back a line at a time. Shapes from OpenAI's API
 * reference (CreateBatchRequest, the batch request and output line objects).
 */
import { createReadStream } from 'node:fs';
import { open as fsOpen, readFile, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Readable } from 'node:stream';
import OpenAI, { toFile } from 'openai';
import { toAvatarError } from './openai.ts';

export type ImageEndpoint = '/v1/images/generations' | '/v1/images/edits';

/** One request of a batch's input file. */
export interface BatchRequestLine {
  custom_id: string;
  method: 'POST';
  url: ImageEndpoint;
  body: Record<string, unknown>;
}

/** One line of a batch's output or error file. */
export interface BatchOutputLine {
  id?: string;
  custom_id: string;
  response: { status_code: number; request_id?: string; body: unknown } | null;
  error: { code?: string; message?: string } | null;
}

/**
 * The API's limits on one input file: 50,000 requests and "200 MB", which may be decimal: kept
 * under 190,000,000 bytes.
 */
export const MAX_LINES_PER_FILE = 50_000;
export const MAX_BYTES_PER_FILE = 190_000_000;

/** "Uploads to this endpoint are rate-limited to 1,000 requests per minute per authenticated user" (API reference, Upload file). */
export const FILE_UPLOADS_PER_MINUTE = 1_000;

/**
 * Spaces calls evenly at `perMinute`: each waits for its slot, a slot apiece, in the order they
 * asked. `now` and `sleep` are the clock's.
 */
export function pacer(perMinute: number, now: () => number = Date.now, sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))): () => Promise<void> {
  const interval = 60_000 / perMinute;
  let next = -Infinity;
  return async () => {
    const at = Math.max(now(), next);
    next = at + interval;
    if (at > now()) await sleep(at - now());
  };
}

/** How OpenAI reports its Batch queue limit: a batch created, then `failed` with this code. */
export const QUEUE_LIMIT_CODE = 'token_limit_exceeded';

/** Whether a finished batch failed for the queue limit: none of its lines ran, none was paid. */
export const failedForQueueLimit = (batch: { status: string; errors?: { data?: { code?: string | null }[] } | null }) =>
  batch.status === 'failed' && (batch.errors?.data ?? []).some((e) => e.code === QUEUE_LIMIT_CODE);

/** Statuses after which a batch changes no more. */
export const FINISHED = new Set(['completed', 'failed', 'expired', 'cancelled']);

/** A file of a round's request lines: one endpoint's, within the API's limits; what became of it. */
export interface RoundFile {
  /** Its name in the round, and its copy in the bucket until the round is submitted. */
  key: string;
  endpoint: ImageEndpoint;
  customIds: string[];
  /** The OpenAI batches made of it, once created (several when the queue limit split it). */
  batchIds?: string[];
  /** Not submitted: its lines go again next round. */
  failed?: { error: string; cause: string };
}

/**
 * Writes a round's lines to files in `dir` as they are built, one endpoint's lines to a file and
 * a new file past OpenAI's limits (or `maxLines`, once the queue limit refused more): a line's
 * body (an edit's base as a data URL is megabytes) leaves memory once written.
 */
export function roundFileWriter(dir: string, maxLines = MAX_LINES_PER_FILE) {
  const open = new Map<ImageEndpoint, { file: RoundFile; handle: FileHandle; bytes: number }>();
  const written: RoundFile[] = [];
  let queue: Promise<unknown> = Promise.resolve();
  const close = async (endpoint: ImageEndpoint) => {
    const current = open.get(endpoint);
    if (!current) return;
    open.delete(endpoint);
    await current.handle.close();
    written.push(current.file);
  };
  // Lines built at once finish in any order: each waits (in memory) for those before it, so the
  // files hold them in the round's order, whatever the concurrency.
  const waiting = new Map<number, BatchRequestLine | undefined>();
  let nextIndex = 0;
  const write = (line: BatchRequestLine): Promise<void> => {
    const text = `${JSON.stringify(line)}\n`;
    const size = Buffer.byteLength(text);
    const next = queue.then(async () => {
      let current = open.get(line.url);
      if (current && (current.file.customIds.length >= Math.min(maxLines, MAX_LINES_PER_FILE) || current.bytes + size > MAX_BYTES_PER_FILE)) {
        await close(line.url);
        current = undefined;
      }
      if (!current) {
        const key = `f${written.length + open.size + 1}`;
        current = { file: { key, endpoint: line.url, customIds: [] }, handle: await fsOpen(join(dir, `${key}.jsonl`), 'w'), bytes: 0 };
        open.set(line.url, current);
      }
      await current.handle.write(text);
      current.file.customIds.push(line.custom_id);
      current.bytes += size;
    });
    queue = next.catch(() => undefined);
    return next;
  };
  return {
    /** The round's `index`-th line (undefined: it has none), written once those before it are. */
    async add(index: number, line: BatchRequestLine | undefined): Promise<void> {
      waiting.set(index, line);
      const ready: BatchRequestLine[] = [];
      for (; waiting.has(nextIndex); nextIndex++) {
        const next = waiting.get(nextIndex);
        waiting.delete(nextIndex);
        if (next) ready.push(next);
      }
      await Promise.all(ready.map(write));
    },
    /** The files written, closed. */
    async files(): Promise<RoundFile[]> {
      await queue;
      for (const endpoint of [...open.keys()]) await close(endpoint);
      return written;
    },
  };
}

/** A refusal of the batch itself for the account's queue limit: submitted again in halves. */
function isQueueLimit(error: unknown): boolean {
  return error instanceof OpenAI.APIError && (error.status === 429 || /limit/i.test(String(error.code ?? '')));
}

/**
 * Uploads one file of lines (streamed from disk) and creates its batch; a batch refused for the
 * queue limit is split in two and each half submitted, down to single lines. Returns the batches' ids.
 */
export async function submitFile(api: OpenAI, endpoint: ImageEndpoint, path: string, metadata: Record<string, string>, timeoutMs: number): Promise<string[]> {
  try {
    const file = await api.files.create({ file: await toFile(createReadStream(path), 'requests.jsonl', { type: 'application/jsonl' }), purpose: 'batch' }, { timeout: timeoutMs });
    const batch = await api.batches.create({ input_file_id: file.id, endpoint, completion_window: '24h', metadata }, { timeout: timeoutMs });
    return [batch.id];
  } catch (error) {
    const lines = (await readFile(path, 'utf8')).split('\n').filter(Boolean);
    if (!isQueueLimit(error) || lines.length < 2) throw toAvatarError(error, `OpenAI batch of ${lines.length} ${endpoint} requests`, timeoutMs);
    const half = Math.ceil(lines.length / 2);
    const ids: string[] = [];
    for (const [i, part] of [lines.slice(0, half), lines.slice(half)].entries()) {
      await writeFile(`${path}.${i}`, `${part.join('\n')}\n`);
      ids.push(...(await submitFile(api, endpoint, `${path}.${i}`, metadata, timeoutMs)));
    }
    return ids;
  }
}

/**
 * The batches already made of a round's file: a stage that died after creating one, before it
 * saved the id, finds it by its metadata instead of submitting (and paying for) it again.
 * OpenAI lists batches newest first; those made before the round began are not looked at.
 */
export async function batchesMadeOf(api: OpenAI, metadata: Record<string, string>, since: number, timeoutMs: number): Promise<string[]> {
  const found: string[] = [];
  for await (const batch of api.batches.list({ limit: 100 }, { timeout: timeoutMs })) {
    if (batch.created_at < since) break;
    if (Object.entries(metadata).every(([key, value]) => batch.metadata?.[key] === value)) found.push(batch.id);
  }
  return found;
}

/** A file's lines as they arrive (output and error files may be large). */
export async function* fileLines(api: OpenAI, fileId: string, timeoutMs: number): AsyncGenerator<BatchOutputLine> {
  const response = await api.files.content(fileId, { timeout: timeoutMs });
  const input = Readable.fromWeb(response.body! as import('node:stream/web').ReadableStream);
  for await (const text of createInterface({ input, crlfDelay: Infinity })) {
    if (text.trim()) yield JSON.parse(text) as BatchOutputLine;
  }
}
