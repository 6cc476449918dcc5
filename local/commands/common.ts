/** What the commands share: reading input files, describing progress, printing results. */
import { readFile } from 'node:fs/promises';
import type { PublishResult } from '../../lambdas/publish/core.ts';
import type { ProgressEvent } from '../runner.ts';

/** A mistake of the user's: printed without a stack, exit code 2. */
export class UsageError extends Error {}

export async function readJsonFile(path: string, what: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new UsageError(`cannot read ${what} ${path}: ${(error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (error as Error).message}`);
  }
  try {
    // Editors on Windows save JSON with a byte-order mark, which JSON.parse refuses.
    return JSON.parse(text.replace(/^\uFEFF/, ''));
  } catch (error) {
    throw new UsageError(`${what} ${path} is not valid JSON: ${(error as Error).message}`);
  }
}

/** A bare persona, or an execution input `{ persona, images, mode }` as the console takes it. */
export async function readRunInput(personaFile: string, flags: { images?: number; mode?: string }): Promise<Record<string, unknown>> {
  const loaded = (await readJsonFile(personaFile, 'persona file')) as Record<string, unknown>;
  const input: Record<string, unknown> = loaded && typeof loaded === 'object' && 'persona' in loaded ? { ...loaded } : { persona: loaded };
  if (flags.images !== undefined) input.images = flags.images;
  if (flags.mode !== undefined) input.mode = flags.mode;
  return input;
}

export function describe(event: ProgressEvent): string {
  const where = event.index !== undefined ? ` [grid ${event.index}]` : '';
  switch (event.kind) {
    case 'entered':
      return `  → ${event.state}${where}`;
    case 'exited':
      return `  ✓ ${event.state}${where} ${event.ms} ms`;
    case 'failed':
      return `  ✗ ${event.state}${where} ${event.error}: ${event.cause}`;
    case 'retried':
      return `  ↻ ${event.state}${where} retry ${event.attempt}`;
    case 'caught':
      return `  ⤷ ${event.state}${where} caught`;
  }
}

/** What a successful run published, for a person to read. */
export function resultLines(output: PublishResult, headline: string): string {
  const cost = output.estimatedCostUsd;
  return [
    '',
    `✓ ${output.images.length} avatars for ${output.personaId} ${headline}, estimated cost ${cost === null ? 'unknown' : `$${cost.toFixed(4)}`}`,
    ...output.images.map((image) => `  ${image.key}  ${image.width}x${image.height}  ${image.model}  ${image.url}`),
    `  manifest: ${output.manifestKey}`,
    ...(output.warnings ?? []).map((w) => `  ⚠ ${w}`),
    '',
  ].join('\n');
}
