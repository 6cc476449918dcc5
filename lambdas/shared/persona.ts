import type { BatchBudget } from './governor.ts';
import * as z from 'zod/mini';
import './zod.ts';
import { InvalidPersona } from './errors.ts';

/** Ids become S3 key segments and execution names: letters, digits, `-` and `_` only. */
export const PERSONA_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
export const MAX_IMAGES = 40;
export const IMAGES_PER_GRID = 4;

/** How many avatars each grid of a run of `images` gives: fours, the last one what is left. */
export function gridCounts(images: number): number[] {
  return Array.from({ length: Math.ceil(images / IMAGES_PER_GRID) }, (_, i) => Math.min(IMAGES_PER_GRID, images - i * IMAGES_PER_GRID));
}

const bio = z.optional(z.string().check(z.trim(), z.maxLength(4000)));

export const personaSchema = z
  .object({
    id: z.string().check(z.regex(PERSONA_ID_PATTERN, 'must be 1-64 letters, digits, "-" or "_", starting with a letter or digit')),
    firstname: z.string().check(z.trim(), z.minLength(1, 'must not be empty'), z.maxLength(100)),
    lastname: z._default(z.string().check(z.trim(), z.maxLength(100)), ''),
    gender: z.string().check(z.trim(), z.minLength(1, 'must not be empty'), z.maxLength(40)),
    bio_facebook: bio,
    bio_instagram: bio,
    bio_x: bio,
    bio_tiktok: bio,
  })
  .check(
    z.refine((p) => [p.bio_facebook, p.bio_instagram, p.bio_x, p.bio_tiktok].some((b) => b), {
      message: 'at least one of bio_facebook, bio_instagram, bio_x, bio_tiktok must be given',
      path: ['bio_facebook'],
    }),
  );

export type Persona = z.infer<typeof personaSchema>;

export const generationModes = ['grid', 'separate'] as const;
export type GenerationMode = (typeof generationModes)[number];

export const runRequestSchema = z.object({
  persona: z.unknown(),
  images: z.optional(z.int().check(z.minimum(1), z.maximum(MAX_IMAGES))),
  mode: z._default(z.enum(generationModes), 'grid'),
  /** Set by a batch: its budget pays for the run's image calls. */
  budget: z.optional(z.object({ batchId: z.string().check(z.minLength(1)), usd: z.number().check(z.positive()) })),
  /** Set by a batch in batch mode: the images were drawn by OpenAI's Batch API; the run calls no image endpoint. */
  imageApi: z.optional(z.enum(['sync', 'batch'])),
  /** Set by a batch: its id, on every log line of the run. */
  batchId: z.optional(z.string().check(z.minLength(1))),
});

/** A run as asked for: `images` stays unset when not given, for the deployment's default to fill. */
export type RunRequest = { persona: Persona; images?: number; mode: GenerationMode; budget?: BatchBudget; imageApi?: 'sync' | 'batch'; batchId?: string };

function firstIssue(error: z.core.$ZodError, prefix: string): InvalidPersona {
  const issue = error.issues[0]!;
  const field = [prefix, ...issue.path.map(String)].filter(Boolean).join('.') || '(root)';
  // A field left out is "required", not a type mismatch with undefined.
  const missing = issue.code === 'invalid_type' && / received undefined$/.test(issue.message);
  return new InvalidPersona(field, missing ? 'required' : issue.message);
}

/** Parses a persona, throwing InvalidPersona that names the first wrong field. */
export function parsePersona(value: unknown, fieldPrefix = ''): Persona {
  const parsed = personaSchema.safeParse(value);
  if (!parsed.success) throw firstIssue(parsed.error, fieldPrefix);
  return parsed.data;
}

/** Parses an execution input `{ persona, images?, mode? }`. */
export function parseRunRequest(value: unknown): RunRequest {
  // A bare persona asks for a run with the defaults: the console, an upload and the CLI take either.
  const request = value && typeof value === 'object' && !Array.isArray(value) && !('persona' in value) ? { persona: value } : value;
  const parsed = runRequestSchema.safeParse(request);
  if (!parsed.success) throw firstIssue(parsed.error, '');
  const { images, mode, budget, imageApi, batchId } = parsed.data;
  return {
    persona: parsePersona(parsed.data.persona, 'persona'),
    ...(images !== undefined ? { images } : {}),
    mode,
    ...(budget ? { budget } : {}),
    ...(imageApi ? { imageApi } : {}),
    ...(batchId ? { batchId } : {}),
  };
}

/** The first bio the persona has, preferring Facebook's as the seed service did. */
export function primaryBio(persona: Persona): string {
  return persona.bio_facebook || persona.bio_instagram || persona.bio_x || persona.bio_tiktok || '';
}
