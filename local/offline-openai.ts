/**
 * The offline image backend: an OpenAI-compatible HTTP server on loopback that answers
 * /v1/images/generations, /v1/images/edits and /v1/chat/completions with the real response
 * shapes (base64 images plus `usage`), so the real `openai` client runs unchanged. It checks
 * requests as the API does from the model table: sizes and qualities the model takes, options it
 * does not (`input_fidelity` on gpt-image-2), and retired models answer `model_not_found`. Faults can be
 * injected (rate limits, 5xx, hangs, policy refusals, wrong grid layouts, latency) to drive
 * every Retry and Catch branch of the workflow.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { crc32 } from 'node:zlib';
import busboy from 'busboy';
import sharp from 'sharp';
import { dayOf, systemClock, type Clock } from '../lambdas/shared/clock.ts';
import { IMAGE_MODELS, isShutDown, parseSize, sizeProblem } from '../lambdas/shared/models.ts';
import { signC2pa, TRAINED_ALGORITHMIC_MEDIA } from '../lambdas/publish/c2pa.ts';
import { pemSigner } from '../lambdas/publish/signer.ts';
import { issueSigningCertificate } from './certificates.ts';
import { FILE_UPLOADS_PER_MINUTE } from '../lambdas/shared/openai-batch.ts';
import { hits, type Fault, type FiredFault, type Route } from './faults.ts';
import { listenOnLoopback, readBody, sendJson } from './loopback-server.ts';
import { batchEndpoints } from './offline-batches.ts';
import type { BatchRequestLine } from '../lambdas/shared/openai-batch.ts';
import { casting, composeGrid, drawAvatar, gridLayout, lookFor, otherFace, random, seedOf, type AvatarLook } from './avatar-art.ts';

export type { Fault, FaultKind, Route } from './faults.ts';

export interface RecordedRequest {
  route: Route;
  model: string;
  prompt: string;
  n: number;
  size: string;
  /** Every other option sent (quality, output_format, moderation, input_fidelity…). */
  options: Record<string, unknown>;
  /** Multipart parts of an edit: field name, file name and declared type. */
  files: { field: string; filename: string; mimeType: string }[];
  authorization: string | undefined;
  /** When it arrived (ms since the epoch). */
  at: number;
  /** Answered 429: beyond the simulated rate limit, nothing drawn. */
  rateLimited: boolean;
}

export interface OfflineBackendOptions {
  faults?: Fault[];
  /**
   * Every image answered is this one, not drawn (the bench: OpenAI's image sizes and bytes at the
   * scale of thousands, which drawing would take hours to make).
   */
  fixedImage?: Buffer;
  /** Added to every image answer, as a stand-in for the model's time. */
  latencyMs?: number;
  /** Models that answer `model_not_found`; default: those the model table says are shut down by the clock's day. */
  retiredModels?: string[];
  /** Today's date for the model table's shutdowns (default: the system's). */
  clock?: Clock;
  /** An account's image rate limit: beyond it, 429 with `retry-after-ms`, as the API answers. */
  imagesPerMinute?: number;
  /**
   * Sign every image drawn with a C2PA manifest, as OpenAI does, by a test generator certificate
   * (default); false answers plain images, as a compatible server without provenance does.
   */
  c2pa?: boolean;
  /** How long an OpenAI batch stays in each status before it moves on (default 200 ms). */
  batchStepMs?: number;
  /** The Batch API's queue limit, in lines enqueued at once: a batch past it fails `token_limit_exceeded`. */
  batchQueueLimit?: number;
  /** Told each time a fault fires. */
  onFault?: (fired: FiredFault) => void;
  /** Where the Batch API keeps its files and batches between processes (in memory only without it). */
  batchDir?: string;
  /** Told the moment a batch exists, before its creator hears of it: a spec stops a stage there. */
  onBatchCreated?: (batchId: string) => void;
}

export interface OfflineBackend {
  baseUrl: string;
  /** The CA of the generator certificate its images are signed with: a C2PA reader's trust anchor. */
  generatorCaPem: string | undefined;
  requests: RecordedRequest[];
  /** Every request line of every OpenAI batch created, as uploaded. */
  batchLines: BatchRequestLine[];
  close(): Promise<void>;
}

const ACCEPTED_IMAGE_TYPES = new Set(['image/png', 'image/jpeg', 'image/webp']);

/** An answer of the API: what the HTTP handler sends, and what a batch's output line holds. */
export interface Reply {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
}

const send = (res: ServerResponse, reply: Reply) => sendJson(res, reply.status, reply.body, reply.headers);

export const errorReply = (status: number, error: Record<string, unknown>, headers?: Record<string, string>): Reply => ({ status, body: { error: { param: null, ...error } }, ...(headers ? { headers } : {}) });

const modelGone = (model: string) => errorReply(404, { message: `The model \`${model}\` does not exist or you do not have access to it.`, type: 'invalid_request_error', code: 'model_not_found' });

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  return JSON.parse((await readBody(req)) || '{}') as Record<string, unknown>;
}

interface Multipart {
  fields: Record<string, string>;
  files: { field: string; filename: string; mimeType: string; data: Buffer }[];
}

function readMultipart(req: IncomingMessage): Promise<Multipart> {
  return new Promise((resolve, reject) => {
    const form: Multipart = { fields: {}, files: [] };
    const parser = busboy({ headers: req.headers });
    parser.on('field', (name, value) => (form.fields[name] = value));
    parser.on('file', (field, stream, info) => {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => form.files.push({ field, filename: info.filename ?? '', mimeType: info.mimeType, data: Buffer.concat(chunks) }));
    });
    parser.on('close', () => resolve(form));
    parser.on('error', reject);
    req.pipe(parser);
  });
}

/** Usage as the API reports it: output tokens grow with the pixels and the quality asked. */
function usage(model: string, quality: string, size: [number, number], prompt: string, imageInputs: number, outputs: number) {
  const text = Math.ceil(prompt.length / 4);
  const image = imageInputs * 323;
  const per1024 = IMAGE_MODELS[model]?.outputTokens1024?.[quality] ?? 1056;
  const output = outputs * Math.round((per1024 * size[0] * size[1]) / (1024 * 1024));
  return { input_tokens: text + image, input_tokens_details: { text_tokens: text, image_tokens: image }, output_tokens: output, total_tokens: text + image + output };
}

/**
 * The person a base image shows, carried in a PNG text chunk: edits of the backend's own base
 * images stay the same person, even across processes (`avatars invoke` one stage at a time).
 */
const LOOK_KEY = 'persona-avatars-look';

function withLook(png: Buffer, look: AvatarLook): Buffer {
  const data = Buffer.concat([Buffer.from(`${LOOK_KEY}\0`, 'latin1'), Buffer.from(JSON.stringify(look), 'latin1')]);
  const chunk = Buffer.alloc(12 + data.length);
  chunk.writeUInt32BE(data.length, 0);
  chunk.write('tEXt', 4, 'latin1');
  data.copy(chunk, 8);
  chunk.writeUInt32BE(crc32(chunk.subarray(4, 8 + data.length)), 8 + data.length);
  // Before IEND, the last 12 bytes.
  return Buffer.concat([png.subarray(0, png.length - 12), chunk, png.subarray(png.length - 12)]);
}

function lookIn(png: Buffer): AvatarLook | undefined {
  for (let at = 8; at + 12 <= png.length; ) {
    const length = png.readUInt32BE(at);
    const type = png.toString('latin1', at + 4, at + 8);
    if (type === 'tEXt') {
      const text = png.toString('latin1', at + 8, at + 8 + length);
      if (text.startsWith(`${LOOK_KEY}\0`)) return JSON.parse(text.slice(LOOK_KEY.length + 1)) as AvatarLook;
    }
    at += 12 + length;
  }
  return undefined;
}

function dimensions(size: string): [number, number] {
  const parsed = parseSize(size);
  return parsed ? [parsed.width, parsed.height] : [1024, 1024];
}

/**
 * A rate limit as the API enforces it (an account's images, the Files API's uploads): a bucket refilled at `perMinute`/60
 * a second, holding one second's worth. `take(n)` answers 0 and takes n images, or the ms
 * until n are there, taking nothing.
 */
function imageLimiter(perMinute: number | undefined): { take(n: number): number } {
  const rate = (perMinute ?? 0) / 60_000;
  const capacity = Math.max(1, Math.ceil((perMinute ?? 0) / 60));
  let tokens = capacity;
  let at = Date.now();
  return {
    take(n) {
      if (!perMinute) return 0;
      const now = Date.now();
      tokens = Math.min(capacity, tokens + (now - at) * rate);
      at = now;
      const needed = Math.min(n, capacity);
      if (tokens >= needed) {
        tokens -= needed;
        return 0;
      }
      return Math.ceil((needed - tokens) / rate);
    },
  };
}

/** What the API answers 400 to, from the model table; undefined when the request is fine. */
function invalidRequest(model: string, body: Record<string, unknown>, edit: boolean): { param: string; message: string } | undefined {
  const spec = IMAGE_MODELS[model];
  if (!spec) return undefined;
  const size = String(body.size ?? 'auto');
  const sizeError = sizeProblem(model, size);
  if (sizeError) return { param: 'size', message: `Invalid size '${size}': ${sizeError}.` };
  const quality = body.quality === undefined ? 'auto' : String(body.quality);
  if (!spec.qualities.includes(quality)) return { param: 'quality', message: `Invalid quality '${quality}' for ${model}; supported: ${spec.qualities.join(', ')}.` };
  if (body.input_fidelity !== undefined && (!edit || !spec.inputFidelity.includes(body.input_fidelity as 'high'))) {
    return { param: 'input_fidelity', message: `input_fidelity '${String(body.input_fidelity)}' is not supported for ${model}.` };
  }
  if (body.moderation !== undefined && !['auto', 'low'].includes(String(body.moderation))) return { param: 'moderation', message: `Invalid moderation '${String(body.moderation)}'.` };
  return undefined;
}

const FORMATS = new Set(['png', 'webp', 'jpeg']);

/** Who the offline backend signs as, standing in for the model's provider (OpenAI signs its images). */
export const GENERATOR = { name: 'persona-avatars offline image backend', version: '1' };

async function generatorSigner() {
  const issued = await issueSigningCertificate('Offline image generator (test)');
  return { caPem: issued.caPem, signer: pemSigner(issued.certificatePem, issued.privateKeyPem, 'the offline backend\'s generator certificate') };
}

export async function startOfflineBackend(options: OfflineBackendOptions = {}): Promise<OfflineBackend> {
  const faults = (options.faults ?? []).map((f) => ({ ...f }));
  const limiter = imageLimiter(options.imagesPerMinute);
  const clock = options.clock ?? systemClock;
  // Asked per request, as the API would: a server left running past a shutdown date retires the model then.
  const isRetired = (model: string) => (options.retiredModels ? options.retiredModels.includes(model) : isShutDown(model, dayOf(clock)));
  const requests: RecordedRequest[] = [];
  const generator = options.c2pa === false ? undefined : await generatorSigner();

  const edits = new Map<string, number>();
  const cast = casting();
  let counter = 0;

  const asked = new Map(faults.map((f) => [f, { of: f.times, nth: 0 }]));
  const takeFault = (route: Route, prompt = ''): Fault | undefined => {
    const fault = faults.find((f) => hits(f, route, prompt));
    if (!fault) return undefined;
    fault.times--;
    const count = asked.get(fault)!;
    count.nth++;
    options.onFault?.({ fault, route, ...count });
    return fault;
  };

  /** What a fault answers instead of an image: a reply, `hang` (no answer at all), or undefined (it changes the image). */
  const faultReply = (fault: Fault, model: string): Reply | 'hang' | undefined => {
    switch (fault.kind) {
      case 'rate-limit':
        return errorReply(429, { message: `Rate limit reached for ${model} on images per min. Please try again in 1s.`, type: 'requests', code: 'rate_limit_exceeded' }, { 'retry-after': '1' });
      case 'server-error':
        return errorReply(500, { message: 'The server had an error while processing your request.', type: 'server_error', code: null });
      case 'hang':
        return 'hang';
      case 'policy':
        return errorReply(400, {
          message: 'Your request was rejected by the safety system. Your request may contain content that is not allowed by our safety system.',
          type: 'image_generation_user_error',
          code: 'moderation_blocked',
          moderation_details: { categories: ['offline-injected'] },
        });
      case 'model-gone':
        return modelGone(model);
      case 'layout':
      case 'corrupt':
      case 'flagged':
      case 'impostor':
      case 'lookalike':
      case 'wrong-gender':
      case 'expire':
        return undefined;
    }
  };

  /** An image call's answer: its images drawn (of the reference's person, for an edit), or why not. */
  const imageReply = async (route: 'generations' | 'edits', body: Record<string, unknown>, reference: { data: Buffer; mimeType: string } | undefined, fault: Fault | undefined): Promise<Reply> => {
    const model = String(body.model ?? '');
    const prompt = String(body.prompt ?? '');
    const size = String(body.size ?? '1024x1024');
    const n = Number(body.n ?? 1);
    const [width, height] = dimensions(size);
    let images: Buffer[];
    if (route === 'generations') {
      const twist = fault?.kind === 'lookalike' || fault?.kind === 'wrong-gender' ? fault.kind : undefined;
      const look = { ...lookFor(prompt), face: cast.faceFor(prompt, twist) };
      images = [options.fixedImage ?? withLook(await drawAvatar(look, width, height), look)];
    } else {
      if (!reference) return errorReply(400, { message: "Missing required parameter: 'image'.", type: 'invalid_request_error', param: 'image', code: 'missing_required_parameter' });
      if (!ACCEPTED_IMAGE_TYPES.has(reference.mimeType)) {
        return errorReply(400, {
          message: `Invalid file 'image': unsupported mimetype ('${reference.mimeType}'). Supported file formats are 'image/jpeg', 'image/png', and 'image/webp'.`,
          type: 'invalid_request_error',
          param: 'image',
          code: 'unsupported_file_mimetype',
        });
      }
      if (options.fixedImage) {
        images = Array.from({ length: /grid/i.test(prompt) ? 1 : n }, () => options.fixedImage!);
      } else {
        const look = lookIn(reference.data) ?? lookFor(reference.data.toString('base64'));
        // Each further edit of the same person moves on to new scenes, as a second grid would.
        const lookKey = JSON.stringify(look);
        const round = edits.get(lookKey) ?? 0;
        edits.set(lookKey, round + 1);
        // An impostor: the second panel shows another person, as a model sometimes draws one.
        const variations = await Promise.all(
          [0, 1, 2, 3].map((v) => drawAvatar(look, width, height, v + 4 * round, fault?.kind === 'impostor' && v === 1 ? otherFace(look.face) : look.face)),
        );
        if (/grid/i.test(prompt)) {
          const rnd = random(seedOf(`${prompt}:${++counter}`));
          const [rows, cols] = fault?.kind === 'layout' ? [1, 3] : [2, 2];
          images = [await composeGrid(width, height, gridLayout(width, height, rows, cols, rnd), variations, rnd)];
        } else {
          images = variations.concat(variations).slice(0, n);
        }
      }
    }
    const format = FORMATS.has(String(body.output_format)) ? (String(body.output_format) as 'png' | 'webp' | 'jpeg') : 'png';
    if (format !== 'png') {
      const quality = body.output_compression === undefined ? 100 : Number(body.output_compression);
      images = await Promise.all(images.map((image) => sharp(image).toFormat(format, { quality }).toBuffer()));
    }
    if (generator) {
      const created = { action: 'c2pa.created', digitalSourceType: TRAINED_ALGORITHMIC_MEDIA, softwareAgent: model };
      images = await Promise.all(images.map((image) => signC2pa({ bytes: image, format }, { title: `image.${format}`, actions: [created] }, generator.signer, GENERATOR)));
    }
    // A truncated answer, as a dropped connection behind a proxy can leave one.
    if (fault?.kind === 'corrupt') images = images.map((image) => image.subarray(0, Math.floor(image.length / 2)));
    const quality = String(body.quality ?? 'auto');
    return {
      status: 200,
      body: {
        created: Math.floor(Date.now() / 1000),
        background: 'opaque',
        output_format: format,
        quality,
        size,
        data: images.map((image) => ({ b64_json: image.toString('base64') })),
        usage: usage(model, quality, [width, height], prompt, route === 'edits' ? 1 : 0, images.length),
      },
    };
  };

  /** What the API checks before drawing: the model exists, the options fit it. */
  const refusal = (route: 'generations' | 'edits', body: Record<string, unknown>): Reply | undefined => {
    const model = String(body.model ?? '');
    if (isRetired(model)) return modelGone(model);
    const invalid = invalidRequest(model, body, route === 'edits');
    return invalid && errorReply(400, { message: invalid.message, type: 'invalid_request_error', param: invalid.param, code: 'invalid_value' });
  };

  const uploads = imageLimiter(FILE_UPLOADS_PER_MINUTE);
  const batchApi = batchEndpoints({ clock, dir: options.batchDir, onCreated: options.onBatchCreated, uploadWait: () => uploads.take(1), stepMs: options.batchStepMs ?? 200, queueLimit: options.batchQueueLimit, requests, refusal, takeFault, faultReply, imageReply, readJson, readMultipart });
  await batchApi.resume();

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '').split('?')[0]!.replace(/^\/v1/, '');
    if (await batchApi.handle(req, res, path)) return;
    const route: Route | undefined =
      path === '/images/generations'
        ? 'generations'
        : path === '/images/edits'
          ? 'edits'
          : path === '/chat/completions'
            ? 'chat'
            : path === '/moderations'
              ? 'moderations'
              : undefined;
    if (req.method !== 'POST' || !route) {
      send(res, errorReply(404, { message: `Unknown request URL: ${req.method} ${req.url}`, type: 'invalid_request_error', code: 'unknown_url' }));
      return;
    }
    const form = route === 'edits' ? await readMultipart(req) : { fields: {}, files: [] };
    const body = route === 'edits' ? form.fields : await readJson(req);
    const model = String(body.model ?? '');
    const prompt = route === 'chat' ? JSON.stringify(body.messages ?? []) : String(body.prompt ?? body.input ?? '');
    const n = Number(body.n ?? 1);
    const { model: _m, prompt: _p, n: _n, size: _s, messages: _messages, ...rest } = body;
    const recorded: RecordedRequest = {
      route,
      model,
      prompt,
      n,
      size: String(body.size ?? '1024x1024'),
      options: rest,
      files: form.files.map(({ field, filename, mimeType }) => ({ field, filename, mimeType })),
      authorization: req.headers.authorization,
      at: Date.now(),
      rateLimited: false,
    };
    requests.push(recorded);
    const answer = (reply: Reply) => send(res, reply);
    if (route === 'generations' || route === 'edits') {
      const refused = refusal(route, body);
      const waitMs = refused ? 0 : limiter.take(n);
      if (waitMs > 0) {
        recorded.rateLimited = true;
        return answer(
          errorReply(
            429,
            { message: `Rate limit reached for ${model} on images per min: Limit ${options.imagesPerMinute}. Please try again in ${(waitMs / 1000).toFixed(1)}s.`, type: 'images', code: 'rate_limit_exceeded' },
            { 'retry-after-ms': String(waitMs), 'retry-after': String(Math.ceil(waitMs / 1000)) },
          ),
        );
      }
      if (refused) return answer(refused);
    } else if (isRetired(model)) {
      return answer(modelGone(model));
    }
    const fault = takeFault(route, prompt);
    const faulted = fault && faultReply(fault, model);
    if (faulted === 'hang') return;
    if (faulted) return answer(faulted);
    if (options.latencyMs && (route === 'generations' || route === 'edits')) await new Promise((r) => setTimeout(r, options.latencyMs));

    if (route === 'moderations') {
      const flagged = fault?.kind === 'flagged';
      sendJson(res, 200, {
        id: `modr-offline-${++counter}`,
        model,
        results: [{ flagged, categories: { violence: flagged, harassment: false }, category_scores: { violence: flagged ? 0.93 : 0.001, harassment: 0.001 }, category_applied_input_types: { violence: ['text'], harassment: ['text'] } }],
      });
      return;
    }

    if (route === 'chat') {
      const question = String((body.messages as { content?: string }[] | undefined)?.at(-1)?.content ?? '');
      const content = `Offline prompt. Four photos of this person: at a sunny park, at their desk, doing their favourite hobby, at dinner with friends. (${question.split('\n')[0]})`;
      sendJson(res, 200, {
        id: `chatcmpl-offline-${++counter}`,
        object: 'chat.completion',
        created: Math.floor(Date.now() / 1000),
        model,
        choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }],
        usage: { prompt_tokens: Math.ceil(question.length / 4), completion_tokens: Math.ceil(content.length / 4), total_tokens: Math.ceil((question.length + content.length) / 4) },
      });
      return;
    }
    if (route !== 'generations' && route !== 'edits') return;
    const file = form.files.find((f) => f.field === 'image' || f.field === 'image[]');
    answer(await imageReply(route, body, file, fault));
  };

  const server = await listenOnLoopback(handle, (res, error) =>
    send(res, errorReply(500, { message: `offline backend: ${error.message}`, type: 'server_error', code: null })),
  );
  return {
    baseUrl: `http://127.0.0.1:${server.port}/v1`,
    requests,
    batchLines: batchApi.lines,
    generatorCaPem: generator?.caPem,
    close: async () => {
      await batchApi.settled();
      await server.close();
    },
  };
}
