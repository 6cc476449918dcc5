/**
 * Estimated cost from the `usage` the API returns. USD per million tokens, from OpenAI's
 * published prices; an estimate for the manifest, not a bill. Unknown models cost `null`.
 */
interface Price {
  textIn: number;
  imageIn: number;
  out: number;
}

const PRICES: Record<string, Price> = {
  'gpt-image-1.5': { textIn: 5, imageIn: 8, out: 32 },
  'gpt-image-2': { textIn: 5, imageIn: 8, out: 32 },
  'gpt-image-1': { textIn: 5, imageIn: 10, out: 40 },
  'gpt-image-1-mini': { textIn: 2, imageIn: 2.5, out: 8 },
  'gpt-4.1-mini': { textIn: 0.4, imageIn: 0.4, out: 1.6 },
  'gpt-4.1': { textIn: 2, imageIn: 2, out: 8 },
  'gpt-4o-mini': { textIn: 0.15, imageIn: 0.15, out: 0.6 },
};

export interface Usage {
  input_tokens: number;
  output_tokens: number;
  total_tokens?: number;
  input_tokens_details?: { text_tokens?: number; image_tokens?: number };
}

export function estimateCostUsd(model: string, usage: Usage | undefined): number | null {
  const price = PRICES[model];
  if (!price || !usage) return null;
  const imageIn = usage.input_tokens_details?.image_tokens ?? 0;
  const textIn = usage.input_tokens_details?.text_tokens ?? usage.input_tokens - imageIn;
  const usd = (textIn * price.textIn + imageIn * price.imageIn + usage.output_tokens * price.out) / 1_000_000;
  return Math.round(usd * 1e6) / 1e6;
}
