/**
 * `npm run bench`: ratios measured in one run on this machine, never thresholds.
 *  0. PlanBatch on 10,000 new personas in a process of its own, Step Functions' API buckets
 *     enforced: its time and peak memory against its function's Timeout and MemorySize.
 *  1. Workflow wall time for 4 and 8 images with the offline backend at a fixed latency per
 *     image call, next to the latency on the critical path (grids overlap: 8 images should
 *     cost about one grid more than nothing).
 *  2. Grid splitting throughput and peak memory, robust split against the plain equal split.
 *  3. Each Lambda bundle: its size and the time to load it, against a bare Node start (cold starts).
 *  4. The identity check: its cold start (loading the models) and its time per avatar.
 *  5. The CLI: `avatars --help` against a bare Node start, and `avatars split` on 36 grids, then
 *     on 144, of photographs and of flat drawings, against the Python service's Pillow
 *     split-and-trim (bench/pillow-split.py), as whole processes.
 *  6. A batch at a simulated image rate limit with a fixed latency per call: throughput as a share
 *     of the limit, 429s per published image, wall time against the ideal; and the memory taken
 *     by checking a 10,000-line file as it streams.
 *  7. Marking avatars as AI-generated (IPTC XMP): the time and bytes it adds per avatar, next to
 *     the time to encode that avatar.
 */
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { linkSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import sharp from 'sharp';
import { buildApp } from '../infra/app.ts';
import { STAGE_SPECS } from '../infra/stage-functions.ts';
import type { StageName } from '../lambdas/stages.ts';
import { projectRoot } from '../infra/context.ts';
import { signC2pa, TRAINED_ALGORITHMIC_MEDIA } from '../lambdas/publish/c2pa.ts';
import { marked } from '../lambdas/publish/marking.ts';
import { CLAIM_GENERATOR, drawnImage, markAvatar } from '../lambdas/publish/provenance.ts';
import { pemSigner } from '../lambdas/publish/signer.ts';
import { issueSigningCertificate } from '../local/certificates.ts';
import { faceIndexKeys, PNG_OPTIONS } from '../lambdas/shared/keys.ts';
import { splitEqually, splitGrid } from '../lambdas/split-grid/split.ts';
import { composeGrid, drawAvatar, gridLayout, lookFor, portraits, random, seedOf } from '../local/avatar-art.ts';
import { startLocalEnvironment, type LocalEnvironment } from '../local/environment.ts';
import { startOfflineBackend, type OfflineBackend } from '../local/offline-openai.ts';
import { startDynaliteServer } from '../test/dynamodb.ts';
import { startEmbeddedS3 } from '../local/embedded-s3.ts';
import { s3ClientFromEnv } from '../lambdas/shared/s3.ts';
import { ObjectStore } from '../lambdas/shared/store.ts';
import { runLocally } from '../local/runner.ts';
import type { BatchReport, BatchSummary } from '../lambdas/shared/batch.ts';
import persona from '../events/persona.json' with { type: 'json' };

const LATENCY_MS = 1500;
const out = (line = '') => process.stdout.write(`${line}\n`);

async function workflowBench(): Promise<void> {
  out(`Workflow, offline backend at ${LATENCY_MS} ms per image call`);
  out('images  total ms  critical-path latency ms  overhead ms  per-stage ms (summed over grids)');
  for (const images of [4, 8]) {
    const dir = mkdtempSync(join(tmpdir(), 'avatars-bench-'));
    const env = await startLocalEnvironment({ dataDir: dir, env: {}, latencyMs: LATENCY_MS });
    try {
      const outcome = await runLocally({ input: { persona, images }, deps: env.deps });
      if (outcome.status !== 'SUCCEEDED') throw new Error(`${outcome.error}: ${outcome.cause}`);
      const perStage = new Map<string, number>();
      for (const e of outcome.events) {
        if (e.kind === 'exited' && e.ms !== undefined && !['PromptAndBase', 'GenerateGrids', 'GridAttempt'].includes(e.state)) {
          perStage.set(e.state, (perStage.get(e.state) ?? 0) + e.ms);
        }
      }
      // Base, then grids in parallel: two image calls deep, whatever the number of grids.
      const critical = 2 * LATENCY_MS;
      const stages = [...perStage].map(([s, ms]) => `${s} ${ms}`).join(', ');
      out(`${String(images).padStart(6)}  ${String(outcome.ms).padStart(8)}  ${String(critical).padStart(24)}  ${String(outcome.ms - critical).padStart(11)}  ${stages}`);
    } finally {
      await env.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }
  out();
}

async function splitBench(): Promise<void> {
  const look = lookFor('bench');
  const variations = await Promise.all([0, 1, 2, 3].map((v) => drawAvatar(look, 512, 512, v)));
  const grids = await Promise.all(
    [0, 1, 2, 3, 4, 5, 6, 7].map((i) => {
      const rnd = random(seedOf(`bench-${i}`));
      return composeGrid(1024, 1024, gridLayout(1024, 1024, 2, 2, rnd), variations, rnd);
    }),
  );
  const rounds = 5;
  const measure = async (split: (g: Buffer) => Promise<unknown>) => {
    for (const g of grids.slice(0, 2)) await split(g);
    const before = process.memoryUsage().rss;
    let peak = before;
    const start = performance.now();
    for (let r = 0; r < rounds; r++) {
      for (const g of grids) {
        await split(g);
        peak = Math.max(peak, process.memoryUsage().rss);
      }
    }
    const ms = (performance.now() - start) / (rounds * grids.length);
    // Above the RSS it started from: the sections before this one leave the process large.
    return { ms, perSecond: 1000 / ms, growthMb: (peak - before) / 2 ** 20 };
  };
  const plain = await measure((g) => splitEqually(g, 2, 2));
  const robust = await measure((g) => splitGrid(g, 2, 2));
  out('Grid splitting, 1024x1024 2x2 grids, decode to encoded PNG tiles, one process');
  out(`  plain equal split : ${plain.ms.toFixed(1)} ms/grid, ${plain.perSecond.toFixed(1)} grids/s, RSS at most ${plain.growthMb.toFixed(0)} MiB above its start`);
  out(`  robust split      : ${robust.ms.toFixed(1)} ms/grid, ${robust.perSecond.toFixed(1)} grids/s, RSS at most ${robust.growthMb.toFixed(0)} MiB above its start`);
  out(`  robust / plain    : ${(robust.ms / plain.ms).toFixed(2)}x (target at most 1.3x)`);
  out();
}

/** Median wall time of a whole process, in ms. */
function processMs(command: string, args: string[], runs = 7, cwd = projectRoot): number {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const start = performance.now();
    const result = spawnSync(command, args, { cwd, stdio: 'ignore' });
    if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} exited ${result.status}`);
    times.push(performance.now() - start);
  }
  return times.sort((a, b) => a - b)[Math.floor(runs / 2)]!;
}

const bareNodeMs = () => processMs(process.execPath, ['-e', '0']);

function bundleBench(): void {
  const outdir = mkdtempSync(join(tmpdir(), 'avatars-bundles-'));
  try {
    const { app, stack } = buildApp({ outdir });
    const template = app.synth().getStackByName(stack.stackName).template as { Resources: Record<string, { Type: string; Properties: Record<string, any> }> };
    const size = (path: string): number => (statSync(path).isDirectory() ? readdirSync(path).reduce((sum, f) => sum + size(join(path, f)), 0) : statSync(path).size);
    const bare = bareNodeMs();
    out(`Lambda assets (bundled with esbuild; sharp copied in for split-grid); load = require() of the bundle, bare Node start ${bare.toFixed(0)} ms`);
    // Our stages only: CDK adds a helper function of its own for the bucket notifications.
    for (const fn of Object.values(template.Resources).filter((r) => r.Type === 'AWS::Lambda::Function' && r.Properties.Environment?.Variables?.STAGE)) {
      const dir = join(outdir, `asset.${String(fn.Properties.Code.S3Key).replace(/\.zip$/, '')}`);
      const js = statSync(join(dir, 'index.js')).size;
      const load = processMs(process.execPath, ['-e', "require('./index.js')"], 7, dir);
      out(
        `  ${String(fn.Properties.Environment.Variables.STAGE).padEnd(17)} index.js ${(js / 1024).toFixed(0).padStart(5)} KiB, asset ${(size(dir) / 2 ** 20).toFixed(1).padStart(5)} MiB, load ${load.toFixed(0).padStart(4)} ms = ${(load / bare).toFixed(1)}x a bare start`,
      );
    }
    out();
  } finally {
    rmSync(outdir, { recursive: true, force: true });
  }
}

const linked = (file: string, name: string) => (linkSync(file, name), name);

/** 36 grids of 1024x1024, laid out as models lay theirs out, of these cell pictures. */
async function gridsOf(dir: string, kind: string, pictures: Buffer[]): Promise<string[]> {
  mkdirSync(join(dir, kind));
  return Promise.all(
    Array.from({ length: 36 }, async (_, i) => {
      const rnd = random(seedOf(`split-bench-${kind}-${i}`));
      const file = join(dir, kind, `grid_${i}.png`);
      writeFileSync(file, await composeGrid(1024, 1024, gridLayout(1024, 1024, 2, 2, rnd), pictures, rnd));
      return file;
    }),
  );
}

async function cliBench(): Promise<void> {
  const cli = join(projectRoot, 'local', 'cli.mjs');
  const bare = bareNodeMs();
  const help = processMs(process.execPath, [cli, '--help']);
  out('The avatars CLI, whole processes');
  out(`  avatars --help    : ${help.toFixed(0)} ms, bare Node start ${bare.toFixed(0)} ms: ${(help / bare).toFixed(1)}x (target about 2.5x)`);
  // Debian's python3-pil lives beside the system Python, which a pyenv on PATH may hide.
  const python = ['python3', '/usr/bin/python3'].find((p) => spawnSync(p, ['-c', 'import PIL'], { stdio: 'ignore' }).status === 0);
  if (!python) {
    out('  (python3 with Pillow not found: `apt-get install python3-pil` to compare avatars split against the Python service)\n');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'avatars-split-bench-'));
  try {
    // Photographs, as image models draw them (the two portraits, varied), and the offline
    // backend's flat drawings: Pillow compresses flat colour much faster than photographs.
    const look = lookFor('split bench');
    const sets = {
      photographs: await gridsOf(dir, 'photographs', await portraits()),
      drawings: await gridsOf(dir, 'drawings', await Promise.all([0, 1, 2, 3].map((v) => drawAvatar(look, 512, 512, v)))),
    };
    out('  avatars split against Pillow split+trim (bench/pillow-split.py), 2x2 grids of 1024x1024: target at least 3x faster, tiles at most 1.25x its bytes');
    for (const [kind, grids] of Object.entries(sets)) {
      // Also four times the grids (each under three more names), once each: a Node start with
      // sharp, and the first grids while its memory and code warm up, cost a fixed ~0.3 s that
      // Python's start does not, so the ratio grows with the batch.
      const more = [...grids, ...grids.flatMap((g, i) => [1, 2, 3].map((k) => linked(g, join(dir, kind, `grid_${i}_${k}.png`))))];
      for (const [files, runs] of [[grids, 3], [more, 1]] as const) {
        const outDir = (tool: string) => join(dir, `${tool}-${kind}-${files.length}`);
        const ours = processMs(process.execPath, [cli, 'split', ...files, '--out', outDir('ours')], runs);
        const pillow = processMs(python, [join(projectRoot, 'bench', 'pillow-split.py'), outDir('pillow'), ...files], runs);
        const tileBytes = (tool: string) => readdirSync(outDir(tool), { recursive: true }).reduce((sum: number, f) => sum + (String(f).endsWith('.png') ? statSync(join(outDir(tool), String(f))).size : 0), 0);
        out(
          `  ${`${kind}, ${files.length} grids`.padEnd(22)}: avatars ${ours.toFixed(0).padStart(5)} ms, Pillow ${pillow.toFixed(0).padStart(5)} ms: ${(pillow / ours).toFixed(1)}x faster; tiles ${(tileBytes('ours') / 2 ** 20).toFixed(1)} MiB, ${(tileBytes('ours') / tileBytes('pillow')).toFixed(2)}x its bytes`,
        );
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  out();
}

/** In a fresh process, as a Lambda's cold start is: loading the models, then each avatar. */
function identityBench(): void {
  const script = `
    const { readFileSync } = await import('node:fs');
    const sharp = (await import('sharp')).default;
    const { facesIn } = await import('./lambdas/check-identity/faces.ts');
    const { drawAvatar, lookFor } = await import('./local/avatar-art.ts');
    const tiles = await Promise.all([0, 1, 2, 3, 4, 5, 6, 7].map(async (v) => sharp(await drawAvatar(lookFor('bench'), 1024, 1024, v)).resize(480, 480).png().toBuffer()));
    let start = performance.now();
    await facesIn(tiles[0]);
    const cold = performance.now() - start;
    start = performance.now();
    for (const tile of tiles) await facesIn(tile);
    console.log(JSON.stringify({ cold, perTile: (performance.now() - start) / tiles.length, rssMb: process.memoryUsage().rss / 2 ** 20 }));`;
  const result = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: projectRoot, encoding: 'utf8' });
  if (result.status !== 0) throw new Error(result.stderr);
  const { cold, perTile, rssMb } = JSON.parse(result.stdout.trim().split('\n').at(-1)!) as { cold: number; perTile: number; rssMb: number };
  out('The identity check (face detector and description model, TensorFlow.js on WASM), one fresh process');
  out(`  cold start (models loaded, first avatar): ${cold.toFixed(0)} ms; then ${perTile.toFixed(0)} ms per 480x480 avatar; RSS ${rssMb.toFixed(0)} MiB`);
  out();
}

const BATCH = { personas: 24, imagesPerMinute: 120, latencyMs: 1000 };

const teamLines = (n: number, prefix: string) => Array.from({ length: n }, (_, i) => JSON.stringify({ persona: { ...persona, id: `${prefix}-${i + 1}` } })).join('\n');

/** One batch run here, its file put where its input says. */
async function runBenchBatch(env: LocalEnvironment, lines: string, batchId: string): Promise<{ published: number; ms: number }> {
  const personasKey = `batches/${batchId}/personas.jsonl`;
  await env.deps.store.put(personasKey, lines, 'application/x-ndjson');
  const outcome = await runLocally<BatchSummary>({ machine: 'batch', input: { personasKey }, runId: batchId, deps: env.deps, children: env.stepFunctions?.children });
  if (outcome.status !== 'SUCCEEDED') throw new Error(`${outcome.error}: ${outcome.cause}`);
  return { published: outcome.output.counts.SUCCEEDED, ms: outcome.ms };
}

/** What the API saw: image calls drawn a minute against its limit, 429s per published image, wall time against the ideal. */
function pacingReport(backend: OfflineBackend, limit: number, personas: number, published: number, wallMs: number): void {
  const calls = backend.requests.filter((r) => r.route === 'generations' || r.route === 'edits');
  const drawn = calls.filter((c) => !c.rateLimited);
  const perMinute = ((drawn.length - 1) * 60_000) / (drawn.at(-1)!.at - drawn[0]!.at);
  const idealMs = (drawn.length * 60_000) / limit;
  out(`  published ${published}/${personas}; ${drawn.length} image calls at ${perMinute.toFixed(1)}/min from first to last: ${((perMinute / limit) * 100).toFixed(0)}% of the limit`);
  out(`  429s: ${calls.length - drawn.length} (${((calls.length - drawn.length) / (published * 4)).toFixed(2)} per published image)`);
  out(`  wall ${(wallMs / 1000).toFixed(1)} s against an ideal of ${(idealMs / 1000).toFixed(1)} s (image calls / limit): ${(wallMs / idealMs).toFixed(2)}x`);
}

async function batchBench(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'avatars-bench-'));
  const limit = String(BATCH.imagesPerMinute);
  const env = await startLocalEnvironment({ dataDir: dir, env: { IMAGES_PER_MINUTE: limit }, latencyMs: BATCH.latencyMs, imagesPerMinute: BATCH.imagesPerMinute });
  try {
    out(`A batch: ${BATCH.personas} personas, API limited to ${BATCH.imagesPerMinute} images/min, ${BATCH.latencyMs} ms per image call`);
    const { published, ms } = await runBenchBatch(env, teamLines(BATCH.personas, 'bench'), 'bench');
    pacingReport(env.backend!, BATCH.imagesPerMinute, BATCH.personas, published, ms);
  } finally {
    await env.close();
    rmSync(dir, { recursive: true, force: true });
  }
  const file = join(dir, 'big.jsonl');
  mkdirSync(dir, { recursive: true });
  writeFileSync(file, Array.from({ length: 10_000 }, (_, i) => JSON.stringify({ persona: { ...persona, id: `p-${i}` } })).join('\n'));
  const script = `
    const { createReadStream } = await import('node:fs');
    const { createInterface } = await import('node:readline');
    const { readPersonaLines } = await import('./lambdas/shared/run-input.ts');
    global.gc();
    const base = process.memoryUsage().heapUsed;
    let peak = 0, valid = 0, n = 0;
    for await (const line of readPersonaLines(createInterface({ input: createReadStream(process.argv[1]), crlfDelay: Infinity }))) {
      if ('request' in line) valid++;
      if (++n % 500 === 0) peak = Math.max(peak, process.memoryUsage().heapUsed - base);
    }
    console.log(JSON.stringify({ valid, peakMb: peak / 2 ** 20 }));`;
  const result = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', script, file], { cwd: projectRoot, encoding: 'utf8' });
  if (result.status !== 0) throw new Error(result.stderr);
  const { valid, peakMb } = JSON.parse(result.stdout.trim()) as { valid: number; peakMb: number };
  out(`  checking a 10,000-line file (${(statSync(file).size / 2 ** 20).toFixed(1)} MiB): ${valid} valid, heap at most ${peakMb.toFixed(1)} MiB above its start`);
  rmSync(dir, { recursive: true, force: true });
  out();
}

const SHARED = { personas: 12, imagesPerMinute: 60, latencyMs: 1000 };

/**
 * Two batches started together, as two uploads would be, each planned against the whole limit:
 * two processes' worth of stages (an S3 each) sharing one image budget table and one API.
 */
async function twoBatchesBench(): Promise<void> {
  const backend = await startOfflineBackend({ imagesPerMinute: SHARED.imagesPerMinute, latencyMs: SHARED.latencyMs });
  const db = await startDynaliteServer();
  // The SDK's standard chain reads credentials from this process's environment, as a Lambda's does.
  Object.assign(process.env, db.env);
  const dirs = ['a', 'b'].map((name) => mkdtempSync(join(tmpdir(), `avatars-bench-${name}-`)));
  const variables = { ...process.env, OPENAI_API_KEY: 'sk-bench', OPENAI_BASE_URL: backend.baseUrl, PROMPT_PROVIDER: 'template', IMAGES_PER_MINUTE: String(SHARED.imagesPerMinute), IMAGE_BUDGET_TABLE: 'image-budget', ...db.env };
  const envs = await Promise.all(dirs.map((dataDir) => startLocalEnvironment({ dataDir, env: variables, stepFunctions: {} })));
  try {
    out(`Two batches started together: ${SHARED.personas} personas each, both planned at ${SHARED.imagesPerMinute} images/min, one image budget table, an API limited to ${SHARED.imagesPerMinute} images/min, ${SHARED.latencyMs} ms per call`);
    const runs = await Promise.all(envs.map((env, i) => runBenchBatch(env, teamLines(SHARED.personas, `shared-${i}`), `shared-${i}`)));
    pacingReport(backend, SHARED.imagesPerMinute, 2 * SHARED.personas, runs[0]!.published + runs[1]!.published, Math.max(...runs.map((r) => r.ms)));
  } finally {
    for (const env of envs) await env.close();
    await db.close();
    await backend.close();
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  }
  out();
}

const STALE_MINUTES = 10;

/** A batch whose plan is stale: planned ten minutes before its Map starts, every persona's turn has passed. */
async function stalePlanBench(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'avatars-bench-stale-'));
  const env = await startLocalEnvironment({ dataDir: dir, env: { IMAGES_PER_MINUTE: String(BATCH.imagesPerMinute) }, latencyMs: BATCH.latencyMs, imagesPerMinute: BATCH.imagesPerMinute });
  try {
    out(`A batch planned ${STALE_MINUTES} minutes before it runs: ${BATCH.personas} personas whose turns have all passed, API limited to ${BATCH.imagesPerMinute} images/min, ${BATCH.latencyMs} ms per call`);
    const late = { ...env, deps: { ...env.deps, clock: { now: () => new Date(Date.now() - STALE_MINUTES * 60_000) } } };
    const { published, ms } = await runBenchBatch(late, teamLines(BATCH.personas, 'stale'), 'stale');
    pacingReport(env.backend!, BATCH.imagesPerMinute, BATCH.personas, published, ms);
  } finally {
    await env.close();
    rmSync(dir, { recursive: true, force: true });
  }
  out();
}

const MODES = { personas: 12, imagesPerMinute: 120, latencyMs: 1000 };

/**
 * One batch in both modes against the offline backend: sync, paced to the limit; batch mode, its
 * images as lines of OpenAI batches (drawn by the backend without the per-call latency: OpenAI
 * takes up to 24 h, so wall time here is the machinery's own).
 */
async function apiModesBench(): Promise<void> {
  out(`One batch of ${MODES.personas} personas in both modes: sync (API limited to ${MODES.imagesPerMinute} images/min, ${MODES.latencyMs} ms per call), then OpenAI's Batch API`);
  for (const mode of ['sync', 'batch'] as const) {
    const dir = mkdtempSync(join(tmpdir(), `avatars-bench-${mode}-`));
    const env = await startLocalEnvironment({ dataDir: dir, env: { IMAGES_PER_MINUTE: String(MODES.imagesPerMinute) }, latencyMs: MODES.latencyMs, imagesPerMinute: MODES.imagesPerMinute });
    try {
      const personasKey = `batches/${mode}/personas.jsonl`;
      await env.deps.store.put(personasKey, teamLines(MODES.personas, mode), 'application/x-ndjson');
      const outcome = await runLocally<BatchSummary>({ machine: 'batch', input: { personasKey, openAiBatch: mode === 'batch' }, runId: mode, deps: env.deps });
      if (outcome.status !== 'SUCCEEDED') throw new Error(`${outcome.error}: ${outcome.cause}`);
      const report = JSON.parse(await env.deps.store.getText(outcome.output.reportKey)) as BatchReport;
      const manifests = await Promise.all(report.personas.map((p) => env.deps.store.getJsonIfExists<{ estimatedCostUsd: number | null }>(p.manifestKey!)));
      const cost = manifests.reduce((sum, m) => sum + (m?.estimatedCostUsd ?? 0), 0);
      const sync = env.backend!.requests.filter((r) => r.route === 'generations' || r.route === 'edits').length;
      const lines = env.backend!.batchLines.length;
      out(
        `  ${mode.padEnd(5)}: published ${outcome.output.counts.SUCCEEDED}/${MODES.personas}; ${sync} calls to the image endpoints, ${lines} batch lines; ` +
          `images estimated at $${cost.toFixed(4)}${report.openAiBatch ? ` (sync mode: $${report.openAiBatch.syncCostUsd.toFixed(4)})` : ''}; wall ${(outcome.ms / 1000).toFixed(1)} s`,
      );
    } finally {
      await env.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }
  out();
}

/** A stage's core run in a process of its own, as its Lambda runs it: what it returned, its time and its peak memory. */
async function inOwnProcess(body: string, args: unknown, env: Record<string, string | undefined>, memoryMb?: number): Promise<{ result: any; peakMb: number; ms: number }> {
  const script = `
    const { Logger } = await import('@aws-lambda-powertools/logger');
    const { settingsFromEnv } = await import('./lambdas/shared/settings.ts');
    const settings = settingsFromEnv(process.env);
    const logger = new Logger({ logLevel: 'SILENT' });
    // PlanBatch's clients, as its handler lists them.
    const planDeps = async (logger) => {
      const { depsFromEnv } = await import('./lambdas/shared/stage.ts');
      const { storeClient } = await import('./lambdas/shared/s3.ts');
      const { sfnClient } = await import('./lambdas/shared/sfn.ts');
      return depsFromEnv(process.env, logger, [storeClient, sfnClient]);
    };
    let peak = process.memoryUsage().rss;
    const sample = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 10);
    const started = performance.now();
    const result = await (async (event) => { ${body} })(JSON.parse(process.argv[1]));
    clearInterval(sample);
    console.log(JSON.stringify({ result, peakMb: Math.max(peak, process.memoryUsage().rss) / 2 ** 20, ms: performance.now() - started }));`;
  // Asynchronously: the servers it calls answer in this process.
  // With `memoryMb`, V8's heap is held under the function's memory (90% of it), so garbage is
  // collected as it must be in the Lambda, and what does not fit fails here as it would there.
  const heap = memoryMb ? [`--max-old-space-size=${Math.floor(memoryMb * 0.9)}`] : [];
  const { stdout } = await promisify(execFile)(process.execPath, [...heap, '--input-type=module', '-e', script, JSON.stringify(args)], { cwd: projectRoot, env: { ...process.env, ...env }, maxBuffer: 2 ** 24 });
  return JSON.parse(stdout.trim().split('\n').at(-1)!);
}

/** A stage's time and memory against its function's Timeout and MemorySize. */
function againstFunction(stage: StageName, ms: number, peakMb: number): string {
  const { memoryMb, timeout } = STAGE_SPECS[stage];
  return `${(ms / 1000).toFixed(1)} s of its ${timeout.toSeconds()} s timeout (${((ms / 1000 / timeout.toSeconds()) * 100).toFixed(1)}%), at most ${peakMb.toFixed(0)} MiB of its ${memoryMb} MB (Lambda's MB are MiB: ${((peakMb / memoryMb) * 100).toFixed(0)}%)`;
}

/**
 * PlanBatch on 10,000 new personas, in a process of its own, against a Step Functions whose API
 * answers ThrottlingException past its documented buckets, as the service does.
 */
async function planBench(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'avatars-bench-plan-'));
  const env = await startLocalEnvironment({ dataDir: dir, env: {}, stepFunctions: {} });
  try {
    const personas = 10_000;
    await env.deps.store.put('batches/big/personas.jsonl', `${teamLines(personas, 'new')}\n`, 'application/x-ndjson');
    const body = `
      const { planBatch } = await import('./lambdas/plan-batch/core.ts');
      const plan = await planBatch(event, await planDeps(logger));
      return { toRun: plan.toRun };`;
    const { result, peakMb, ms } = await inOwnProcess(body, { personasKey: 'batches/big/personas.jsonl', batchId: 'big' }, {
      ...env.env,
      S3_SECRET_KEY: env.embeddedS3!.secretKey,
      AWS_ACCESS_KEY_ID: 'local',
      AWS_SECRET_ACCESS_KEY: 'local',
      AWS_REGION: 'us-east-1',
    });
    out(`PlanBatch on ${personas.toLocaleString('en')} new personas, Step Functions' API buckets enforced (ListExecutions 200, then 5/s; DescribeExecution 300, then 15/s)`);
    out(`  ${result.toRun} planned in ${againstFunction('plan-batch', ms, peakMb)}; the goal is at most 75% of each`);
  } finally {
    await env.close();
    rmSync(dir, { recursive: true, force: true });
  }
  out();
}

/** An embedded S3 in a folder of its own, for a section's stage to read in its process: its variables, a store on it, and how to remove both. */
async function benchBucket(name: string, extra: Record<string, string> = {}) {
  const dir = mkdtempSync(join(tmpdir(), `avatars-bench-${name}-`));
  const s3 = await startEmbeddedS3(join(dir, 's3'), 'avatars');
  const env = { S3_ENDPOINT: s3.endpoint, S3_ACCESS_KEY: s3.accessKey, S3_SECRET_KEY: s3.secretKey, S3_BUCKET_NAME: 'avatars', ...extra };
  const store = new ObjectStore(s3ClientFromEnv(env), 'avatars');
  const close = async () => {
    store.s3.destroy();
    await s3.close();
    rmSync(dir, { recursive: true, force: true });
  };
  return { env, store, close };
}

/** ReportBatch on a batch of 10,000 personas of 40 avatars each, in a process of its own: its peak memory. */
async function reportBench(): Promise<void> {
  const { env, store, close } = await benchBucket('report', { PUBLIC_BASE_URL: 'https://avatars.example.com' });
  try {
    const personas = 10_000;
    const item = (i: number) => ({ personaId: `p-${i}`, line: i + 1, name: `p-${i}-0123456789abcdef` });
    const items = Array.from({ length: personas }, (_, i) => `${JSON.stringify({ ...item(i), input: { persona: { ...persona, id: `p-${i}` } }, notBefore: '2026-12-03T00:00:00.000Z' })}\n`).join('');
    const results = Array.from({ length: personas }, (_, i) => {
      const run = `avatars/p-${i}/runs/p-${i}-0123456789abcdef`;
      return `${JSON.stringify({ ...item(i), outcome: { status: 'SUCCEEDED', manifestKey: `${run}/manifest.json`, images: Array.from({ length: 40 }, (_, n) => `${run}/img_${n + 1}.png`) } })}\n`;
    }).join('');
    await store.put('batches/big/items.jsonl', items, 'application/x-ndjson');
    await store.put('batches/big/results/run/SUCCEEDED_0.json', results, 'application/x-ndjson');
    await store.putJson('batches/big/results/run/manifest.json', { ResultFiles: { SUCCEEDED: [{ Key: 'batches/big/results/run/SUCCEEDED_0.json' }] } });
    const plan = { batchId: 'big', personasKey: 'batches/big/personas.jsonl', itemsKey: 'batches/big/items.jsonl', planKey: 'batches/big/plan.json', resultsPrefix: 'batches/big/results/', toRun: personas, skipped: 0, refused: 0, imagesPerMinute: 50, imageCalls: personas * 11, lastTurn: '2026-12-03T00:00:00.000Z', concurrency: 100 };
    await store.putJson(plan.planKey, { ...plan, skippedLines: [], refusedLines: [] });
    const script = `
      const { Logger } = await import('@aws-lambda-powertools/logger');
      const { reportBatch } = await import('./lambdas/report-batch/core.ts');
      const { storeClient } = await import('./lambdas/shared/s3.ts');
      const { depsFromEnv } = await import('./lambdas/shared/stage.ts');
      // Its clients as its handler lists them.
      const deps = await depsFromEnv(process.env, new Logger({ logLevel: 'SILENT' }), [storeClient]);
      let peak = process.memoryUsage().rss;
      const sample = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 10);
      const started = performance.now();
      const summary = await reportBatch(JSON.parse(process.argv[1]), deps);
      clearInterval(sample);
      console.log(JSON.stringify({ counts: summary.counts, peakMb: Math.max(peak, process.memoryUsage().rss) / 2 ** 20, ms: performance.now() - started }));`;
    const event = { plan, map: { MapRunArn: 'arn', ResultWriterDetails: { Bucket: 'avatars', Key: 'batches/big/results/run/manifest.json' } } };
    // Asynchronously: the embedded S3 it reads from answers in this process.
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script, JSON.stringify(event)], { cwd: projectRoot, env: { ...process.env, ...env }, maxBuffer: 2 ** 24 });
    const { counts, peakMb, ms } = JSON.parse(stdout.trim().split('\n').at(-1)!) as { counts: { SUCCEEDED: number }; peakMb: number; ms: number };
    out(`ReportBatch on ${personas.toLocaleString('en')} results of 40 avatars each (${(Buffer.byteLength(results) / 2 ** 20).toFixed(0)} MiB of compact JSON Lines)`);
    out(`  ${counts.SUCCEEDED} reported in ${(ms / 1000).toFixed(1)} s; the process's memory (RSS) at most ${peakMb.toFixed(0)} MiB, Node itself included`);
  } finally {
    await close();
  }
  out();
}

async function markingBench(): Promise<void> {
  const [photo] = await portraits();
  const size = { width: 1024, height: 1024 };
  const pixels = sharp(photo!).resize(size.width, size.height);
  const [publisher, generator] = await Promise.all([issueSigningCertificate('bench publisher'), issueSigningCertificate('bench generator')]);
  const signer = pemSigner(publisher.certificatePem, publisher.privateKeyPem, 'bench');
  const marking = { model: 'gpt-image-2', credit: 'AI-generated avatar (persona-avatars)' };
  out('Marking avatars as AI-generated, 1024x1024 from a signed 2048x2048 grid: IPTC XMP alone, then XMP and a signed C2PA manifest');
  for (const format of ['png', 'webp', 'jpeg'] as const) {
    const encodeStart = performance.now();
    const encoded = await pixels.clone().toFormat(format, format === 'png' ? PNG_OPTIONS : { quality: 90 }).toBuffer();
    const encodeMs = performance.now() - encodeStart;
    const grid = await sharp(photo!).resize(2048, 2048).toFormat(format).toBuffer();
    const created = { action: 'c2pa.created', digitalSourceType: TRAINED_ALGORITHMIC_MEDIA };
    const loadStart = performance.now();
    const signedGrid = await signC2pa({ bytes: grid, format }, { title: 'grid', actions: [created] }, pemSigner(generator.certificatePem, generator.privateKeyPem, 'bench'), CLAIM_GENERATOR);
    // The first signature in a process also compiles the C2PA library: a cold start pays it once.
    const firstMs = performance.now() - loadStart;
    const parent = await drawnImage(`grid.${format}`, signedGrid);
    const origin = { marking, parent, box: { width: 1024, height: 1024 }, title: `img_1.${format}` };
    const time = async (rounds: number, mark: () => Promise<Buffer> | Buffer) => {
      const start = performance.now();
      let file: Buffer = encoded;
      for (let r = 0; r < rounds; r++) file = await mark();
      return { ms: (performance.now() - start) / rounds, bytes: file.length - encoded.length };
    };
    const xmp = await time(200, () => marked(encoded, format, size, marking));
    const c2pa = await time(20, async () => (await markAvatar(encoded, format, size, origin, signer)).bytes);
    out(
      `  ${format.padEnd(4)}: XMP ${xmp.ms.toFixed(2)} ms, ${xmp.bytes} bytes; XMP and C2PA ${c2pa.ms.toFixed(1)} ms, ${(c2pa.bytes / 1024).toFixed(1)} KiB per avatar` +
        ` (encoding it: ${encodeMs.toFixed(0)} ms, ${(encoded.length / 1024).toFixed(0)} KiB; first signature in a process: ${firstMs.toFixed(0)} ms)`,
    );
  }
  out();
}

/**
 * Batch mode's rounds at 10,000 personas of two grids each: PlanBatch, then every SubmitRound
 * and CollectRound invocation in a process of its own, with the Lambda's deadline, as deployed:
 * each one's time and peak memory against its function's. The offline backend answers every
 * image with one small picture: 30,000 real ones (1.5-3 MB each) would need some 90 GB of disk
 * for the bucket and OpenAI's output files, and hours of drawing on this machine.
 */
async function roundsBench(): Promise<void> {
  const personas = 10_000;
  const dir = mkdtempSync(join(tmpdir(), 'avatars-bench-rounds-'));
  const db = await startDynaliteServer();
  const fixedImage = await sharp({ create: { width: 1024, height: 1024, channels: 3, background: '#3d5a80' } }).png().toBuffer();
  const backend = await startOfflineBackend({ fixedImage, c2pa: false, batchStepMs: 20 });
  const local = await startLocalEnvironment({
    dataDir: dir,
    env: { OPENAI_API_KEY: 'sk-bench', OPENAI_BASE_URL: backend.baseUrl, PROMPT_PROVIDER: 'template', IMAGE_BUDGET_TABLE: 'image-budget', DEFAULT_IMAGES: '8', ...db.env },
    stepFunctions: {},
  });
  const env = { ...local.env, OPENAI_API_KEY: 'sk-bench', S3_SECRET_KEY: local.embeddedS3!.secretKey, ...db.env, POWERTOOLS_METRICS_DISABLED: 'true' };
  const worst: Partial<Record<StageName, { ms: number; peakMb: number; runs: number }>> = {};
  const measured = async (stage: StageName, body: string, event: unknown) => {
    const { result, peakMb, ms } = await inOwnProcess(body, event, env, STAGE_SPECS[stage].memoryMb);
    const w = (worst[stage] ??= { ms: 0, peakMb: 0, runs: 0 });
    Object.assign(w, { ms: Math.max(w.ms, ms), peakMb: Math.max(w.peakMb, peakMb), runs: w.runs + 1 });
    return result;
  };
  const round = (core: string, stage: string) => `
      const { ${core} } = await import('./lambdas/${stage}/core.ts');
      const { depsFromEnv } = await import('./lambdas/shared/stage.ts');
      const { roundClients } = await import('./lambdas/shared/round-clients.ts');
      const deps = await depsFromEnv(process.env, logger, roundClients);
      // As its handler sets it: a minute before the Lambda's 15.
      deps.deadline = Date.now() + 14 * 60_000;
      return await ${core}(event, deps);`;
  try {
    await local.deps.store.put('batches/rounds/personas.jsonl', `${teamLines(personas, 'r')}\n`, 'application/x-ndjson');
    const plan = await measured('plan-batch', `
      const { planBatch } = await import('./lambdas/plan-batch/core.ts');
      return await planBatch(event, await planDeps(logger));`, { personasKey: 'batches/rounds/personas.jsonl', batchId: 'rounds', input: { openAiBatch: true } });
    let status = await measured('submit-round', round('submitRound', 'submit-round'), { plan });
    while (status.status !== 'nothing') {
      while (status.status !== 'collected') {
        await new Promise((resolve) => setTimeout(resolve, 1000));
        status = await measured('collect-round', round('collectRound', 'collect-round'), { plan, round: status });
      }
      if (status.next !== 'submit') break;
      status = await measured('submit-round', round('submitRound', 'submit-round'), { plan, round: status });
    }
    const lines = backend.batchLines.length;
    out(`Batch mode's rounds on ${personas.toLocaleString('en')} personas of two grids each (${lines.toLocaleString('en')} batch lines; small images, not real-size ones: see bench/run.ts)`);
    for (const [stage, w] of Object.entries(worst) as [StageName, { ms: number; peakMb: number; runs: number }][]) {
      out(`  ${stage}, the most of ${w.runs} invocation${w.runs === 1 ? '' : 's'} (V8's heap held to 90% of its memory): ${againstFunction(stage, w.ms, w.peakMb)}`);
    }
  } finally {
    await local.close();
    await backend.close();
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  }
  out();
}

/**
 * The face index at 100,000 published faces, in a process of its own as check-base's Lambda
 * holds it: a cold read of its chunks, then the nearest face of a new base, against the
 * function's timeout and memory.
 */
async function facesBench(): Promise<void> {
  const { env, store, close } = await benchBucket('faces');
  try {
    const faces = 100_000;
    const chunk = 1000;
    const rnd = random(seedOf('faces'));
    for (let start = 0; start < faces; start += chunk) {
      const entries = Array.from({ length: chunk }, (_, i) => {
        const seq = start + i;
        const embedding = Buffer.from(Int8Array.from({ length: 1024 }, () => Math.round((rnd() - 0.5) * 254)).buffer).toString('base64');
        return { seq, personaId: `p-${seq}`, runId: 'r', manifestKey: `avatars/p-${seq}/runs/r/manifest.json`, at: '2026-12-01T00:00:00.000Z', embedding };
      });
      await store.put(faceIndexKeys.chunk(start), JSON.stringify(entries), 'application/json');
    }
    const body = `
      const { faceIndexOf } = await import('./lambdas/shared/face-index.ts');
      const { storeClient } = await import('./lambdas/shared/s3.ts');
      const { store } = storeClient(process.env, settings);
      const index = faceIndexOf(store);
      const cold = performance.now();
      await index.refresh();
      const loadMs = performance.now() - cold;
      const probe = Array.from({ length: 1024 }, (_, i) => Math.sin(i));
      const times = [];
      for (let i = 0; i < 7; i++) {
        const at = performance.now();
        index.nearest(probe, 'new');
        times.push(performance.now() - at);
      }
      times.sort((a, b) => a - b);
      return { size: index.size, loadMs, nearestMs: times[3] };`;
    const { result, peakMb, ms } = await inOwnProcess(body, {}, env);
    out(`The face index at ${faces.toLocaleString('en')} faces (1024 dimensions, a byte each), in check-base's process`);
    out(`  a cold read of its ${faces / chunk} chunks ${(result.loadMs / 1000).toFixed(1)} s from the embedded S3; the nearest of ${result.size.toLocaleString('en')} faces to a new base ${result.nearestMs.toFixed(0)} ms (median of 7); in all ${againstFunction('check-base', ms, peakMb)}`);
  } finally {
    await close();
  }
  out();
}

// `npm run bench -- report marking` runs those sections only.
const sections: Record<string, () => unknown> = { plan: planBench, workflow: workflowBench, split: splitBench, bundle: bundleBench, identity: identityBench, cli: cliBench, batch: batchBench, 'two-batches': twoBatchesBench, 'stale-plan': stalePlanBench, 'api-modes': apiModesBench, report: reportBench, marking: markingBench, faces: facesBench, rounds: roundsBench };
const chosen = process.argv.slice(2);
for (const name of chosen) if (!sections[name]) throw new Error(`no bench section ${name}: ${Object.keys(sections).join(', ')}`);
for (const [name, section] of Object.entries(sections)) if (chosen.length === 0 || chosen.includes(name)) await section();
