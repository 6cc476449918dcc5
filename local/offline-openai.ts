/**
 * The offline image backend: an OpenAI-compatible HTTP server on loopback that answers
 * /v1/images/generations, /v1/images/edits and /v1/chat/completions with the real response
 * shapes (base64 PNG plus `usage`), so the real `openai` client runs unchanged. Faults can be
 * injected (rate limits, 5xx, hangs, policy refusals, wrong grid layouts, latency) to drive
 * every Retry and Catch branch of the workflow.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import busboy from 'busboy';
import { listenOnLoopback, readBody, sendJson } from './loopback-server.ts';
import { composeGrid, drawAvatar, gridLayout, lookFor, random, seedOf, type AvatarLook } from './avatar-art.ts';

export type FaultKind = 'rate-limit' | 'server-error' | 'hang' | 'policy' | 'layout' | 'model-gone';
export type Route = 'generations' | 'edits' | 'chat';

export interface Fault {
  kind: FaultKind;
  /** How many matching requests fail this way before the backend behaves; Infinity for always. */
  times: number;
  /** Which endpoint; all image endpoints when not given. */
  route?: Route;
}

export interface RecordedRequest {
  route: Route;
  model: string;
  prompt: string;
  n: number;
  size: string;
  /** Multipart parts of an edit: field name, file name and declared type. */
  files: { field: string; filename: string; mimeType: string }[];
  authorization: string | undefined;
}

export interface OfflineBackendOptions {
  faults?: Fault[];
  /** Added to every image answer, as a stand-in for the model's time. */
  latencyMs?: number;
  /** Models that answer `model_not_found`, as retired ones do. */
  retiredModels?: string[];
}

export interface OfflineBackend {
  baseUrl: string;
  requests: RecordedRequest[];
  close(): Promise<void>;
}

const ACCEPTED_IMAGE_TYPES = new Set(['image/png', 'image/jpeg', 'image/webp']);

function parseFault(spec: string): Fault {
  const match = /^(rate-limit|server-error|hang|policy|layout|model-gone)(?::(\d+|always))?(?:@(generations|edits|chat))?$/.exec(spec);
  if (!match) {
    throw new Error(`unknown fault "${spec}": use KIND[:TIMES|always][@generations|edits|chat], KIND one of rate-limit, server-error, hang, policy, layout, model-gone`);
  }
  const times = match[2] === 'always' ? Infinity : Number(match[2] ?? 1);
  return { kind: match[1] as FaultKind, times, ...(match[3] ? { route: match[3] as Route } : {}) };
}

/** Parses `--fault` specs such as `rate-limit:2`, `policy:always@generations`. */
export function parseFaults(specs: string[]): Fault[] {
  return specs.map(parseFault);
}

function apiError(res: ServerResponse, status: number, error: Record<string, unknown>, headers?: Record<string, string>): void {
  sendJson(res, status, { error: { param: null, ...error } }, headers);
}

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

function usage(prompt: string, imageInputs: number, outputs: number) {
  const text = Math.ceil(prompt.length / 4);
  const image = imageInputs * 323;
  const output = outputs * 1056;
  return { input_tokens: text + image, input_tokens_details: { text_tokens: text, image_tokens: image }, output_tokens: output, total_tokens: text + image + output };
}

function dimensions(size: string): [number, number] {
  const match = /^(\d+)x(\d+)$/.exec(size);
  return match ? [Number(match[1]), Number(match[2])] : [1024, 1024];
}

export async function startOfflineBackend(options: OfflineBackendOptions = {}): Promise<OfflineBackend> {
  const faults = (options.faults ?? []).map((f) => ({ ...f }));
  const retired = new Set(options.retiredModels ?? []);
  const requests: RecordedRequest[] = [];
  // The backend knows the people it drew, so edits of its own base images stay consistent.
  const drawn = new Map<string, AvatarLook>();
  const edits = new Map<string, number>();
  let counter = 0;

  const takeFault = (route: Route): Fault | undefined => {
    const fault = faults.find((f) => f.times > 0 && (f.route ? f.route === route : route !== 'chat'));
    if (fault) fault.times--;
    return fault;
  };

  const answerFault = (res: ServerResponse, fault: Fault, model: string): boolean => {
    switch (fault.kind) {
      case 'rate-limit':
        apiError(res, 429, { message: `Rate limit reached for ${model} on images per min. Please try again in 1s.`, type: 'requests', code: 'rate_limit_exceeded' }, { 'retry-after': '1' });
        return true;
      case 'server-error':
        apiError(res, 500, { message: 'The server had an error while processing your request.', type: 'server_error', code: null });
        return true;
      case 'hang':
        return true;
      case 'policy':
        apiError(res, 400, {
          message: 'Your request was rejected by the safety system. Your request may contain content that is not allowed by our safety system.',
          type: 'image_generation_user_error',
          code: 'moderation_blocked',
          moderation_details: { categories: ['offline-injected'] },
        });
        return true;
      case 'model-gone':
        apiError(res, 404, { message: `The model \`${model}\` does not exist or you do not have access to it.`, type: 'invalid_request_error', code: 'model_not_found' });
        return true;
      case 'layout':
        return false;
    }
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '').split('?')[0]!.replace(/^\/v1/, '');
    const route: Route | undefined =
      path === '/images/generations' ? 'generations' : path === '/images/edits' ? 'edits' : path === '/chat/completions' ? 'chat' : undefined;
    if (req.method !== 'POST' || !route) {
      apiError(res, 404, { message: `Unknown request URL: ${req.method} ${req.url}`, type: 'invalid_request_error', code: 'unknown_url' });
      return;
    }
    const form = route === 'edits' ? await readMultipart(req) : { fields: {}, files: [] };
    const body = route === 'edits' ? form.fields : await readJson(req);
    const model = String(body.model ?? '');
    const prompt = route === 'chat' ? JSON.stringify(body.messages ?? []) : String(body.prompt ?? '');
    const size = String(body.size ?? '1024x1024');
    const n = Number(body.n ?? 1);
    requests.push({
      route,
      model,
      prompt,
      n,
      size,
      files: form.files.map(({ field, filename, mimeType }) => ({ field, filename, mimeType })),
      authorization: req.headers.authorization,
    });
    if (retired.has(model)) {
      apiError(res, 404, { message: `The model \`${model}\` does not exist or you do not have access to it.`, type: 'invalid_request_error', code: 'model_not_found' });
      return;
    }
    const fault = takeFault(route);
    if (fault && answerFault(res, fault, model)) return;
    if (options.latencyMs && route !== 'chat') await new Promise((r) => setTimeout(r, options.latencyMs));

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

    const [width, height] = dimensions(size);
    let images: Buffer[];
    if (route === 'generations') {
      const look = lookFor(prompt);
      const image = await drawAvatar(look, width, height);
      drawn.set(seedOf(image.toString('base64')).toString('hex'), look);
      images = [image];
    } else {
      const file = form.files.find((f) => f.field === 'image' || f.field === 'image[]');
      if (!file) {
        apiError(res, 400, { message: "Missing required parameter: 'image'.", type: 'invalid_request_error', param: 'image', code: 'missing_required_parameter' });
        return;
      }
      if (!ACCEPTED_IMAGE_TYPES.has(file.mimeType)) {
        apiError(res, 400, {
          message: `Invalid file 'image': unsupported mimetype ('${file.mimeType}'). Supported file formats are 'image/jpeg', 'image/png', and 'image/webp'.`,
          type: 'invalid_request_error',
          param: 'image',
          code: 'unsupported_file_mimetype',
        });
        return;
      }
      const look = drawn.get(seedOf(file.data.toString('base64')).toString('hex')) ?? lookFor(file.data.toString('base64'));
      // Each further edit of the same person moves on to new scenes, as a second grid would.
      const lookKey = JSON.stringify(look);
      const round = edits.get(lookKey) ?? 0;
      edits.set(lookKey, round + 1);
      const variations = await Promise.all([0, 1, 2, 3].map((v) => drawAvatar(look, width, height, v + 4 * round)));
      if (/grid/i.test(prompt)) {
        const rnd = random(seedOf(`${prompt}:${++counter}`));
        const [rows, cols] = fault?.kind === 'layout' ? [1, 3] : [2, 2];
        images = [await composeGrid(width, height, gridLayout(width, height, rows, cols, rnd), variations, rnd)];
      } else {
        images = variations.concat(variations).slice(0, n);
      }
    }
    sendJson(res, 200, {
      created: Math.floor(Date.now() / 1000),
      background: 'opaque',
      output_format: 'png',
      quality: String(body.quality ?? 'medium'),
      size,
      data: images.map((image) => ({ b64_json: image.toString('base64') })),
      usage: usage(prompt, route === 'edits' ? 1 : 0, images.length),
    });
  };

  const server = await listenOnLoopback(handle, (res, error) =>
    apiError(res, 500, { message: `offline backend: ${error.message}`, type: 'server_error', code: null }),
  );
  return { baseUrl: `http://127.0.0.1:${server.port}/v1`, requests, close: server.close };
}
