/**
 * The name of a run request's execution: derived from the request alone, so every way of starting
 * it (an upload, `avatars start`, a batch) agrees, and a request already run is recognised.
 */
import { createHash } from 'node:crypto';
import type { RunRequest } from './persona.ts';

/** Step Functions allows 80 characters; these are also safe in keys, logs and URLs. */
export const EXECUTION_NAME_PATTERN = /^[A-Za-z0-9_-]{1,80}$/;
const HASH_LENGTH = 16;
/** Room for an attempt's suffix ("-9") within the 80 characters Step Functions allows. */
const ATTEMPT_SUFFIX = 2;

/** JSON with sorted keys: the same persona hashes the same whatever order its fields came in. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value).filter(([, v]) => v !== undefined);
    return `{${entries
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`)
      .join(',')}}`;
  }
  return JSON.stringify(value);
}

/**
 * `{personaId}-{hash of the request}`: the same request always gets the same, valid name. The
 * request is hashed as asked (no deployment default filled in), so every way of starting it agrees.
 */
export function executionName(request: RunRequest): string {
  // What is asked, only: who pays (a batch's budget), how it is drawn and who started it do not make another run.
  const asked = { persona: request.persona, images: request.images, mode: request.mode };
  const hash = createHash('sha256').update(canonical(asked)).digest('hex').slice(0, HASH_LENGTH);
  const id = request.persona.id.replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 80 - HASH_LENGTH - 1 - ATTEMPT_SUFFIX);
  return `${id}-${hash}`;
}


/** Attempts of one request: `name`, then `name-2` … up to this. */
export const MAX_ATTEMPTS = 9;

/** The name of attempt `n` of a request named `name`. */
export const attemptName = (name: string, n: number) => (n === 1 ? name : `${name}-${n}`);

/** The names of the attempts of the request named `name` before `attempt` (all of them when it is none). */
export function attemptsBefore(name: string, attempt: string): string[] {
  const earlier: string[] = [];
  for (let n = 1; n <= MAX_ATTEMPTS && attemptName(name, n) !== attempt; n++) earlier.push(attemptName(name, n));
  return earlier;
}

/** A hash of a JSON Lines file's content, fed line by line; blank lines do not count. */
export function contentHash(): { add(line: string): void; hex(): string } {
  const hash = createHash('sha256');
  return {
    add: (line) => {
      const text = line.replace(/^\uFEFF/, '').trim();
      if (text) hash.update(text).update('\n');
    },
    hex: () => hash.digest('hex').slice(0, HASH_LENGTH),
  };
}

/** A batch's name: its file's name and content, so the same file is the same batch wherever it starts. */
export function batchName(fileStem: string, hashHex: string): string {
  const stem = fileStem.replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 80 - HASH_LENGTH - 1 - ATTEMPT_SUFFIX) || 'batch';
  return `${stem}-${hashHex}`;
}
