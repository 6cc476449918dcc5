import type { TileFormat } from './keys.ts';
import { ConfigurationError } from './errors.ts';
import { IMAGES_PER_GRID, MAX_IMAGES } from './persona.ts';

/** Everything a stage reads from its environment, parsed once. Names match the seed's `.env`. */
export interface Settings {
  bucket: string;
  imageModel: string;
  imageFallbackModel: string | undefined;
  imageSize: string;
  imageQuality: string;
  /** Images per run when the execution input does not say (DEFAULT_IMAGES). */
  defaultImages: number;
  textModel: string;
  /** Upper bound for one image call; the handler lowers it to fit the Lambda's remaining time. */
  imageTimeoutMs: number;
  /** auto: Flowise if configured, else OpenAI if a key is, else the template. */
  promptProvider: 'auto' | 'template';
  flowise: { url: string; chatflowId: string; apiKey: string | undefined } | undefined;
  publicBaseUrl: string | undefined;
  /** S3_ENDPOINT: an S3-compatible server, whose object URLs are plain paths. */
  s3Endpoint: string | undefined;
  tileFormat: TileFormat;
  urlExpirySeconds: number;
  /** The workflow the upload trigger starts (STATE_MACHINE_ARN). */
  stateMachineArn: string | undefined;
}

type Env = Record<string, string | undefined>;

function positiveInt(env: Env, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value <= 0) {
    throw new ConfigurationError(`${name} must be a positive whole number, got "${raw}"`);
  }
  return value;
}

const tileFormats: TileFormat[] = ['png', 'webp', 'jpeg'];

export function settingsFromEnv(env: Env = process.env): Settings {
  const tileFormat = (env.TILE_FORMAT || 'png') as TileFormat;
  if (!tileFormats.includes(tileFormat)) {
    throw new ConfigurationError(`TILE_FORMAT must be one of ${tileFormats.join(', ')}, got "${tileFormat}"`);
  }
  const defaultImages = positiveInt(env, 'DEFAULT_IMAGES', IMAGES_PER_GRID);
  if (defaultImages > MAX_IMAGES) throw new ConfigurationError(`DEFAULT_IMAGES must be at most ${MAX_IMAGES}, got ${defaultImages}`);
  const flowiseUrl = env.FLOWISE_URL;
  const chatflowId = env.FLOWISE_CHATFLOW_ID;
  return {
    bucket: env.S3_BUCKET_NAME || 'avatars',
    imageModel: env.IMAGE_MODEL || 'gpt-image-1.5',
    imageFallbackModel: env.IMAGE_FALLBACK_MODEL || undefined,
    imageSize: env.IMAGE_SIZE || '1024x1024',
    imageQuality: env.IMAGE_QUALITY || 'medium',
    defaultImages,
    textModel: env.TEXT_MODEL || 'gpt-4.1-mini',
    imageTimeoutMs: positiveInt(env, 'IMAGE_TIMEOUT_MS', 600_000),
    promptProvider: env.PROMPT_PROVIDER === 'template' ? 'template' : 'auto',
    flowise: flowiseUrl && chatflowId ? { url: flowiseUrl.replace(/\/+$/, ''), chatflowId, apiKey: env.FLOWISE_API_KEY || undefined } : undefined,
    publicBaseUrl: env.PUBLIC_BASE_URL ? env.PUBLIC_BASE_URL.replace(/\/+$/, '') : undefined,
    s3Endpoint: env.S3_ENDPOINT ? env.S3_ENDPOINT.replace(/\/+$/, '') : undefined,
    tileFormat,
    urlExpirySeconds: positiveInt(env, 'URL_EXPIRY_SECONDS', 7 * 24 * 3600),
    stateMachineArn: env.STATE_MACHINE_ARN || undefined,
  };
}
