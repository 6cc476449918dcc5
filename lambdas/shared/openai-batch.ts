/**
 * OpenAI's Batch API, as the batch mode's rounds use it: request lines uploaded as JSON Lines
 * files (`purpose: batch`), one batch per file and endpoint, completed within 24 h at half the
 * price; their output and error files read back a line at a time. Shapes from OpenAI's API
 * reference (CreateBatchRequest, the batch request and output line objects).
 */
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

/** How OpenAI reports its Batch queue limit: a batch created, then `failed` with this code. */
export const QUEUE_LIMIT_CODE = 'token_limit_exceeded';

/** Whether a finished batch failed for the queue limit: none of its lines ran, none was paid. */
export const failedForQueueLimit = (batch: { status: string; errors?: { data?: { code?: string | null }[] } | null }) =>
  batch.status === 'failed' && (batch.errors?.data ?? []).some((e) => e.code === QUEUE_LIMIT_CODE);

/** Statuses after which a batch changes no more. */
export const FINISHED = new Set(['completed', 'failed', 'expired', 'cancelled']);

/**
 * Lines in files within the API's limits (and `maxLines`, once the queue limit refused more),
 * each file holding one endpoint's lines: its body, and which lines it holds.
 */
export function filesOf(lines: BatchRequestLine[], maxLines = MAX_LINES_PER_FILE): { endpoint: ImageEndpoint; body: string; lines: BatchRequestLine[] }[] {
  const files: { endpoint: ImageEndpoint; body: string; lines: BatchRequestLine[] }[] = [];
  for (const endpoint of ['/v1/images/generations', '/v1/images/edits'] as const) {
    let texts: string[] = [];
    let held: BatchRequestLine[] = [];
    let bytes = 0;
    const flush = () => {
      if (held.length > 0) files.push({ endpoint, body: texts.join(''), lines: held });
      texts = [];
      held = [];
      bytes = 0;
    };
    for (const line of lines.filter((l) => l.url === endpoint)) {
      const text = `${JSON.stringify(line)}\n`;
      const size = Buffer.byteLength(text);
      if (held.length >= Math.min(maxLines, MAX_LINES_PER_FILE) || bytes + size > MAX_BYTES_PER_FILE) flush();
      texts.push(text);
      held.push(line);
      bytes += size;
    }
    flush();
  }
  return files;
}

/** A refusal of the batch itself for the account's queue limit: submitted again in halves. */
function isQueueLimit(error: unknown): boolean {
  return error instanceof OpenAI.APIError && (error.status === 429 || /limit/i.test(String(error.code ?? '')));
}

/**
 * Uploads one file of lines and creates its batch; a batch refused for the queue limit is split in
 * two and each half submitted, down to single lines. Returns the batches' ids.
 */
export async function submitLines(api: OpenAI, endpoint: ImageEndpoint, body: string, metadata: Record<string, string>, timeoutMs: number): Promise<string[]> {
  const what = `OpenAI batch of ${body.split('\n').length - 1} ${endpoint} requests`;
  try {
    const file = await api.files.create({ file: await toFile(Buffer.from(body), 'requests.jsonl', { type: 'application/jsonl' }), purpose: 'batch' }, { timeout: timeoutMs });
    const batch = await api.batches.create({ input_file_id: file.id, endpoint, completion_window: '24h', metadata }, { timeout: timeoutMs });
    return [batch.id];
  } catch (error) {
    const lines = body.split('\n').filter(Boolean);
    if (!isQueueLimit(error) || lines.length < 2) throw toAvatarError(error, what, timeoutMs);
    const half = Math.ceil(lines.length / 2);
    const halves = [lines.slice(0, half), lines.slice(half)].map((part) => `${part.join('\n')}\n`);
    return (await Promise.all(halves.map((part) => submitLines(api, endpoint, part, metadata, timeoutMs)))).flat();
  }
}

/** A file's lines as they arrive (output and error files may be large). */
export async function* fileLines(api: OpenAI, fileId: string, timeoutMs: number): AsyncGenerator<BatchOutputLine> {
  const response = await api.files.content(fileId, { timeout: timeoutMs });
  const input = Readable.fromWeb(response.body! as import('node:stream/web').ReadableStream);
  for await (const text of createInterface({ input, crlfDelay: Infinity })) {
    if (text.trim()) yield JSON.parse(text) as BatchOutputLine;
  }
}
