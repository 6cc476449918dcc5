import { join, resolve } from 'node:path';
import { checkImageSettings } from '../../lambdas/shared/models.ts';
import { startLocalEnvironment } from '../environment.ts';
import { describeFiredFault, parseFaults } from '../faults.ts';
import { saveGrids, saveOutputs } from '../outputs.ts';
import { runLocally } from '../runner.ts';
import type { RunRequest } from '../../lambdas/shared/persona.ts';
import { describeProblem } from '../../lambdas/shared/run-input.ts';
import { describe, InvalidInput, readRunInput, resultLines } from './common.ts';

export interface RunFlags {
  images?: number;
  mode?: string;
  out?: string;
  json?: boolean;
  fault: string[];
  latency: number;
  rpm?: number;
  data: string;
  retryDelay: number;
  verbose?: boolean;
  quiet?: boolean;
  keepGrids?: boolean;
}

export async function runCommand(personaFile: string, flags: RunFlags): Promise<number> {
  let input: RunRequest;
  try {
    input = await readRunInput(personaFile, flags);
  } catch (error) {
    if (!(error instanceof InvalidInput)) throw error;
    // As a run of the workflow would end: the error's name and what is wrong, exit 1, nothing spent.
    process.stderr.write(`✗ ${personaFile}: InvalidPersona: ${error.problems.map(describeProblem).join('; ')}\n`);
    return 1;
  }
  const faults = parseFaults(flags.fault);
  const log = (line: string) => {
    if (!flags.quiet) process.stderr.write(`${line}\n`);
  };
  const env = await startLocalEnvironment({
    dataDir: flags.data,
    faults,
    onFault: (fired) => log(describeFiredFault(fired)),
    latencyMs: flags.latency,
    ...(flags.rpm ? { imagesPerMinute: flags.rpm } : {}),
    logLevel: flags.verbose ? 'INFO' : 'SILENT',
  });
  try {
    const { settings } = env.deps;
    log(`persona-avatars: S3 ${env.s3 === 'embedded' ? `embedded (${join(flags.data, 's3')})` : env.s3}, images ${env.images === 'offline' ? 'offline backend' : 'OpenAI'}, ${settings.imageModel} ${settings.imageSize} ${settings.imageQuality}`);
    for (const warning of [...env.notes, ...checkImageSettings(settings).warnings]) log(`⚠ ${warning}`);
    const outcome = await runLocally({ input, deps: env.deps, retryDelayMs: flags.retryDelay, onProgress: (event) => log(describe(event)) });
    if (outcome.status !== 'SUCCEEDED') {
      if (flags.json) process.stdout.write(`${JSON.stringify({ status: outcome.status, runId: outcome.runId, error: outcome.error, cause: outcome.cause }, null, 2)}\n`);
      process.stderr.write(`\n✗ run ${outcome.runId} failed: ${outcome.error}: ${outcome.cause}\n`);
      return 1;
    }
    const outDir = resolve(flags.out ?? join('out', outcome.output.personaId));
    const files = await saveOutputs(env.deps.store, outcome.output, outDir);
    const grids = flags.keepGrids ? await saveGrids(env.deps.store, outcome.output, join(outDir, 'grids')) : [];
    if (flags.json) {
      process.stdout.write(`${JSON.stringify({ status: outcome.status, ms: outcome.ms, outDir, files, ...(flags.keepGrids ? { grids } : {}), ...outcome.output }, null, 2)}\n`);
    } else {
      process.stdout.write(resultLines(outcome.output, `in ${(outcome.ms / 1000).toFixed(1)} s (run ${outcome.runId})`));
      if (grids.length > 0) process.stdout.write(`  grids: ${grids.join(' ')} (try: avatars split ${join(outDir, 'grids', '*.png')} --out tiles/)\n`);
      process.stdout.write(`  open ${join(outDir, 'index.html')} (contact sheet: ${join(outDir, 'contact-sheet.png')})\n\n`);
    }
    return 0;
  } finally {
    await env.close();
  }
}
