/**
 * The offline backend's Batch API: /v1/files (upload, content), /v1/batches (create, retrieve,
 * cancel), in OpenAI's shapes. A batch moves on over time (validating, in_progress, finalizing,
 * completed, a step each `stepMs`), draws each line as the image endpoints would (the same
 * checks, faults and drawing, outside the images-per-minute limit), and writes an output file of
 * the lines answered 200 and an error file of the rest. The `expire` fault ends a batch half done,
 * its undrawn lines in the error file as `batch_expired`. The queue limit (`queueLimit` enqueued
 * lines, or `rate-limit@batches` once) fails a batch as OpenAI does: created, then `failed` with
 * `token_limit_exceeded`, not a 429 (OpenAI counts enqueued tokens; lines stand for them here).
 *
 * With `dir`, its files and batches are kept there, as OpenAI keeps them between calls: a later
 * process (`avatars invoke collect-round` after `submit-round`) finds them, a batch that was
 * still running when its process ended done by the time the new one answers.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import type { Clock } from '../lambdas/shared/clock.ts';
import { FILE_UPLOADS_PER_MINUTE, type BatchRequestLine } from '../lambdas/shared/openai-batch.ts';
import type { Fault, Route } from './faults.ts';
import { sendJson } from './loopback-server.ts';
import type { RecordedRequest, Reply } from './offline-openai.ts';

interface StoredFile {
  id: string;
  filename: string;
  purpose: string;
  bytes: Buffer;
  created_at: number;
}

interface Batch {
  id: string;
  object: 'batch';
  endpoint: string;
  input_file_id: string;
  completion_window: string;
  status: 'validating' | 'failed' | 'in_progress' | 'finalizing' | 'completed' | 'expired' | 'cancelling' | 'cancelled';
  output_file_id: string | null;
  error_file_id: string | null;
  errors: { data: { code: string; message: string; line: number | null }[] } | null;
  created_at: number;
  in_progress_at: number | null;
  finalizing_at: number | null;
  completed_at: number | null;
  expired_at: number | null;
  cancelled_at: number | null;
  expires_at: number;
  request_counts: { total: number; completed: number; failed: number };
  metadata: Record<string, string> | null;
}

export interface BatchEndpointsDeps {
  clock: Clock;
  /** Where files and batches are kept between processes; in memory only without it. */
  dir?: string | undefined;
  onCreated?: ((batchId: string) => void) | undefined;
  /** The Files API's upload limit: 0, or the ms until the next upload may come. */
  uploadWait(): number;
  /** Lines that may be enqueued at once (validating, in progress, finalizing), across batches. */
  queueLimit?: number | undefined;
  stepMs: number;
  requests: RecordedRequest[];
  refusal(route: 'generations' | 'edits', body: Record<string, unknown>): Reply | undefined;
  takeFault(route: Route, prompt?: string): Fault | undefined;
  faultReply(fault: Fault, model: string): Reply | 'hang' | undefined;
  imageReply(route: 'generations' | 'edits', body: Record<string, unknown>, reference: { data: Buffer; mimeType: string } | undefined, fault: Fault | undefined): Promise<Reply>;
  readJson(req: IncomingMessage): Promise<Record<string, unknown>>;
  readMultipart(req: IncomingMessage): Promise<{ fields: Record<string, string>; files: { field: string; filename: string; mimeType: string; data: Buffer }[] }>;
}

const ENDPOINTS: Record<string, 'generations' | 'edits'> = { '/v1/images/generations': 'generations', '/v1/images/edits': 'edits' };
const statusOf = (batch: Batch): Batch['status'] => batch.status;
const seconds = (clock: Clock) => Math.floor(clock.now().getTime() / 1000);

function notFound(res: ServerResponse, what: string): void {
  sendJson(res, 404, { error: { message: `No such ${what}`, type: 'invalid_request_error', param: null, code: null } });
}

export function batchEndpoints(deps: BatchEndpointsDeps) {
  const files = new Map<string, StoredFile>();
  const batches = new Map<string, Batch>();
  const lines: BatchRequestLine[] = [];
  const running = new Set<Promise<void>>();
  // Each kind numbered on its own, as the fixtures name them: file-offline1, batch_offline1.
  const counters = { file: 0, batch: 0, request: 0 };
  let stepMs = deps.stepMs;
  const pause = () => new Promise((resolve) => setTimeout(resolve, stepMs));

  const kept = deps.dir && join(deps.dir, 'state.json');
  const keptBytes = (id: string) => join(deps.dir!, 'files', id);
  /** Written after each change: small (the bytes of files are kept beside it, once). */
  const save = () => {
    if (!kept) return;
    const state = { counters, files: [...files.values()].map(({ bytes: _bytes, ...file }) => file), batches: [...batches.values()] };
    mkdirSync(deps.dir!, { recursive: true });
    writeFileSync(kept, JSON.stringify(state));
  };

  const storeFile = (filename: string, purpose: string, bytes: Buffer): StoredFile => {
    const file = { id: `file-offline${++counters.file}`, filename, purpose, bytes, created_at: seconds(deps.clock) };
    files.set(file.id, file);
    if (deps.dir) {
      mkdirSync(join(deps.dir, 'files'), { recursive: true });
      writeFileSync(keptBytes(file.id), bytes);
    }
    save();
    return file;
  };
  const fileObject = ({ bytes, ...file }: StoredFile) => ({ ...file, object: 'file', bytes: bytes.length, status: 'processed' });

  /** A JSON edit's reference: a base64 data URL in the line, or a file uploaded before. */
  function referenceOf(body: Record<string, unknown>): { data: Buffer; mimeType: string } | undefined {
    const image = (body.images as { image_url?: string; file_id?: string }[] | undefined)?.[0];
    if (image?.image_url) {
      const match = /^data:([\w/+.-]+);base64,(.*)$/s.exec(image.image_url);
      return match ? { mimeType: match[1]!, data: Buffer.from(match[2]!, 'base64') } : undefined;
    }
    const file = image?.file_id ? files.get(image.file_id) : undefined;
    return file && { data: file.bytes, mimeType: file.filename.endsWith('.webp') ? 'image/webp' : file.filename.endsWith('.jpeg') || file.filename.endsWith('.jpg') ? 'image/jpeg' : 'image/png' };
  }

  /** One request line drawn as the endpoint would answer it. */
  async function answer(line: BatchRequestLine): Promise<Reply> {
    const route = ENDPOINTS[line.url]!;
    const refused = deps.refusal(route, line.body);
    if (refused) return refused;
    const fault = deps.takeFault(route, String(line.body.prompt ?? ''));
    const faulted = fault && deps.faultReply(fault, String(line.body.model ?? ''));
    if (faulted === 'hang') return { status: 500, body: { error: { message: 'The request timed out.', type: 'server_error', param: null, code: 'timeout' } } };
    if (faulted) return faulted;
    return deps.imageReply(route, line.body, route === 'edits' ? referenceOf(line.body) : undefined, fault);
  }

  /** Lines enqueued by this batch and those created before it that still run. */
  const enqueuedUpTo = (batch: Batch) => {
    const all = [...batches.values()];
    return all.slice(0, all.indexOf(batch) + 1).filter((b) => ['validating', 'in_progress', 'finalizing'].includes(b.status)).reduce((n, b) => n + b.request_counts.total, 0);
  };

  /** Fails a batch past the queue limit as OpenAI does, after creating it. */
  function overQueueLimit(batch: Batch, requests: BatchRequestLine[], faulted: boolean): boolean {
    const limit = deps.queueLimit;
    if (!faulted && (limit === undefined || enqueuedUpTo(batch) <= limit)) return false;
    const model = String(requests[0]?.body.model ?? '');
    const message = `Enqueued token limit reached for ${model} in organization org-offline. Limit: ${limit ?? enqueuedUpTo(batch) - requests.length} enqueued lines. Please try again once some in_progress batches have been completed.`;
    Object.assign(batch, { status: 'failed', failed_at: seconds(deps.clock), errors: { object: 'list', data: [{ code: 'token_limit_exceeded', message, param: null, line: null }] } });
    save();
    return true;
  }

  async function run(batch: Batch, requests: BatchRequestLine[], expire: boolean, queueFault: boolean): Promise<void> {
    await pause();
    if (batch.status !== 'validating' || overQueueLimit(batch, requests, queueFault)) return;
    Object.assign(batch, { status: 'in_progress', in_progress_at: seconds(deps.clock) });
    save();
    const output: string[] = [];
    const errors: string[] = [];
    const upTo = expire ? Math.floor(requests.length / 2) : requests.length;
    for (const request of requests.slice(0, upTo)) {
      // A cancel may have come in meanwhile.
      if (statusOf(batch) !== 'in_progress') break;
      const reply = await answer(request);
      const line = JSON.stringify({ id: `batch_req_${++counters.request}`, custom_id: request.custom_id, response: { status_code: reply.status, request_id: `req_${counters.request}`, body: reply.body }, error: null });
      (reply.status === 200 ? output : errors).push(`${line}\n`);
      batch.request_counts[reply.status === 200 ? 'completed' : 'failed']++;
    }
    // OpenAI writes what an expired batch never ran to the error file.
    for (const request of requests.slice(upTo)) {
      if (!expire) break;
      errors.push(`${JSON.stringify({ id: `batch_req_${++counters.request}`, custom_id: request.custom_id, response: null, error: { code: 'batch_expired', message: 'This request could not be executed before the completion window expired.' } })}\n`);
      batch.request_counts.failed++;
    }
    Object.assign(batch, { status: 'finalizing', finalizing_at: seconds(deps.clock) });
    save();
    await pause();
    if (output.length > 0) batch.output_file_id = storeFile('batch_output.jsonl', 'batch_output', Buffer.from(output.join(''))).id;
    if (errors.length > 0) batch.error_file_id = storeFile('batch_errors.jsonl', 'batch_output', Buffer.from(errors.join(''))).id;
    const now = seconds(deps.clock);
    if (statusOf(batch) === 'cancelling') Object.assign(batch, { status: 'cancelled', cancelled_at: now });
    else if (expire) Object.assign(batch, { status: 'expired', expired_at: now });
    else Object.assign(batch, { status: 'completed', completed_at: now });
    save();
  }

  async function createBatch(body: Record<string, unknown>, res: ServerResponse): Promise<void> {
    const input = files.get(String(body.input_file_id));
    const endpoint = String(body.endpoint);
    if (!input || input.purpose !== 'batch') return notFound(res, `file: ${String(body.input_file_id)}`);
    if (!ENDPOINTS[endpoint]) {
      sendJson(res, 400, { error: { message: `Invalid endpoint '${endpoint}' for images in this server`, type: 'invalid_request_error', param: 'endpoint', code: 'invalid_value' } });
      return;
    }
    const requests = input.bytes.toString('utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l) as BatchRequestLine);
    const fault = deps.takeFault('batches');
    const wrong = requests.findIndex((r) => r.url !== endpoint || r.method !== 'POST' || !r.custom_id);
    const now = seconds(deps.clock);
    const batch: Batch = {
      id: `batch_offline${++counters.batch}`,
      object: 'batch',
      endpoint,
      input_file_id: input.id,
      completion_window: String(body.completion_window ?? '24h'),
      status: wrong >= 0 ? 'failed' : 'validating',
      output_file_id: null,
      error_file_id: null,
      errors: wrong >= 0 ? { data: [{ code: 'invalid_request', message: `line ${wrong + 1}: each line needs a custom_id, method POST and url ${endpoint}`, line: wrong + 1 }] } : null,
      created_at: now,
      in_progress_at: null,
      finalizing_at: null,
      completed_at: null,
      expired_at: null,
      cancelled_at: null,
      expires_at: now + 24 * 3600,
      request_counts: { total: requests.length, completed: 0, failed: 0 },
      metadata: (body.metadata as Record<string, string> | undefined) ?? null,
    };
    batches.set(batch.id, batch);
    save();
    deps.onCreated?.(batch.id);
    if (wrong < 0) {
      lines.push(...requests);
      const job = run(batch, requests, fault?.kind === 'expire', fault?.kind === 'rate-limit').finally(() => running.delete(job));
      running.add(job);
    }
    sendJson(res, 200, batch);
  }

  const requestsOf = (batch: Batch) =>
    files.get(batch.input_file_id)!.bytes.toString('utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l) as BatchRequestLine);

  // What an earlier process kept: its files and batches, each batch it left running drawn anew.
  if (kept && existsSync(kept)) {
    const state = JSON.parse(readFileSync(kept, 'utf8')) as { counters: typeof counters; files: Omit<StoredFile, 'bytes'>[]; batches: Batch[] };
    Object.assign(counters, state.counters);
    for (const file of state.files) files.set(file.id, { ...file, bytes: readFileSync(keptBytes(file.id)) });
    for (const batch of state.batches) batches.set(batch.id, batch);
  }
  const unfinished = [...batches.values()].filter((b) => ['validating', 'in_progress', 'finalizing', 'cancelling'].includes(b.status));

  return {
    lines,
    /** Draws the batches an earlier process left running, at once: the time between the two passed. */
    resume: async () => {
      stepMs = 0;
      for (const batch of unfinished) {
        if (batch.status === 'cancelling') {
          Object.assign(batch, { status: 'cancelled', cancelled_at: seconds(deps.clock) });
          save();
          continue;
        }
        Object.assign(batch, { status: 'validating', request_counts: { ...batch.request_counts, completed: 0, failed: 0 } });
        await run(batch, requestsOf(batch), false, false);
      }
      stepMs = deps.stepMs;
    },
    /** Waits for the batches still running. */
    settled: async () => {
      while (running.size > 0) await Promise.all([...running]);
    },
    /** Answers a Batch API request; false when the path is not one. */
    async handle(req: IncomingMessage, res: ServerResponse, path: string): Promise<boolean> {
      if (path === '/files' && req.method === 'POST') {
        const form = await deps.readMultipart(req);
        const wait = deps.uploadWait();
        if (wait > 0) {
          // Past 1,000 uploads a minute, as OpenAI answers them (openai-batch.ts, FILE_UPLOADS_PER_MINUTE).
          sendJson(res, 429, { error: { message: `Rate limit reached for requests on files: Limit ${FILE_UPLOADS_PER_MINUTE} per min. Please try again in ${wait}ms.`, type: 'requests', param: null, code: 'rate_limit_exceeded' } }, { 'retry-after-ms': String(wait) });
          return true;
        }
        const upload = form.files.find((f) => f.field === 'file');
        if (!upload) {
          sendJson(res, 400, { error: { message: "Missing required parameter: 'file'.", type: 'invalid_request_error', param: 'file', code: null } });
          return true;
        }
        sendJson(res, 200, fileObject(storeFile(upload.filename, form.fields.purpose ?? '', upload.data)));
        return true;
      }
      const file = /^\/files\/([\w-]+)(\/content)?$/.exec(path);
      if (file && req.method === 'GET') {
        const stored = files.get(file[1]!);
        if (!stored) notFound(res, `file: ${file[1]}`);
        else if (file[2]) {
          res.writeHead(200, { 'content-type': 'application/octet-stream' });
          res.end(stored.bytes);
        } else sendJson(res, 200, fileObject(stored));
        return true;
      }
      if (path === '/batches' && req.method === 'GET') {
        // Newest first, a page of `limit` after the id `after`, as OpenAI lists batches.
        const query = new URL(req.url ?? '', 'http://offline').searchParams;
        const all = [...batches.values()].reverse();
        const from = query.get('after') ? all.findIndex((b) => b.id === query.get('after')) + 1 : 0;
        const limit = Math.min(100, Math.max(1, Number(query.get('limit') ?? 20)));
        const data = all.slice(from, from + limit);
        sendJson(res, 200, { object: 'list', data, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null, has_more: from + limit < all.length });
        return true;
      }
      if (path === '/batches' && req.method === 'POST') {
        deps.requests.push({ route: 'batches', model: '', prompt: '', n: 0, size: '', options: {}, files: [], authorization: req.headers.authorization, at: Date.now(), rateLimited: false });
        await createBatch(await deps.readJson(req), res);
        return true;
      }
      const batch = /^\/batches\/([\w-]+)(\/cancel)?$/.exec(path);
      if (!batch) return false;
      const found = batches.get(batch[1]!);
      if (!found) notFound(res, `batch: ${batch[1]}`);
      else if (batch[2] && req.method === 'POST') {
        if (found.status === 'validating' || found.status === 'in_progress') Object.assign(found, { status: 'cancelling' });
        save();
        sendJson(res, 200, found);
      } else sendJson(res, 200, found);
      return true;
    },
  };
}
