#!/usr/bin/env node
/**
 * `avatars`: run the workflow locally, replay one stage on an event fixture, split grids.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { basename, extname, join, resolve } from 'node:path';
import { ExecutionAlreadyExists, StartExecutionCommand, type SFNClient } from '@aws-sdk/client-sfn';
import { Argument, Command, InvalidArgumentError, Option } from 'commander';
import { stageNames, stages, type StageName } from '../lambdas/stages.ts';
import { customSfnEndpoint, sfnClientFromEnv } from '../lambdas/shared/clients.ts';
import { InvalidPersona } from '../lambdas/shared/errors.ts';
import { parseRunRequest, type RunRequest } from '../lambdas/shared/persona.ts';
import { settingsFromEnv } from '../lambdas/shared/settings.ts';
import type { StageDeps } from '../lambdas/shared/stage.ts';
import type { PublishResult } from '../lambdas/publish/core.ts';
import { splitGrid } from '../lambdas/split-grid/split.ts';
import { executionArn as executionArnOf, executionName, startFromUpload, type S3Notification } from '../lambdas/start-from-upload/core.ts';
import { startLocalEnvironment, type LocalEnvironment } from './environment.ts';
import { isRunning } from './step-functions-api.ts';
import { consoleUrl, followExecution } from './follow.ts';
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

/** A bare persona, or an execution input `{ persona, images, mode }` as the console takes it. */
async function readRunInput(personaFile: string, flags: { images?: number; mode?: string }): Promise<Record<string, unknown>> {
  const loaded = (await readJsonFile(personaFile, 'persona file')) as Record<string, unknown>;
  const input: Record<string, unknown> = loaded && typeof loaded === 'object' && 'persona' in loaded ? { ...loaded } : { persona: loaded };
  if (flags.images !== undefined) input.images = flags.images;
  if (flags.mode !== undefined) input.mode = flags.mode;
  return input;
}

/** What a successful run published, for a person to read. */
function resultLines(output: PublishResult, headline: string): string {
  const cost = output.estimatedCostUsd;
  return [
    '',
    `✓ ${output.images.length} avatars for ${output.personaId} ${headline}, estimated cost ${cost === null ? 'unknown' : `$${cost.toFixed(4)}`}`,
    ...output.images.map((image) => `  ${image.key}  ${image.width}x${image.height}  ${image.url}`),
    `  manifest: ${output.manifestKey}`,
    '',
  ].join('\n');
}

async function runCommand(personaFile: string, flags: RunFlags): Promise<number> {
  const input = await readRunInput(personaFile, flags);
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
      process.stdout.write(resultLines(outcome.output, `in ${(outcome.ms / 1000).toFixed(1)} s (run ${outcome.runId})`));
      process.stdout.write(`  open ${join(outDir, 'index.html')} (contact sheet: ${join(outDir, 'contact-sheet.png')})\n\n`);
    }
    return 0;
  } finally {
    await env.close();
  }
}

interface InvokeFlags {
  event: string;
  data: string;
  fault: string[];
  put: string[];
}

/** `key=file` pairs for --put. */
function parsePuts(specs: string[]): { key: string; file: string }[] {
  return specs.map((spec) => {
    const at = spec.indexOf('=');
    if (at < 1 || at === spec.length - 1) throw new UsageError(`--put ${spec}: use KEY=FILE, e.g. personas/ada-lovelace.json=events/persona.json`);
    return { key: spec.slice(0, at), file: spec.slice(at + 1) };
  });
}

async function invokeCommand(stage: string, flags: InvokeFlags): Promise<number> {
  if (!stageNames.includes(stage as StageName)) throw new UsageError(`unknown stage "${stage}": one of ${stageNames.join(', ')}`);
  const event = await readJsonFile(flags.event, 'event file');
  const puts = await Promise.all(
    parsePuts(flags.put).map(async ({ key, file }) => ({ key, body: await readFile(file).catch(() => Promise.reject(new UsageError(`--put: cannot read ${file}`))) })),
  );
  const env = await startLocalEnvironment({
    dataDir: flags.data,
    faults: parseFaults(flags.fault),
    // Executions the upload trigger starts run here, unless STATE_MACHINE_ARN names a deployed one.
    stepFunctions: {
      onEnd: (execution) => {
        const outcome = execution.outcome!;
        const detail = outcome.status === 'SUCCEEDED' ? `${outcome.output.images.length} avatars, manifest ${outcome.output.manifestKey}` : `${outcome.error}: ${outcome.cause}`;
        process.stderr.write(`execution ${execution.name}: ${outcome.status}, ${detail}\n`);
      },
    },
  });
  try {
    for (const { key, body } of puts) await env.deps.store.put(key, body, key.endsWith('.json') ? 'application/json' : 'application/octet-stream');
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

interface FollowFlags {
  pollInterval: number;
  json?: boolean;
}

/** Prints an execution's states until it ends; 0 when it succeeded. */
async function followAndReport(sfn: SFNClient, executionArn: string, flags: FollowFlags): Promise<number> {
  const end = await followExecution({
    sfn,
    executionArn,
    pollMs: flags.pollInterval,
    onProgress: (event) => {
      const line = describe(event);
      if (line) process.stderr.write(`${line}\n`);
    },
  });
  if (flags.json) process.stdout.write(`${JSON.stringify({ executionArn, ...end }, null, 2)}\n`);
  if (end.status !== 'SUCCEEDED') {
    process.stderr.write(`\n✗ execution ${executionArn} ${end.status}: ${end.error}: ${end.cause}\n`);
    return 1;
  }
  if (!flags.json) process.stdout.write(resultLines(end.output as PublishResult, `(execution ${executionArn.split(':').at(-1)})`));
  return 0;
}

interface StartFlags extends FollowFlags {
  images?: number;
  mode?: string;
  stateMachineArn?: string;
  name?: string;
  wait?: boolean;
}

async function startCommand(personaFile: string, flags: StartFlags): Promise<number> {
  const input = await readRunInput(personaFile, flags);
  let request: RunRequest;
  try {
    request = parseRunRequest(input, settingsFromEnv().defaultImages);
  } catch (error) {
    if (error instanceof InvalidPersona) throw new UsageError(`${personaFile}: ${error.message}`);
    throw error;
  }
  const stateMachineArn = flags.stateMachineArn ?? process.env.STATE_MACHINE_ARN;
  if (!stateMachineArn) {
    throw new UsageError('no state machine: pass --state-machine-arn (the StateMachineArn output of `npx cdk deploy`) or set STATE_MACHINE_ARN');
  }
  const sfn = sfnClientFromEnv(process.env, stateMachineArn);
  // The upload trigger's name: a persona started both ways still runs once.
  const name = flags.name ?? executionName(request);
  let executionArn: string;
  let existing = false;
  try {
    // As given: what it leaves out, the deployment's defaults fill in.
    executionArn = (await sfn.send(new StartExecutionCommand({ stateMachineArn, name, input: JSON.stringify(input) }))).executionArn!;
  } catch (error) {
    if (!(error instanceof ExecutionAlreadyExists)) throw error;
    executionArn = executionArnOf(stateMachineArn, name);
    existing = true;
  }
  const url = consoleUrl(executionArn, !!customSfnEndpoint());
  if (flags.json && !flags.wait) {
    process.stdout.write(`${JSON.stringify({ executionArn, name, alreadyStarted: existing, ...(url ? { consoleUrl: url } : {}) }, null, 2)}\n`);
    return 0;
  }
  process.stdout.write(`${existing ? 'already started (pass --name to start another run)' : 'started'}: ${executionArn}\n${url ? `console: ${url}\n` : ''}`);
  return flags.wait ? followAndReport(sfn, executionArn, flags) : 0;
}

interface DevFlags {
  data: string;
  out: string;
  fault: string[];
  latency: number;
  retryDelay: number;
}

/** Keeps the embedded S3 running and runs the workflow for every persona file put under personas/. */
async function devCommand(flags: DevFlags): Promise<number> {
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const env: LocalEnvironment = await startLocalEnvironment({
    // Uploads here start local executions, never a deployed state machine.
    env: { ...process.env, STATE_MACHINE_ARN: undefined },
    dataDir: flags.data,
    faults: parseFaults(flags.fault),
    latencyMs: flags.latency,
    stepFunctions: {
      retryDelayMs: flags.retryDelay,
      onProgress: (execution, event) => {
        const line = describe(event);
        if (line) log(`[${execution.name}] ${line.trimStart()}`);
      },
      onEnd: async (execution) => {
        const outcome = execution.outcome!;
        if (outcome.status === 'FAILED') {
          log(`✗ [${execution.name}] failed: ${outcome.error}: ${outcome.cause}`);
          return;
        }
        const outDir = resolve(flags.out, outcome.output.personaId);
        await saveOutputs(env, outcome, outDir);
        process.stdout.write(resultLines(outcome.output, `(execution ${execution.name})`));
        process.stdout.write(`  open ${join(outDir, 'index.html')}\n\n`);
      },
    },
  });
  const { embeddedS3, stepFunctions, deps } = env;
  if (!embeddedS3 || !stepFunctions) {
    await env.close();
    throw new UsageError('avatars dev watches its own embedded S3: unset S3_ENDPOINT (and S3_BUCKET_NAME with AWS credentials) to use it');
  }
  embeddedS3.onNotification((event: S3Notification) => {
    startFromUpload(event, deps)
      .then((outcomes) => {
        for (const o of outcomes) {
          for (const s of o.started) log(`${o.key}: started ${s.name}`);
          for (const s of o.alreadyStarted) log(`${o.key}: ${s.personaId} unchanged, already started as ${s.name}`);
          for (const p of o.rejected) log(`${o.key}: rejected${p.line ? ` line ${p.line}` : ''}: ${p.message} (report: ${o.reportKey})`);
        }
      })
      .catch((error: Error) => log(`✗ upload trigger failed: ${error.name}: ${error.message}`));
  });
  const bucket = deps.store.bucket;
  process.stdout.write(
    [
      `avatars dev: runs the workflow for every persona file put under s3://${bucket}/personas/ (.json, or .jsonl for many)`,
      `  S3 endpoint: ${embeddedS3.endpoint} (bucket ${bucket}, data in ${join(flags.data, 's3')}, keys ${embeddedS3.accessKey}/${embeddedS3.secretKey})`,
      `  Step Functions endpoint: ${stepFunctions.endpoint} (state machine ${stepFunctions.stateMachineArn})`,
      `  upload: curl -T events/persona.json ${embeddedS3.endpoint}/${bucket}/personas/ada-lovelace.json`,
      `  images are saved under ${resolve(flags.out)}/<persona id>/; Ctrl-C stops once running executions end`,
      '',
    ].join('\n'),
  );
  await new Promise<void>((resolveStop) => {
    process.once('SIGINT', () => resolveStop());
    process.once('SIGTERM', () => resolveStop());
  });
  const running = [...stepFunctions.executions.values()].filter(isRunning).length;
  if (running > 0) log(`stopping after ${running} running execution${running === 1 ? '' : 's'}…`);
  await env.close();
  return 0;
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
  const personaArgument = new Argument('<persona.json>', 'a persona, or an execution input { "persona": …, "images": 8 }');
  const imagesOption = new Option('--images <n>', 'how many avatars (4 per grid)').argParser(int('--images'));
  const modeOption = new Option('--mode <mode>', 'grid: 2x2 grids split apart; separate: one image per call').choices(['grid', 'separate']);
  const jsonOption = new Option('--json', 'print the result as JSON');
  const latencyOption = new Option('--latency <ms>', 'offline backend: delay per image call').argParser(int('--latency')).default(0);
  const retryDelayOption = new Option('--retry-delay <ms>', 'pause before each retry instead of the deployed backoff').argParser(int('--retry-delay')).default(0);
  cli
    .command('run')
    .description('run the whole workflow locally for one persona and save the avatars')
    .addArgument(personaArgument)
    .addOption(imagesOption)
    .addOption(modeOption)
    .option('--out <dir>', 'where to save the images, contact sheet and index.html (default: out/<persona id>)')
    .addOption(jsonOption)
    .addOption(faultOption)
    .addOption(latencyOption)
    .addOption(dataOption)
    .addOption(retryDelayOption)
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
    .option('--put <key=file...>', 'put files into the bucket first, e.g. personas/ada-lovelace.json=events/persona.json', [])
    .addOption(dataOption)
    .addOption(faultOption)
    .action(async (stage: string, flags: InvokeFlags) => {
      process.exitCode = await invokeCommand(stage, flags);
    });
  const pollOption = new Option('--poll-interval <ms>', 'how often to read the execution history').argParser(int('--poll-interval')).default(2000);
  cli
    .command('start')
    .description('start an execution of the deployed state machine (or any Step Functions endpoint: AWS_ENDPOINT_URL_SFN)')
    .addArgument(personaArgument)
    .addOption(imagesOption)
    .addOption(modeOption)
    .option('--state-machine-arn <arn>', 'the StateMachineArn output of the stack (default: $STATE_MACHINE_ARN)')
    .option('--name <name>', 'execution name (default: the persona id and a hash of the input, as uploads get)')
    .option('--wait', 'follow the execution state by state until it ends; exit 1 if it fails')
    .addOption(pollOption)
    .addOption(jsonOption)
    .action(async (file: string, flags: StartFlags) => {
      process.exitCode = await startCommand(file, flags);
    });
  cli
    .command('status')
    .description('follow an execution state by state until it ends and print its result; exit 1 if it failed')
    .argument('<executionArn>', 'as `avatars start` printed it')
    .addOption(pollOption)
    .addOption(jsonOption)
    .action(async (executionArn: string, flags: FollowFlags) => {
      process.exitCode = await followAndReport(sfnClientFromEnv(process.env, executionArn), executionArn, flags);
    });
  cli
    .command('dev')
    .description('keep the embedded S3 running and run the workflow locally for every persona file put under personas/')
    .addOption(dataOption)
    .option('--out <dir>', 'where to save each persona\u2019s images', 'out')
    .addOption(faultOption)
    .addOption(latencyOption)
    .addOption(retryDelayOption)
    .action(async (flags: DevFlags) => {
      process.exitCode = await devCommand(flags);
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
      // AWS SDK errors (no credentials, unknown state machine or execution) are the user's to fix: no stack.
      const fromAws = '$metadata' in error || /ProviderError$/.test(error.name);
      process.stderr.write(`avatars: ${error instanceof UsageError ? error.message : fromAws ? `${error.name}: ${error.message}` : (error.stack ?? error.message)}\n`);
      process.exitCode = 2;
    });
}
