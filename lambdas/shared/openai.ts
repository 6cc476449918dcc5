/**
 * OpenAI as image provider and prompt writer: the key (from the environment or Secrets Manager),
 * the client, the image calls with the options each model takes, model fallback, and the mapping
 * of API errors onto the names the state machine retries or catches.
 */
import type { Logger } from '@aws-lambda-powertools/logger';
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import OpenAI, { toFile, type ClientOptions } from 'openai';
import { Agent } from 'undici';
import { withClientPlugins } from './aws-clients.ts';
import { systemClock, type Clock } from './clock.ts';
import { ConfigurationError, ContentPolicyViolation, ImageTimeout, RateLimited, UpstreamError, AvatarError } from './errors.ts';
import { formatOf, type ImageProvider, type ImageRequest, type ImageResult } from './image-provider.ts';
import type { StageMetrics } from './metrics.ts';
import { imageProblem } from './image-check.ts';
import { budgetStoreFromEnv, governor, type ImageGovernor, type Ticket } from './governor.ts';
import { IMAGE_MODELS, estimateImageCallCost, estimateImageCost, modelAdvice, modelChain, parseSize, type TokenUsage } from './models.ts';
import type { TileFormat } from './keys.ts';
import type { Settings } from './settings.ts';

type Env = Record<string, string | undefined>;

let cachedSecretKey: Promise<string> | undefined;

/** The OpenAI key: OPENAI_API_KEY, else the Secrets Manager secret named by OPENAI_API_KEY_SECRET_ARN. */
export async function openAiKeyFromEnv(env: Env = process.env): Promise<string | undefined> {
  if (env.OPENAI_API_KEY) return env.OPENAI_API_KEY;
  const secretId = env.OPENAI_API_KEY_SECRET_ARN;
  if (!secretId) return undefined;
  cachedSecretKey ??= withClientPlugins(new SecretsManagerClient({}))
    .send(new GetSecretValueCommand({ SecretId: secretId }))
    .then((r) => (r.SecretString ?? '').trim())
    .catch((error: Error) => {
      // Only a key is kept: a throttled or failed fetch is tried again on the next call.
      cachedSecretKey = undefined;
      throw new UpstreamError(`reading the OpenAI key from Secrets Manager (${secretId}) failed: ${error.name}: ${error.message}; retried`, { cause: error });
    });
  return cachedSecretKey;
}

/** Margin over a call's own timeout, so the request's timeout fires first and names the setting. */
const TRANSPORT_MARGIN_MS = 30_000;

/**
 * The SDK's own retries stay low: the state machine owns retries, with backoff that outlives
 * a per-minute rate limit. Without `baseURL` the SDK reads OPENAI_BASE_URL itself.
 * Node's fetch stops waiting for response headers, and between body chunks, after 300 s whatever
 * the request's timeout; an image call may take longer, so the connection waits as long as the
 * longest call may (`timeoutMs`), and each request keeps its own timeout under that.
 */
export function openAiClient(apiKey: string, baseURL: string | undefined, timeoutMs: number): OpenAI {
  const wait = timeoutMs + TRANSPORT_MARGIN_MS;
  const dispatcher = new Agent({ headersTimeout: wait, bodyTimeout: wait });
  return new OpenAI({ apiKey, baseURL: baseURL || undefined, maxRetries: 0, timeout: timeoutMs, fetchOptions: { dispatcher } as ClientOptions['fetchOptions'] });
}

/** The error codes of a content-policy refusal, on the image endpoints and in a batch's lines. */
export const moderationCodes = new Set(['moderation_blocked', 'content_policy_violation']);

/** How long a 429 asks to wait, in ms: `retry-after-ms`, else `retry-after` in seconds. */
function retryAfterMs(headers: Headers | undefined): number | undefined {
  const ms = Number(headers?.get('retry-after-ms'));
  if (Number.isFinite(ms) && ms > 0) return ms;
  const seconds = Number(headers?.get('retry-after'));
  return Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : undefined;
}

/** A rate limit the API says when to retry, and not an empty quota. */
function waitAsked(error: unknown): number | undefined {
  if (!(error instanceof OpenAI.APIError) || error.status !== 429 || error.code === 'insufficient_quota') return undefined;
  return retryAfterMs(error.headers);
}

/** The account's image limit as a 429 states it ("images per min… Limit: 20/1min"), if it does. */
function statedImageLimit(error: unknown): number | undefined {
  if (!(error instanceof OpenAI.APIError) || error.status !== 429) return undefined;
  const match = /images? per min[\s\S]*?Limit:? (\d+)/i.exec(error.message);
  return match ? Number(match[1]) : undefined;
}

function isModelNotFound(error: unknown): boolean {
  return error instanceof OpenAI.APIError && (error.code === 'model_not_found' || (error.status === 404 && /model/i.test(error.message)));
}

/**
 * Maps the OpenAI client's errors onto the names the state machine retries or catches.
 * `what` says which call failed ("base image for persona ada"), so every message names the persona.
 */
export function toAvatarError(error: unknown, what: string, timeoutMs: number, timeoutSetting = 'IMAGE_TIMEOUT_MS'): Error {
  if (error instanceof AvatarError) return error;
  if (error instanceof OpenAI.APIConnectionTimeoutError) {
    return new ImageTimeout(
      `${what}: no answer within ${Math.round(timeoutMs / 1000)} s; retried by the state machine, raise ${timeoutSetting} if the model is just slow`,
      { cause: error },
    );
  }
  if (error instanceof OpenAI.APIConnectionError) {
    return new UpstreamError(`${what}: connection to the API failed (${error.message}); retried`, { cause: error });
  }
  if (error instanceof OpenAI.APIError) {
    const body = (error.error ?? {}) as Record<string, unknown>;
    if (error.status === 400 && moderationCodes.has(String(error.code))) {
      const details = body.moderation_details ?? (body as { error?: Record<string, unknown> }).error?.moderation_details;
      return new ContentPolicyViolation(
        `${what}: rejected by the content policy (${error.code}): ${error.message}` +
          (details ? `; moderation_details: ${JSON.stringify(details)}` : '') +
          '; the workflow rewrites the prompt once into a safer one, then gives up on this persona',
        { cause: error },
      );
    }
    if (error.status === 429) {
      if (error.code === 'insufficient_quota') {
        return new ConfigurationError(`${what}: the OpenAI account has no quota left (${error.message}); add credit, retrying will not help`);
      }
      const after = retryAfterMs(error.headers);
      return new RateLimited(`${what}: rate limited (${error.message})${after ? `; the API asks to retry after ${Math.ceil(after / 1000)} s` : ''}; retried with backoff`, { cause: error });
    }
    if (error.status === 401 || error.status === 403) {
      return new ConfigurationError(`${what}: the API refused the key (${error.status}); check OPENAI_API_KEY or the secret`);
    }
    if (error.status !== undefined && error.status >= 500) {
      return new UpstreamError(`${what}: the API failed with ${error.status} (${error.message}); retried`, { cause: error });
    }
    return new ConfigurationError(`${what}: the API rejected the request with ${error.status} (${error.message})`);
  }
  return error instanceof Error ? error : new Error(String(error));
}

/** The options an image call sends besides model, prompt and n: only those the model table says the model takes. */
export function imageCallOptions(settings: Settings, model: string, format: TileFormat, edit: boolean): Record<string, unknown> {
  const spec = IMAGE_MODELS[model];
  const options: Record<string, unknown> = { size: settings.imageSize, quality: settings.imageQuality };
  if (!spec) return options;
  options.output_format = format;
  if (format !== 'png') options.output_compression = settings.outputCompression;
  if (spec.moderation) options.moderation = settings.imageModeration;
  if (edit && spec.inputFidelity.includes(settings.imageInputFidelity)) options.input_fidelity = settings.imageInputFidelity;
  return options;
}

type Call = (api: OpenAI, model: string, options: Record<string, unknown>, timeoutMs: number) => Promise<OpenAI.ImagesResponse>;

/** OpenAI's moderation model: free to call. */
const MODERATION_MODEL = 'omni-moderation-latest';

/**
 * Images from OpenAI's API. Each model gets only the options the model table says it takes.
 * A model that answers `model_not_found` (OpenAI retires image models) is skipped for the next in
 * IMAGE_FALLBACK_MODELS, and for the rest of this container's life.
 */
export function openAiImages(
  client: OpenAI | undefined,
  settings: Settings,
  logger: Pick<Logger, 'warn'>,
  metrics: StageMetrics,
  clock: Clock = systemClock,
  turns: ImageGovernor = governor(budgetStoreFromEnv({}), settings, clock),
): ImageProvider {
  const gone = new Set<string>();
  // Every configured model answered model_not_found: name them, and one to use instead.
  const noModelLeft = (what: string) => {
    const tried = modelChain(settings);
    return new ConfigurationError(`${what}: no image model is left: ${tried.join(', ')} ${tried.length === 1 ? 'does' : 'do'} not exist (retired?); ${modelAdvice(tried, clock)}`);
  };

  const optionsFor = (model: string, request: ImageRequest, edit: boolean) => imageCallOptions(settings, model, request.format, edit);

  const configured = (what: string): OpenAI => {
    if (!client) throw new ConfigurationError(`${what}: no image API is configured; set OPENAI_API_KEY (and OPENAI_BASE_URL for a compatible server)`);
    return client;
  };

  const run = async (request: ImageRequest, edit: boolean, call: Call): Promise<ImageResult> => {
    const { what } = request;
    const api = configured(what);
    const chain = modelChain(settings).filter((m) => !gone.has(m));
    const warnings: string[] = [];
    // A 429 that says when to come back is waited out here, within the call's own time: many
    // runs sharing one account's image limit then pace themselves on the API's word, instead of
    // using up the state machine's retries while the rest of a batch makes progress.
    let deadline: number | undefined;
    for (let i = 0; i < chain.length; i++) {
      const model = chain[i]!;
      let answer: OpenAI.ImagesResponse;
      let ticket: Ticket | undefined;
      let called = false;
      try {
        const estimatedUsd = estimateImageCallCost(model, { size: settings.imageSize, quality: settings.imageQuality, n: request.n, promptChars: request.prompt.length, edit });
        const imageCall = { what, model, images: request.n, estimatedUsd, budget: request.budget };
        // The first try takes the turn the stage claimed; a try after a 429 or a retired model
        // takes one here, if it comes within the stage's wait (the call's whole time comes after).
        const held = request.callKey !== undefined && i === 0 && deadline === undefined;
        ticket = held ? await turns.takeHeld(request.callKey!, imageCall) : await turns.take(imageCall, settings.imageTurnWaitMs);
        deadline ??= Date.now() + request.timeoutMs;
        metrics.record('ImageCalls', 1);
        called = true;
        answer = await call(api, model, optionsFor(model, request, edit), Math.max(1000, deadline - Date.now()));
      } catch (error) {
        if (called) {
          if (error instanceof OpenAI.APIError && error.status === 429) metrics.record('ImageCallsRateLimited', 1);
          else metrics.record('ImageCallsFailed', 1, { error: toAvatarError(error, what, request.timeoutMs).name });
        }
        // An answer means nothing was drawn, so nothing was paid; no answer may have been paid for.
        if (error instanceof OpenAI.APIError && error.status !== undefined) await ticket?.release();
        else await ticket?.settle(null);
        const wait = waitAsked(error);
        const limit = statedImageLimit(error);
        if (limit !== undefined && limit < settings.imagesPerMinute) {
          const warning = `the image API allows ${limit} images a minute, fewer than IMAGES_PER_MINUTE=${settings.imagesPerMinute}: set IMAGES_PER_MINUTE (context imagesPerMinute) to ${limit} so batches pace to it`;
          if (!warnings.includes(warning)) warnings.push(warning);
          logger.warn(warning, { limit, imagesPerMinute: settings.imagesPerMinute });
        }
        if (wait !== undefined && deadline !== undefined && Date.now() + wait < deadline) {
          await new Promise((resolve) => setTimeout(resolve, wait + Math.random() * 250));
          i--;
          continue;
        }
        if (!isModelNotFound(error)) throw toAvatarError(error, what, request.timeoutMs);
        gone.add(model);
        const next = chain[i + 1];
        if (!next) throw noModelLeft(what);
        const warning = `image model ${model} answered model_not_found (retired): used ${next}; set IMAGE_MODEL=${next}`;
        warnings.push(warning);
        logger.warn(warning, { model, fallback: next });
        continue;
      }
      const usage = answer.usage as TokenUsage | undefined;
      const estimatedCostUsd = estimateImageCost(model, usage);
      await ticket.settle(estimatedCostUsd);
      const by = { model, api: 'sync' };
      metrics.record('ImagesDrawn', answer.data?.length ?? 0, by);
      metrics.record('ImageCostUsd', estimatedCostUsd ?? 0, by);
      metrics.record('SpentTodayUsd', await turns.spentToday());
      const images = (answer.data ?? []).map((d) => {
        if (!d.b64_json) throw new UpstreamError(`${what}: the image API answered without image data; retried`);
        return Buffer.from(d.b64_json, 'base64');
      });
      if (images.length === 0) throw new UpstreamError(`${what}: the image API answered with no images; retried`);
      for (const image of images) {
        const problem = imageProblem(image, parseSize(settings.imageSize));
        if (problem) throw new UpstreamError(`${what}: the image API (${model}) sent an unusable image: ${problem}; nothing was stored, retried`);
      }
      return { images, format: formatOf(images[0]!) ?? 'png', model, usage, estimatedCostUsd, warnings };
    }
    throw noModelLeft(what);
  };

  return {
    name: 'openai',
    turn: async ({ callKey, n }) => {
      const model = modelChain(settings).find((m) => !gone.has(m)) ?? settings.imageModel;
      const at = await turns.claimTurn(callKey, model, n);
      const wait = at - Date.now();
      metrics.record('TurnWaitSeconds', Math.max(0, wait) / 1000);
      if (wait > settings.imageTurnWaitMs) return { later: new Date(at).toISOString() };
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      return undefined;
    },
    checkPrompt: async ({ what, prompt, timeoutMs }) => {
      const api = configured(what);
      let answer: OpenAI.ModerationCreateResponse;
      try {
        answer = await api.moderations.create({ model: MODERATION_MODEL, input: prompt }, { timeout: timeoutMs });
      } catch (error) {
        // A compatible server without a moderation endpoint: the image API's own check remains.
        if (error instanceof OpenAI.NotFoundError) return;
        throw toAvatarError(error, `${what} (moderation check)`, timeoutMs);
      }
      const flagged = answer.results.filter((r) => r.flagged);
      if (flagged.length > 0) {
        const categories = flagged.flatMap((r) => Object.entries(r.categories).filter(([, on]) => on).map(([category]) => category));
        throw new ContentPolicyViolation(
          `${what}: the prompt was flagged by ${MODERATION_MODEL} (${categories.join(', ') || 'flagged'}) before any image was paid for; the workflow rewrites it once into a safer one, then gives up on this persona`,
        );
      }
    },
    generate: (request) =>
      run(request, false, (api, model, options, timeout) =>
        api.images.generate({ model, prompt: request.prompt, n: request.n, ...options } as OpenAI.ImageGenerateParamsNonStreaming, { timeout }),
      ),
    edit: (request) =>
      run(request, true, async (api, model, options, timeout) =>
        api.images.edit(
          {
            model,
            // Without an explicit type the API sees application/octet-stream and rejects the file.
            image: await toFile(request.reference, 'base.png', { type: 'image/png' }),
            prompt: request.prompt,
            n: request.n,
            ...options,
          } as OpenAI.ImageEditParamsNonStreaming,
          { timeout },
        ),
      ),
  };
}

/** For the stages that draw or write prompts: the image provider and the text client, sharing one key. */
export async function openAiClients(env: Env, settings: Settings, logger: Logger, clock: Clock, metrics: StageMetrics): Promise<{ images: ImageProvider; text: OpenAI | undefined }> {
  const key = await openAiKeyFromEnv(env);
  const client = key ? openAiClient(key, env.OPENAI_BASE_URL, Math.max(settings.imageTimeoutMs, settings.textTimeoutMs)) : undefined;
  return { images: openAiImages(client, settings, logger, metrics, clock, governor(budgetStoreFromEnv(env), settings, clock)), text: client };
}
