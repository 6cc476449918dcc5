import OpenAI, { toFile } from 'openai';
import {
  ConfigurationError,
  ContentPolicyViolation,
  ImageTimeout,
  RateLimited,
  UpstreamError,
  AvatarError,
} from './errors.ts';
import type { StageDeps } from './stage.ts';

export interface ImageUsage {
  input_tokens: number;
  output_tokens: number;
  total_tokens: number;
  input_tokens_details?: { text_tokens?: number; image_tokens?: number };
}

export interface ImageResult {
  images: Buffer[];
  model: string;
  usage: ImageUsage | undefined;
}

const moderationCodes = new Set(['moderation_blocked', 'content_policy_violation']);

function retryAfterSeconds(headers: Headers | undefined): number | undefined {
  const ms = Number(headers?.get('retry-after-ms'));
  if (Number.isFinite(ms) && ms > 0) return Math.ceil(ms / 1000);
  const seconds = Number(headers?.get('retry-after'));
  return Number.isFinite(seconds) && seconds > 0 ? seconds : undefined;
}

function isModelNotFound(error: unknown): boolean {
  return error instanceof OpenAI.APIError && (error.code === 'model_not_found' || (error.status === 404 && /model/i.test(error.message)));
}

/**
 * Maps the OpenAI client's errors onto the names the state machine retries or catches.
 * `what` says which call failed ("base image for persona ada"), so every message names the persona.
 */
export function toAvatarError(error: unknown, what: string, timeoutMs: number): Error {
  if (error instanceof AvatarError) return error;
  if (error instanceof OpenAI.APIConnectionTimeoutError) {
    return new ImageTimeout(
      `${what}: no answer within ${Math.round(timeoutMs / 1000)} s; retried by the state machine, raise IMAGE_TIMEOUT_MS if the model is just slow`,
      { cause: error },
    );
  }
  if (error instanceof OpenAI.APIConnectionError) {
    return new UpstreamError(`${what}: connection to the image API failed (${error.message}); retried`, { cause: error });
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
      const after = retryAfterSeconds(error.headers);
      return new RateLimited(
        `${what}: rate limited (${error.message})${after ? `; retry after ${after} s` : ''}; retried with backoff`,
        after,
        { cause: error },
      );
    }
    if (error.status === 401 || error.status === 403) {
      return new ConfigurationError(`${what}: the image API refused the key (${error.status}); check OPENAI_API_KEY or the secret`);
    }
    if (error.status !== undefined && error.status >= 500) {
      return new UpstreamError(`${what}: the image API failed with ${error.status} (${error.message}); retried`, { cause: error });
    }
    return new ConfigurationError(`${what}: the image API rejected the request with ${error.status} (${error.message})`);
  }
  return error instanceof Error ? error : new Error(String(error));
}

/**
 * Runs `call` with the configured model, once more with the fallback model when the first is
 * gone (`model_not_found`: OpenAI retires image models).
 */
async function withModelFallback(
  deps: StageDeps,
  what: string,
  call: (client: OpenAI, model: string) => Promise<OpenAI.ImagesResponse>,
): Promise<ImageResult> {
  const client = deps.openai;
  if (!client) {
    throw new ConfigurationError(`${what}: no image API is configured; set OPENAI_API_KEY (and OPENAI_BASE_URL for a compatible server)`);
  }
  const models = [deps.settings.imageModel, deps.settings.imageFallbackModel].filter((m): m is string => !!m);
  for (const [i, model] of models.entries()) {
    try {
      const answer = await call(client, model);
      const images = (answer.data ?? []).map((d) => {
        if (!d.b64_json) throw new UpstreamError(`${what}: the image API answered without image data`);
        return Buffer.from(d.b64_json, 'base64');
      });
      if (images.length === 0) throw new UpstreamError(`${what}: the image API answered with no images; retried`);
      return { images, model, usage: answer.usage as ImageUsage | undefined };
    } catch (error) {
      if (isModelNotFound(error) && i < models.length - 1) {
        deps.logger.warn('image model not found, using fallback', { model, fallback: models[i + 1] });
        continue;
      }
      if (isModelNotFound(error)) {
        throw new ConfigurationError(`${what}: model ${model} does not exist; set IMAGE_MODEL or IMAGE_FALLBACK_MODEL (e.g. gpt-image-2)`);
      }
      throw toAvatarError(error, what, deps.imageTimeoutMs);
    }
  }
  throw new ConfigurationError(`${what}: no image model configured (IMAGE_MODEL)`);
}

export function generateImage(deps: StageDeps, what: string, prompt: string): Promise<ImageResult> {
  const { imageSize, imageQuality } = deps.settings;
  return withModelFallback(deps, what, (client, model) =>
    client.images.generate(
      { model, prompt, n: 1, size: imageSize as OpenAI.ImageGenerateParams['size'], quality: imageQuality as OpenAI.ImageGenerateParams['quality'] },
      { timeout: deps.imageTimeoutMs },
    ),
  );
}

export function editImage(deps: StageDeps, what: string, image: Buffer, prompt: string, n: number): Promise<ImageResult> {
  const { imageSize, imageQuality } = deps.settings;
  return withModelFallback(deps, what, async (client, model) =>
    client.images.edit(
      {
        model,
        // Without an explicit type the API sees application/octet-stream and rejects the file.
        image: await toFile(image, 'base.png', { type: 'image/png' }),
        prompt,
        n,
        size: imageSize as OpenAI.ImageEditParams['size'],
        quality: imageQuality as OpenAI.ImageEditParams['quality'],
      },
      { timeout: deps.imageTimeoutMs },
    ),
  );
}
