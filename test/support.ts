import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, onTestFinished } from 'vitest';
import { startDynaliteServer, type DynamoDbServer } from './dynamodb.ts';
import { generateBase } from '../lambdas/generate-base/core.ts';
import { generateGrid } from '../lambdas/generate-grid/core.ts';
import type { TurnLater } from '../lambdas/shared/image-provider.ts';
import { startLocalEnvironment, type LocalEnvironment, type LocalEnvironmentOptions } from '../local/environment.ts';
import type { RecordedRequest } from '../local/offline-openai.ts';
import { localStageRoles, runLocally } from '../local/runner.ts';
import { asStage } from '../local/iam.ts';
import { stages, type StageName } from '../lambdas/stages.ts';
import type { Deps } from '../lambdas/shared/stage.ts';
import type { BatchReport, BatchSummary } from '../lambdas/shared/batch.ts';
import type { TileFormat } from '../lambdas/shared/keys.ts';
import persona from '../events/persona.json' with { type: 'json' };

export { persona };

/**
 * A fresh embedded S3 and offline backend on loopback for the test that calls it: closed, and its
 * data removed, when that test finishes (or at close(), which may come first).
 */
export async function startTestEnvironment(options: Partial<LocalEnvironmentOptions> = {}): Promise<LocalEnvironment & { dir: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'avatars-test-'));
  const env = await startLocalEnvironment({ ...options, dataDir: dir, env: { IMAGE_TIMEOUT_MS: '30000', ...options.env } });
  let closed: Promise<void> | undefined;
  const close = () => (closed ??= env.close().then(() => rmSync(dir, { recursive: true, force: true })));
  onTestFinished(close);
  return { ...env, dir, close };
}

/**
 * A folder in the system's temporary folder, removed after the calling test file. Called at a
 * file's top level. Also the outdir of every app a test builds: an App given none leaves a
 * cdk.out folder behind for each one.
 */
export function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), `avatars-${prefix}-`));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The calls a backend was paid for: images, not prompts, moderation checks or chat. */
export function imageCalls(backend: { requests: RecordedRequest[] }): RecordedRequest[] {
  return backend.requests.filter((r) => r.route === 'generations' || r.route === 'edits');
}

export const cliPath = join(import.meta.dirname, '..', 'local', 'cli.mjs');
export const eventsDir = join(import.meta.dirname, '..', 'events');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * What keeps a child process on the suite's clock: libfaketime's variables when the suite runs
 * under `faketime`, so certificates made here are as valid there.
 */
export function sameClock(): Record<string, string> {
  return Object.fromEntries(Object.entries(process.env).filter((e): e is [string, string] => /^(LD_PRELOAD|FAKETIME\w*)$/.test(e[0]) && e[1] !== undefined));
}

/** Runs `avatars …` as a user would, in `cwd`, with only PATH, HOME and `env` set (`cli`: another copy's). */
export async function avatars(cwd: string, args: string[], env: Record<string, string> = {}, cli = cliPath): Promise<CliResult> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [cli, ...args], { cwd, env: { PATH: process.env.PATH, HOME: cwd, ...sameClock(), ...env } });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as CliResult;
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/**
 * Many personas at once on a small machine: image calls get the time a real one would. Their
 * teams are copies of one persona and the offline backend knows six people, so the base checks
 * would find look-alikes among them that these specs are not about: they are off here
 * (test/lookalikes.test.ts is about them).
 */
export const startBatchWorld = (options: Partial<LocalEnvironmentOptions> = {}) =>
  startTestEnvironment({ ...options, env: { IMAGE_TIMEOUT_MS: '60000', LOOKALIKE_POLICY: 'off', ...options.env } });

export const personaLine = (id: string, extra: Record<string, unknown> = {}) => JSON.stringify({ persona: { ...persona, id }, ...extra });
export const team = (n: number, prefix = 'member') => Array.from({ length: n }, (_, i) => personaLine(`${prefix}-${i + 1}`));

/** A batch of these JSON lines run locally as the batch state machine runs it; its report. */
export async function runBatch(w: LocalEnvironment, lines: string[], batchId: string, input: Record<string, unknown> = {}): Promise<BatchReport> {
  const personasKey = `batches/${batchId}/personas.jsonl`;
  await w.deps.store.put(personasKey, `${lines.join('\n')}\n`, 'application/x-ndjson');
  const outcome = await runLocally<BatchSummary>({ machine: 'batch', input: { personasKey, ...input }, runId: batchId, deps: w.deps });
  if (outcome.status !== 'SUCCEEDED') throw new Error(`batch ${batchId} failed: ${outcome.error}: ${outcome.cause}`);
  return JSON.parse(await w.deps.store.getText(outcome.output.reportKey)) as BatchReport;
}


/** The byte offset of the middle of the image data: PNG's first IDAT, JPEG's scan, WebP's bitstream. */
function pixelDataMiddle(image: Buffer, format: TileFormat): number {
  if (format === 'png') {
    const at = image.indexOf('IDAT', 8, 'latin1');
    return at + 4 + Math.floor(image.readUInt32BE(at - 4) / 2);
  }
  if (format === 'jpeg') {
    // Segment by segment to the scan: FF DA may also occur inside a segment's data (a certificate's bytes).
    let sos = 2;
    while (image[sos + 1] !== 0xda) sos += 2 + image.readUInt16BE(sos + 2);
    const start = sos + 2 + image.readUInt16BE(sos + 2);
    let at = start + Math.floor((image.length - 2 - start) / 2);
    // A byte whose change makes no marker (0xFF) and undoes no stuffing.
    while (image[at] === 0xff || image[at] === 0xfe || image[at - 1] === 0xff) at++;
    return at;
  }
  const chunk = ['VP8 ', 'VP8L'].map((type) => image.indexOf(type, 12, 'latin1')).find((i) => i > 0)!;
  return chunk + 8 + Math.floor(image.readUInt32LE(chunk + 4) / 2);
}

/** The image with one byte of its pixel data changed, the rest as it was. */
export function withOnePixelByteChanged(image: Buffer, format: TileFormat): Buffer {
  const copy = Buffer.from(image);
  copy[pixelDataMiddle(image, format)]! ^= 0x01;
  return copy;
}

/** Which container chunk or segment holds a C2PA manifest in each format. */
export function holdsC2paWhereExpected(image: Buffer, format: TileFormat): boolean {
  if (format === 'png') return image.includes('caBX', 8, 'latin1');
  if (format === 'webp') return image.includes('C2PA', 12, 'latin1');
  // APP11 (0xFFEB) segments carrying JUMBF ('JP' common identifier).
  for (let at = image.indexOf(Buffer.from([0xff, 0xeb])); at >= 0; at = image.indexOf(Buffer.from([0xff, 0xeb]), at + 2)) {
    if (image.toString('latin1', at + 4, at + 6) === 'JP') return true;
  }
  return false;
}

/** dynalite, a DynamoDB-compatible server, on loopback for the calling test (in memory). */
export async function startDynamoDb(): Promise<DynamoDbServer> {
  const server = await startDynaliteServer();
  onTestFinished(server.close);
  return server;
}

/** Calls a stage's core as its deployed role would: every AWS call it makes checked against the synthesized policy. */
export async function invoke<S extends StageName>(w: { deps: Deps }, stage: S, event: Parameters<(typeof stages)[S]>[0]): Promise<Awaited<ReturnType<(typeof stages)[S]>>> {
  const core = stages[stage] as unknown as (e: unknown, d: Deps) => Promise<Awaited<ReturnType<(typeof stages)[S]>>>;
  return asStage((await localStageRoles(w.deps))[stage], () => core(event, w.deps));
}

/** What a spec calling an image stage's core gets: its drawing (no other caller takes turns here, so each turn comes at once). */
function drawnNow<T extends object>(result: T | TurnLater): T {
  if ('later' in result) throw new Error(`the call's turn comes at ${result.later}: these specs expect it at once`);
  return result;
}
export const generateBaseNow = async (...args: Parameters<typeof generateBase>) => drawnNow(await generateBase(...args));
export const generateGridNow = async (...args: Parameters<typeof generateGrid>) => drawnNow(await generateGrid(...args));
