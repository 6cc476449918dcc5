/**
 * One reader of persona files for every entry point (avatars run and start, the upload trigger,
 * the console's input through plan-run): a persona or an execution input per `.json` file, many
 * in a `.json` array or one per line of a `.jsonl` file; any case of suffix; a byte-order mark;
 * a persona without an id takes one from the file name, and a problem with it says so.
 */
import { basename } from 'node:path';
import { InvalidPersona } from './errors.ts';
import { parseRunRequest, type RunRequest } from './persona.ts';

export interface Problem {
  /** JSON Lines files: the line, from 1; JSON arrays: the item, from 1. */
  line?: number;
  item?: number;
  field: string;
  message: string;
}

export type PersonaFileKind = 'json' | 'jsonl';

/** `.json` or `.jsonl`, whatever the case of the suffix; undefined for anything else. */
export function personaFileKind(name: string): PersonaFileKind | undefined {
  const match = /\.(jsonl?)$/i.exec(name);
  return match ? (match[1]!.toLowerCase() as PersonaFileKind) : undefined;
}

/** An id from a file name: `Ada Lovelace.json` → `Ada-Lovelace`. */
export function idFromFileName(name: string): string {
  return basename(name)
    .replace(/\.jsonl?$/i, '')
    .replace(/[^A-Za-z0-9_-]+/g, '-')
    .replace(/^[-_]+|-+$/g, '')
    .slice(0, 64);
}

function problemOf(error: unknown, at: Pick<Problem, 'line' | 'item'>, idFrom: string | undefined): Problem {
  if (error instanceof InvalidPersona) {
    const fromName = idFrom !== undefined && error.field === 'persona.id' ? ` (the id "${idFrom}" was taken from the file name: add an "id" to the persona)` : '';
    return { ...at, field: error.field, message: `${error.reason}${fromName}` };
  }
  if (error instanceof SyntaxError) {
    // JSON.parse counts lines within the text it was given: on a line of a JSON Lines file, only the column means anything.
    const message = at.line === undefined ? error.message : error.message.replace(/ in JSON at position (\d+)(?: \(line \d+ column \d+\))?/, (_all, position: string) => ` at column ${Number(position) + 1}`);
    return { ...at, field: '(json)', message: `not valid JSON: ${message}` };
  }
  throw error;
}

const BOM = /^\uFEFF/;

/** An execution input as given, or a bare persona made one (a copy: the file's value stays as read). */
function asRequest(value: unknown): { persona: unknown } {
  return value && typeof value === 'object' && 'persona' in value ? { ...(value as { persona: unknown }) } : { persona: value };
}

export type PersonaLine = { line: number; request: RunRequest } | { line: number; problem: Problem };

/** One line of a JSON Lines file (from 1): a run request, what is wrong with it, or nothing if blank. */
export function parsePersonaLine(text: string, line: number): PersonaLine | undefined {
  if (!text.trim()) return undefined;
  try {
    return { line, request: parseRunRequest(asRequest(JSON.parse(text))) };
  } catch (error) {
    return { line, problem: problemOf(error, { line }, undefined) };
  }
}

/**
 * A JSON Lines file read as it arrives: memory holds one line at a time, so a file of any
 * length is checked in the same space.
 */
export async function* readPersonaLines(lines: AsyncIterable<string> | Iterable<string>): AsyncGenerator<PersonaLine> {
  let n = 0;
  for await (const text of lines) {
    n++;
    const parsed = parsePersonaLine(n === 1 ? text.replace(BOM, '') : text, n);
    if (parsed) yield parsed;
  }
}

/** A persona file's run requests, and what is wrong with the rest. */
export function parsePersonaFile(name: string, text: string): { requests: RunRequest[]; problems: Problem[] } {
  const requests: RunRequest[] = [];
  const problems: Problem[] = [];
  const kind = personaFileKind(name) ?? 'json';
  const fileId = kind === 'json' ? idFromFileName(name) : undefined;
  const read = (value: unknown, at: Pick<Problem, 'line' | 'item'>, withFileId: boolean) => {
    let idFrom: string | undefined;
    try {
      const request = asRequest(value);
      if (withFileId && fileId !== undefined && request.persona && typeof request.persona === 'object' && !Array.isArray(request.persona) && !('id' in request.persona)) {
        idFrom = fileId;
        request.persona = { id: fileId, ...request.persona };
      }
      requests.push(parseRunRequest(request));
    } catch (error) {
      problems.push(problemOf(error, at, idFrom));
    }
  };
  // Editors on Windows save JSON with a byte-order mark, which JSON.parse refuses.
  const body = text.replace(BOM, '');
  if (kind === 'jsonl') {
    body.split(/\r?\n/).forEach((line, i) => {
      const parsed = parsePersonaLine(line, i + 1);
      if (parsed && 'request' in parsed) requests.push(parsed.request);
      else if (parsed) problems.push(parsed.problem);
    });
  } else {
    let value: unknown;
    try {
      value = JSON.parse(body);
    } catch (error) {
      problems.push(problemOf(error, {}, undefined));
      return { requests, problems };
    }
    if (Array.isArray(value)) value.forEach((v, i) => read(v, { item: i + 1 }, false));
    else read(value, {}, true);
  }
  if (requests.length === 0 && problems.length === 0) problems.push({ field: '(file)', message: 'no personas in the file: write one persona, or one per line in a .jsonl file' });
  return { requests, problems };
}

/** Where a problem is, for a person: "line 3: …", "item 2: …". */
export function describeProblem(p: Problem): string {
  const where = p.line !== undefined ? `line ${p.line}: ` : p.item !== undefined ? `item ${p.item}: ` : '';
  return `${where}${problemText(p)}`;
}

/** What is wrong, without where: the field (not for a whole line or file) and why. */
export function problemText(p: Problem): string {
  return p.field.startsWith('(') ? p.message : `${p.field}: ${p.message}`;
}
