/** What the commands share: reading input files, describing progress, printing results. */
import { readFile } from 'node:fs/promises';
import type { PublishResult } from '../../lambdas/publish/core.ts';
import { InvalidPersona } from '../../lambdas/shared/errors.ts';
import { parseRunRequest, type RunRequest } from '../../lambdas/shared/persona.ts';
import { lookLine } from '../../lambdas/shared/persona-look.ts';
import { describeProblem, parsePersonaFile, personaFileKind, type Problem } from '../../lambdas/shared/run-input.ts';
import type { ProgressEvent } from '../runner.ts';

import { UsageError } from '../usage-error.ts';

export { UsageError };

/** A persona file whose personas are not valid: what is wrong, where. */
export class InvalidInput extends UsageError {
  readonly problems: Problem[];
  constructor(path: string, problems: Problem[]) {
    super(`${path}: ${problems.map(describeProblem).join('; ')}`);
    this.problems = problems;
  }
}

async function readText(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (error) {
    throw new UsageError(`cannot read ${what} ${path}: ${(error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (error as Error).message}`);
  }
}

export async function readJsonFile(path: string, what: string): Promise<unknown> {
  const text = await readText(path, what);
  try {
    // Editors on Windows save JSON with a byte-order mark, which JSON.parse refuses.
    return JSON.parse(text.replace(/^\uFEFF/, ''));
  } catch (error) {
    throw new UsageError(`${what} ${path} is not valid JSON: ${(error as Error).message}`);
  }
}

/**
 * The one run a persona file asks for (a persona or an execution input, read as uploads are),
 * with the flags over it. Checked here, before anything starts or is spent.
 */
export async function readRunInput(personaFile: string, flags: { images?: number; mode?: string }): Promise<RunRequest> {
  const { requests, problems } = parsePersonaFile(personaFile, await readText(personaFile, 'persona file'));
  if (problems.length > 0) throw new InvalidInput(personaFile, problems);
  if (requests.length > 1) {
    const batch = personaFileKind(personaFile) === 'jsonl' ? `avatars batch ${personaFile} runs them all as a batch` : 'a .jsonl file, one per line, runs them all with avatars batch';
    throw new UsageError(`${personaFile} holds ${requests.length} personas: avatars run takes one; ${batch} (or put the file under personas/: avatars dev, or S3 on AWS)`);
  }
  const asked = { ...requests[0], ...(flags.images !== undefined ? { images: flags.images } : {}), ...(flags.mode !== undefined ? { mode: flags.mode } : {}) };
  try {
    // The flags go through the same checks as the file (an --images of 0 is refused).
    return parseRunRequest(asked);
  } catch (error) {
    if (error instanceof InvalidPersona) throw new InvalidInput(personaFile, [{ field: error.field, message: error.message }]);
    throw error;
  }
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
    ...output.images.map((image) => {
      const identity = image.identity ? `  ${image.identity.pass ? '✓' : '✗'} ${image.identity.similarity ?? image.identity.reason}` : '';
      return `  ${image.key}  ${image.width}x${image.height}  ${image.model}${identity}  ${image.url}`;
    }),
    ...(output.look ? [`  base: ${lookLine(output.look)}`] : []),
    `  manifest: ${output.manifestKey}`,
    ...(output.warnings ?? []).map((w) => `  ⚠ ${w}`),
    '',
  ].join('\n');
}
