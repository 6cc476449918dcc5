#!/usr/bin/env node
/**
 * `avatars`: run the workflow locally, replay one stage on an event fixture, split grids.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { basename, extname, join, resolve } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { stageNames, stages, type StageName } from '../lambdas/stages.ts';
import type { StageDeps } from '../lambdas/shared/stage.ts';
import { splitGrid } from '../lambdas/split-grid/split.ts';
import { startLocalEnvironment, type LocalEnvironment } from './environment.ts';
import { writeContactSheet, writeGallery } from './gallery.ts';
import { parseFaults } from './offline-openai.ts';
import { runLocally, type ProgressEvent, type RunOutcome } from './runner.ts';

class UsageError extends Error {}

const int = (name: string) => (value: string) => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`${name} must be a whole number`);
  return n;
};

async function readJsonFile(path: string, what: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new UsageError(`cannot read ${what} ${path}: ${(error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (error as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new UsageError(`${what} ${path} is not valid JSON: ${(error as Error).message}`);
  }
}

function describe(event: ProgressEvent): string | undefined {
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

interface RunFlags {
  images?: number;
  mode?: string;
  out?: string;
  json?: boolean;
  fault: string[];
  latency: number;
  data: string;
  retryDelay: number;
  verbose?: boolean;
  quiet?: boolean;
}

async function saveOutputs(env: LocalEnvironment, outcome: Extract<RunOutcome, { status: 'SUCCEEDED' }>, outDir: string): Promise<string[]> {
  await mkdir(outDir, { recursive: true });
  const { store } = env.deps;
  const files = await Promise.all(
    outcome.output.images.map(async (image) => {
      const file = basename(image.key);
      await writeFile(join(outDir, file), await store.getBytes(image.key));
      return file;
    }),
  );
  const manifest = JSON.parse(await store.getText(outcome.output.manifestKey)) as { prompt: { text: string } };
  await writeFile(join(outDir, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
  await writeContactSheet(files.map((f) => join(outDir, f)), join(outDir, 'contact-sheet.png'));
  await writeGallery(outDir, outcome.output, files, manifest.prompt.text);
  return files;
}

async function runCommand(personaFile: string, flags: RunFlags): Promise<number> {
  const loaded = (await readJsonFile(personaFile, 'persona file')) as Record<string, unknown>;
  // A bare persona, or an execution input `{ persona, images, mode }` as the console takes it.
  const input: Record<string, unknown> = loaded && typeof loaded === 'object' && 'persona' in loaded ? { ...loaded } : { persona: loaded };
  if (flags.images !== undefined) input.images = flags.images;
  if (flags.mode !== undefined) input.mode = flags.mode;
  const faults = parseFaults(flags.fault);
  const log = (line: string) => {
    if (!flags.quiet) process.stderr.write(`${line}\n`);
  };
  const env = await startLocalEnvironment({ dataDir: flags.data, faults, latencyMs: flags.latency, logLevel: flags.verbose ? 'INFO' : 'SILENT' });
  try {
    log(`persona-avatars: S3 ${env.s3 === 'embedded' ? `embedded (${join(flags.data, 's3')})` : env.s3}, images ${env.images === 'offline' ? 'offline backend' : 'OpenAI'}`);
    const outcome = await runLocally({
      input,
      deps: env.deps,
      retryDelayMs: flags.retryDelay,
      onProgress: (event) => {
        const line = describe(event);
        if (line) log(line);
      },
    });
    if (outcome.status === 'FAILED') {
      if (flags.json) process.stdout.write(`${JSON.stringify({ status: outcome.status, runId: outcome.runId, error: outcome.error, cause: outcome.cause }, null, 2)}\n`);
      process.stderr.write(`\n✗ run ${outcome.runId} failed: ${outcome.error}: ${outcome.cause}\n`);
      return 1;
    }
    const personaId = outcome.output.personaId;
    const outDir = resolve(flags.out ?? join('out', personaId));
    const files = await saveOutputs(env, outcome, outDir);
    if (flags.json) {
      process.stdout.write(`${JSON.stringify({ status: outcome.status, ms: outcome.ms, outDir, files, ...outcome.output }, null, 2)}\n`);
    } else {
      const cost = outcome.output.estimatedCostUsd;
      process.stdout.write(
        [
          '',
          `✓ ${outcome.output.images.length} avatars for ${personaId} in ${(outcome.ms / 1000).toFixed(1)} s (run ${outcome.runId}), estimated cost ${cost === null ? 'unknown' : `$${cost.toFixed(4)}`}`,
          ...outcome.output.images.map((image) => `  ${image.key}  ${image.width}x${image.height}  ${image.url}`),
          `  manifest: ${outcome.output.manifestKey}`,
          `  open ${join(outDir, 'index.html')} (contact sheet: ${join(outDir, 'contact-sheet.png')})`,
          '',
        ].join('\n'),
      );
    }
    return 0;
  } finally {
    await env.close();
  }
}

async function invokeCommand(stage: string, flags: { event: string; data: string; fault: string[] }): Promise<number> {
  if (!stageNames.includes(stage as StageName)) throw new UsageError(`unknown stage "${stage}": one of ${stageNames.join(', ')}`);
  const event = await readJsonFile(flags.event, 'event file');
  const env = await startLocalEnvironment({ dataDir: flags.data, faults: parseFaults(flags.fault) });
  try {
    const core = stages[stage as StageName] as (e: unknown, d: StageDeps) => Promise<unknown>;
    const result = await core(event, env.deps);
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    return 0;
  } catch (error) {
    process.stderr.write(`✗ ${stage} failed: ${(error as Error).name}: ${(error as Error).message}\n`);
    return 1;
  } finally {
    await env.close();
  }
}

async function splitCommand(grids: string[], flags: { out: string; rows: number; cols: number; format: 'png' | 'webp' | 'jpeg' }): Promise<number> {
  let failed = 0;
  for (const grid of grids) {
    const name = basename(grid, extname(grid));
    try {
      const tiles = await splitGrid(await readFile(grid), flags.rows, flags.cols, flags.format, grid);
      const dir = join(flags.out, name);
      await mkdir(dir, { recursive: true });
      const ext = flags.format === 'jpeg' ? 'jpg' : flags.format;
      await Promise.all(tiles.map((tile, i) => writeFile(join(dir, `img_${i}.${ext}`), tile.data)));
      process.stdout.write(`${grid}: ${tiles.map((t, i) => `img_${i} ${t.box.width}x${t.box.height}+${t.box.left}+${t.box.top}`).join(', ')}\n`);
    } catch (error) {
      failed++;
      const code = (error as NodeJS.ErrnoException).code;
      process.stderr.write(`✗ ${grid}: ${code === 'ENOENT' ? 'no such file' : `${(error as Error).name}: ${(error as Error).message}`}\n`);
    }
  }
  return failed === 0 ? 0 : 1;
}

export function program(): Command {
  const cli = new Command('avatars').description('persona-avatars: persona in, consistent avatar photos out').showHelpAfterError();
  const dataOption = new Option('--data <dir>', 'where the embedded S3 keeps its data').default('.avatars');
  const faultOption = new Option('--fault <spec...>', 'offline backend fault, e.g. rate-limit:2, policy:always@generations, hang:1, server-error, layout, model-gone').default([]);
  cli
    .command('run')
    .description('run the whole workflow locally for one persona and save the avatars')
    .argument('<persona.json>', 'a persona, or an execution input { "persona": …, "images": 8 }')
    .option('--images <n>', 'how many avatars (4 per grid)', int('--images'))
    .addOption(new Option('--mode <mode>', 'grid: 2x2 grids split apart; separate: one image per call').choices(['grid', 'separate']))
    .option('--out <dir>', 'where to save the images, contact sheet and index.html (default: out/<persona id>)')
    .option('--json', 'print the result as JSON')
    .addOption(faultOption)
    .option('--latency <ms>', 'offline backend: delay per image call', int('--latency'), 0)
    .addOption(dataOption)
    .option('--retry-delay <ms>', 'pause before each retry instead of the deployed backoff', int('--retry-delay'), 0)
    .option('--verbose', 'print the stages\u2019 JSON logs')
    .option('--quiet', 'no progress lines')
    .action(async (file: string, flags: RunFlags) => {
      process.exitCode = await runCommand(file, flags);
    });
  cli
    .command('invoke')
    .description('run one stage on an event fixture, as `sam local invoke -e` does')
    .argument('<stage>', stageNames.join(' | '))
    .requiredOption('--event <file>', 'the event JSON, e.g. events/generate-base.json')
    .addOption(dataOption)
    .addOption(faultOption)
    .action(async (stage: string, flags: { event: string; data: string; fault: string[] }) => {
      process.exitCode = await invokeCommand(stage, flags);
    });
  cli
    .command('split')
    .description('split grid images into DIR/<grid name>/img_<i>.png, row-major')
    .argument('<grid...>', 'grid image files')
    .requiredOption('--out <dir>', 'output folder')
    .option('--rows <n>', 'rows in each grid', int('--rows'), 2)
    .option('--cols <n>', 'columns in each grid', int('--cols'), 2)
    .addOption(new Option('--format <format>', 'tile format').choices(['png', 'webp', 'jpeg']).default('png'))
    .action(async (grids: string[], flags: { out: string; rows: number; cols: number; format: 'png' | 'webp' | 'jpeg' }) => {
      process.exitCode = await splitCommand(grids, flags);
    });
  return cli;
}

if (import.meta.main) {
  program()
    .parseAsync()
    .catch((error: Error) => {
      process.stderr.write(`avatars: ${error instanceof UsageError ? error.message : (error.stack ?? error.message)}\n`);
      process.exitCode = 2;
    });
}
