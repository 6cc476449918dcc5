/**
 * A batch's JSON Lines file as `avatars batch` and `avatars start` send it: read as it streams,
 * each valid line with the command's --images and --mode applied, every line kept in its place
 * (the report's line numbers are the file's), and the batch's name from what will run.
 */
import { createReadStream } from 'node:fs';
import { basename } from 'node:path';
import { createInterface } from 'node:readline';
import { triageLines } from '../lambdas/plan-batch/core.ts';
import type { RunRequest } from '../lambdas/shared/persona.ts';
import type { ObjectStore } from '../lambdas/shared/store.ts';
import { idFromFileName, parsePersonaLine, personaFileKind, type Problem } from '../lambdas/shared/run-input.ts';
import { batchName, contentHash } from '../lambdas/shared/run-name.ts';
import { UsageError } from './commands/common.ts';

export interface BatchFile {
  /** The batch's name: the file's and its content's. */
  name: string;
  /** The JSON Lines to store, one per line of the file. */
  body: string;
  personas: number;
  problems: Problem[];
}

export async function readBatchFile(path: string, flags: { images?: number; mode?: string }): Promise<BatchFile> {
  if (personaFileKind(path) === 'json') throw new UsageError(`${path} is a .json file, one persona: avatars run ${path} runs it; avatars batch takes a .jsonl file, one persona per line`);
  const hash = contentHash();
  const lines: string[] = [];
  const problems: Problem[] = [];
  let personas = 0;
  let n = 0;
  const input = createReadStream(path, 'utf8');
  const opened = new Promise<void>((resolve, reject) => {
    input.once('open', () => resolve());
    input.once('error', (error: NodeJS.ErrnoException) => reject(new UsageError(`cannot read batch file ${path}: ${error.code === 'ENOENT' ? 'no such file' : error.message}`)));
  });
  await opened;
  for await (const raw of createInterface({ input, crlfDelay: Infinity })) {
    n++;
    const text = n === 1 ? raw.replace(/^\uFEFF/, '') : raw;
    const parsed = parsePersonaLine(text, n);
    let line = text;
    if (parsed && 'request' in parsed) {
      personas++;
      // Unchanged without flags: the same file gets the same name as its upload would.
      if (flags.images !== undefined || flags.mode !== undefined) {
        const request: RunRequest = { ...parsed.request, ...(flags.images !== undefined ? { images: flags.images } : {}), ...(flags.mode !== undefined ? { mode: flags.mode as RunRequest['mode'] } : {}) };
        line = JSON.stringify(request);
      }
    } else if (parsed) {
      problems.push(parsed.problem);
    }
    hash.add(line);
    lines.push(line);
  }
  return { name: batchName(idFromFileName(basename(path)), hash.hex()), body: `${lines.join('\n')}\n`, personas, problems };
}

/**
 * What to say when no line of the batch is left to run (every persona published under the same
 * request), so no batch is started; undefined when something runs. A new batch answers after its
 * first few lookups: only a batch that is all done is looked up whole, here and not again.
 */
export async function nothingToRun(file: string, batch: BatchFile, store: ObjectStore): Promise<string | undefined> {
  const { toRun, skipped } = await triageLines(batch.body.split('\n'), { store }, { untilOneRuns: true });
  if (toRun.length > 0) return undefined;
  const published = skipped.filter((s) => s.manifestKey).length;
  const rest = published < batch.personas ? ', the rest skipped (duplicate ids, or every attempt failed)' : '';
  return `${batch.problems.length === 0 ? '✓' : '✗'} ${file}: nothing to run: ${published} of ${batch.personas} personas already published with the same request${rest}; no batch started`;
}

