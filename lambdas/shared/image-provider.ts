/**
 * The seam between the stages and whoever draws: a provider turns a prompt (and, for edits, a
 * reference image) into images, says which model made them and what that cost. OpenAI's API is
 * one (openai.ts); another provider is a new module behind this interface, not edits to stages.
 */
import type { BatchBudget } from './governor.ts';
import type { TileFormat } from './keys.ts';
import type { TokenUsage } from './models.ts';

export interface ImageRequest {
  /** Which call, for messages and logs: "grid 0 for persona ada-lovelace". */
  what: string;
  prompt: string;
  n: number;
  /** The format to ask for: png where the image is processed further, else the avatar format. */
  format: TileFormat;
  timeoutMs: number;
  /** The batch whose budget pays for it, beyond the account's daily cap. */
  budget?: BatchBudget | null;
  /** The call whose turn `turn()` claimed and held: its first try takes that turn. */
  callKey?: string;
}

/** A call's turn is further off than a stage waits: Step Functions waits until `later` (ISO 8601), then runs the stage again. */
export interface TurnLater {
  later: string;
}

export interface ImageResult {
  images: Buffer[];
  /** The format the images actually came in. */
  format: TileFormat;
  /** The model that made them: after a fallback, not the one configured. */
  model: string;
  usage?: TokenUsage;
  estimatedCostUsd: number | null;
  /** What a person should know, such as a retired model that was skipped. */
  warnings: string[];
}

export interface ImageProvider {
  readonly name: string;
  /**
   * Claims the turn of the call `callKey` under the account's image limit, first come first
   * served, before anything else is done for it: waits for it when it is at most
   * IMAGE_TURN_WAIT_MS away, else answers when it comes, held for the call until then.
   */
  turn(request: { what: string; callKey: string; n: number }): Promise<TurnLater | undefined>;
  /**
   * Throws ContentPolicyViolation when the provider's moderation flags the prompt: a refusal
   * that costs nothing, before any image is paid for.
   */
  checkPrompt(request: Pick<ImageRequest, 'what' | 'prompt' | 'timeoutMs'>): Promise<void>;
  /** Text to image. */
  generate(request: ImageRequest): Promise<ImageResult>;
  /** Image to image, from the reference. */
  edit(request: ImageRequest & { reference: Buffer }): Promise<ImageResult>;
}

/** The format of encoded image bytes, from their signature. */
export function formatOf(image: Buffer): TileFormat | undefined {
  if (image.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) return 'png';
  if (image[0] === 0xff && image[1] === 0xd8 && image[2] === 0xff) return 'jpeg';
  if (image.subarray(0, 4).toString('latin1') === 'RIFF' && image.subarray(8, 12).toString('latin1') === 'WEBP') return 'webp';
  return undefined;
}
