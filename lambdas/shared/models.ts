/**
 * What each image model accepts and costs, in one table. Settings are checked against it before
 * anything is spent (at `cdk synth` and when a local run starts); requests send only the options
 * a model takes; the offline backend answers as the API would from it.
 *
 * Sources: the `openai` client's parameter documentation (sizes, qualities, input_fidelity) and
 * OpenAI's deprecations and pricing pages. Prices are USD per million tokens.
 */
import { dayOf, systemClock, type Clock } from './clock.ts';

export interface TokenPrices {
  textIn: number;
  textInCached: number;
  imageIn: number;
  imageInCached: number;
  out: number;
}

export interface ImageModelSpec {
  /** `flexible`: any WxH on the gpt-image-2 grid rules; `standard`: the three fixed sizes and auto. */
  sizes: 'flexible' | 'standard';
  qualities: readonly string[];
  /** input_fidelity values the edits endpoint takes; empty: the parameter must be left out. */
  inputFidelity: readonly ('high' | 'low')[];
  /** Takes `moderation` (auto, low). */
  moderation: boolean;
  /** The day OpenAI shuts it down (ISO date), and what to use instead. */
  shutdown?: { on: string; use: string };
  /** Unpublished prices leave the cost estimate unknown rather than wrong. */
  prices?: TokenPrices;
  /** Output tokens of one 1024x1024 image per quality: how the offline backend reports usage. */
  outputTokens1024?: Record<string, number>;
}

const GPT_QUALITIES = ['low', 'medium', 'high', 'auto'] as const;
const GPT_IMAGE_1_TOKENS = { low: 272, medium: 1056, high: 4160, auto: 1056 };
// gpt-image-2 at $30/M: a 1024x1024 medium image is about $0.053.
const GPT_IMAGE_2_TOKENS = { low: 454, medium: 1767, high: 6960, auto: 1767 };
const RETIRING = { on: '2026-12-01', use: 'gpt-image-2' };

const gptImage2: ImageModelSpec = {
  sizes: 'flexible',
  qualities: GPT_QUALITIES,
  inputFidelity: [],
  moderation: true,
  prices: { textIn: 5, textInCached: 1.25, imageIn: 8, imageInCached: 2, out: 30 },
  outputTokens1024: GPT_IMAGE_2_TOKENS,
};
const gptImage25: ImageModelSpec = { sizes: 'flexible', qualities: [...GPT_QUALITIES, 'xhigh', 'max'], inputFidelity: [], moderation: true };
const gptImage26: ImageModelSpec = { sizes: 'standard', qualities: GPT_QUALITIES, inputFidelity: [], moderation: true };
const gptImage15Prices: TokenPrices = { textIn: 5, textInCached: 1.25, imageIn: 8, imageInCached: 2, out: 32 };

export const IMAGE_MODELS: Record<string, ImageModelSpec> = {
  'gpt-image-2': gptImage2,
  'gpt-image-2-2026-04-21': gptImage2,
  'gpt-image-2.5-sunburst': gptImage25,
  'gpt-image-2.5-sunburst-2026-09-08': gptImage25,
  'gpt-image-2.5-flare': gptImage25,
  'gpt-image-2.5-flare-2026-09-08': gptImage25,
  'gpt-image-2.6-sunburst': gptImage26,
  'gpt-image-2.6-flare': gptImage26,
  'gpt-image-1.5': {
    sizes: 'standard',
    qualities: GPT_QUALITIES,
    inputFidelity: ['high', 'low'],
    moderation: true,
    shutdown: RETIRING,
    prices: gptImage15Prices,
    outputTokens1024: GPT_IMAGE_1_TOKENS,
  },
  'chatgpt-image-latest': {
    sizes: 'standard',
    qualities: GPT_QUALITIES,
    inputFidelity: [],
    moderation: true,
    shutdown: RETIRING,
    prices: gptImage15Prices,
    outputTokens1024: GPT_IMAGE_1_TOKENS,
  },
  'gpt-image-1-mini': {
    sizes: 'standard',
    qualities: GPT_QUALITIES,
    inputFidelity: ['low'],
    moderation: true,
    shutdown: RETIRING,
    prices: { textIn: 2, textInCached: 0.2, imageIn: 2.5, imageInCached: 0.25, out: 8 },
    outputTokens1024: { low: 272, medium: 1056, high: 4160, auto: 1056 },
  },
  'gpt-image-1': {
    sizes: 'standard',
    qualities: GPT_QUALITIES,
    inputFidelity: ['high', 'low'],
    moderation: true,
    shutdown: { on: '2026-10-23', use: 'gpt-image-2' },
    prices: { textIn: 5, textInCached: 1.25, imageIn: 10, imageInCached: 2.5, out: 40 },
    outputTokens1024: GPT_IMAGE_1_TOKENS,
  },
};

/** Text models that write prompts: USD per million tokens (input, cached input, output). */
export const TEXT_MODEL_PRICES: Record<string, { in: number; inCached: number; out: number }> = {
  'gpt-4.1-mini': { in: 0.4, inCached: 0.1, out: 1.6 },
  'gpt-4.1': { in: 2, inCached: 0.5, out: 8 },
  'gpt-4o-mini': { in: 0.15, inCached: 0.075, out: 0.6 },
};

export const STANDARD_SIZES = ['1024x1024', '1536x1024', '1024x1536', 'auto'];
const FLEXIBLE = { multiple: 16, maxRatio: 3, maxEdge: 3840, maxPixels: 3840 * 2160, experimentalPixels: 2560 * 1440 };

export function parseSize(size: string): { width: number; height: number } | undefined {
  const match = /^(\d+)x(\d+)$/.exec(size);
  return match ? { width: Number(match[1]), height: Number(match[2]) } : undefined;
}

/** Why `model` cannot draw `size`, or undefined when it can. */
export function sizeProblem(model: string, size: string): string | undefined {
  const spec = IMAGE_MODELS[model];
  if (!spec) return parseSize(size) || size === 'auto' ? undefined : `"${size}" is not WIDTHxHEIGHT`;
  if (spec.sizes === 'standard') {
    return STANDARD_SIZES.includes(size) ? undefined : `${model} takes only ${STANDARD_SIZES.join(', ')}, not "${size}"`;
  }
  if (size === 'auto') return undefined;
  const parsed = parseSize(size);
  if (!parsed) return `"${size}" is not WIDTHxHEIGHT`;
  const { width, height } = parsed;
  const [long, short] = [Math.max(width, height), Math.min(width, height)];
  if (width % FLEXIBLE.multiple || height % FLEXIBLE.multiple) return `${model} needs both sides of ${size} to be multiples of ${FLEXIBLE.multiple}`;
  if (short === 0 || long / short > FLEXIBLE.maxRatio) return `${model} needs the long side of ${size} at most ${FLEXIBLE.maxRatio}x the short one`;
  if (long > FLEXIBLE.maxEdge || width * height > FLEXIBLE.maxPixels) return `${model} draws at most 3840x2160, not ${size}`;
  return undefined;
}

export interface ImageSettingsToCheck {
  imageModel: string;
  imageFallbackModels: string[];
  imageSize: string;
  imageQuality: string;
}

export interface ModelCheck {
  /** Setting name → what is wrong with it. */
  errors: { setting: 'imageModel' | 'imageFallbackModels' | 'imageSize' | 'imageQuality'; message: string }[];
  warnings: string[];
}

/** Whether OpenAI has shut `model` down by `day` (YYYY-MM-DD); unknown models are not known to be. */
export function isShutDown(model: string, day: string): boolean {
  const shutdown = IMAGE_MODELS[model]?.shutdown;
  return !!shutdown && shutdown.on <= day;
}

/**
 * A model to suggest in place of the ones that failed: one of the table's not shut down by the
 * clock's day and not among `tried`, preferring one with no shutdown date, then a priced one;
 * undefined when none is left.
 */
export function suggestedModel(tried: readonly string[], clock: Clock = systemClock): string | undefined {
  const day = dayOf(clock);
  const rank = (spec: ImageModelSpec) => (spec.shutdown ? 2 : 0) + (spec.prices ? 0 : 1);
  const candidates = Object.entries(IMAGE_MODELS).filter(([name]) => !tried.includes(name) && !isShutDown(name, day));
  return candidates.sort(([, a], [, b]) => rank(a) - rank(b))[0]?.[0];
}

/** What to do once every model in `tried` is gone: set one the table still has, or say none is left. */
export function modelAdvice(tried: readonly string[], clock: Clock = systemClock): string {
  const next = suggestedModel(tried, clock);
  return next
    ? `set IMAGE_MODEL or IMAGE_FALLBACK_MODELS to a model not shut down, e.g. ${next}`
    : 'no model in the model table is left that was not tried: set IMAGE_MODEL to a current OpenAI image model';
}

/** The models a run tries, in order, without repeats. */
export function modelChain(settings: Pick<ImageSettingsToCheck, 'imageModel' | 'imageFallbackModels'>): string[] {
  return [...new Set([settings.imageModel, ...settings.imageFallbackModels])];
}

/**
 * Checks the model, fallbacks, size and quality together: every model a run may fall back to
 * must take the size and quality, so no request is refused after money was spent.
 */
export function checkImageSettings(settings: ImageSettingsToCheck, clock: Clock = systemClock): ModelCheck {
  const check: ModelCheck = { errors: [], warnings: [] };
  const chain = modelChain(settings);
  const day = dayOf(clock);
  for (const [i, model] of chain.entries()) {
    const setting = i === 0 ? 'imageModel' : 'imageFallbackModels';
    const spec = IMAGE_MODELS[model];
    if (!spec) {
      check.warnings.push(`${model} is not in the model table: its sizes and qualities are not checked and only standard options are sent`);
      continue;
    }
    const sizeError = sizeProblem(model, settings.imageSize);
    if (sizeError) check.errors.push({ setting: i === 0 ? 'imageSize' : setting, message: sizeError });
    if (!spec.qualities.includes(settings.imageQuality)) {
      check.errors.push({ setting: i === 0 ? 'imageQuality' : setting, message: `${model} takes quality ${spec.qualities.join(', ')}, not "${settings.imageQuality}"` });
    }
    if (spec.shutdown) {
      const gone = isShutDown(model, day);
      check.warnings.push(`${model} ${gone ? 'was shut down' : 'shuts down'} on ${spec.shutdown.on}; use ${spec.shutdown.use}`);
    }
  }
  const size = parseSize(settings.imageSize);
  if (size && size.width * size.height > FLEXIBLE.experimentalPixels && chain.some((m) => IMAGE_MODELS[m]?.sizes === 'flexible')) {
    check.warnings.push(`${settings.imageSize} is above 2560x1440, which OpenAI calls experimental`);
  }
  if (chain.every((m) => isShutDown(m, day))) {
    check.errors.push({ setting: 'imageFallbackModels', message: `every model configured (${chain.join(', ')}) is shut down; ${modelAdvice(chain, clock)}` });
  }
  return check;
}

export interface TokenUsage {
  input_tokens: number;
  output_tokens: number;
  total_tokens?: number;
  input_tokens_details?: { text_tokens?: number; image_tokens?: number; cached_tokens?: number; cached_text_tokens?: number; cached_image_tokens?: number };
}

const round6 = (usd: number) => Math.round(usd * 1e6) / 1e6;

/** Estimated USD of one image call from the usage the API returned; null when unpriced. */
export function estimateImageCost(model: string, usage: TokenUsage | undefined): number | null {
  const prices = IMAGE_MODELS[model]?.prices;
  if (!prices || !usage) return null;
  const details = usage.input_tokens_details ?? {};
  const imageIn = details.image_tokens ?? 0;
  const textIn = details.text_tokens ?? usage.input_tokens - imageIn;
  const cachedImage = Math.min(imageIn, details.cached_image_tokens ?? 0);
  const cachedText = Math.min(textIn, details.cached_text_tokens ?? 0);
  return round6(
    ((textIn - cachedText) * prices.textIn +
      cachedText * prices.textInCached +
      (imageIn - cachedImage) * prices.imageIn +
      cachedImage * prices.imageInCached +
      usage.output_tokens * prices.out) /
      1e6,
  );
}

/** Estimated USD of one text call; null when unpriced. */
export function estimateTextCost(model: string, usage: { input_tokens: number; output_tokens: number; cached_tokens?: number } | undefined): number | null {
  const prices = TEXT_MODEL_PRICES[model];
  if (!prices || !usage) return null;
  const cached = Math.min(usage.input_tokens, usage.cached_tokens ?? 0);
  return round6(((usage.input_tokens - cached) * prices.in + cached * prices.inCached + usage.output_tokens * prices.out) / 1e6);
}

/** Input tokens of the reference image an edit sends, for estimates made before the call. */
const REFERENCE_IMAGE_TOKENS = 1_000;

/**
 * Estimated USD of an image call before it is made (what the budget reserves): its prompt, an
 * edit's reference image, and `n` images at this size and quality; null when unpriced.
 */
/** OpenAI's Batch API charges this share of the synchronous price. */
export const BATCH_API_PRICE = 0.5;

export function estimateImageCallCost(model: string, call: { size: string; quality: string; n: number; promptChars: number; edit: boolean }): number | null {
  const per1024 = IMAGE_MODELS[model]?.outputTokens1024?.[call.quality];
  if (per1024 === undefined) return null;
  const { width, height } = parseSize(call.size) ?? { width: 1024, height: 1024 };
  const text = Math.ceil(call.promptChars / 4);
  const image = call.edit ? REFERENCE_IMAGE_TOKENS : 0;
  const output = call.n * Math.round((per1024 * width * height) / (1024 * 1024));
  return estimateImageCost(model, { input_tokens: text + image, input_tokens_details: { text_tokens: text, image_tokens: image }, output_tokens: output, total_tokens: text + image + output });
}
