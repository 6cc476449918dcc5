import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, onTestFinished } from 'vitest';
import { startLocalEnvironment, type LocalEnvironment, type LocalEnvironmentOptions } from '../local/environment.ts';
import type { RecordedRequest } from '../local/offline-openai.ts';
import { runLocally } from '../local/runner.ts';
import type { BatchReport, BatchSummary } from '../lambdas/report-batch/core.ts';
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

/** Runs `avatars …` as a user would, in `cwd`, with only PATH, HOME and `env` set (`cli`: another copy's). */
export async function avatars(cwd: string, args: string[], env: Record<string, string> = {}, cli = cliPath): Promise<CliResult> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [cli, ...args], { cwd, env: { PATH: process.env.PATH, HOME: cwd, ...env } });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as CliResult;
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** Many personas at once on a small machine: image calls get the time a real one would. */
export const startBatchWorld = (options: Partial<LocalEnvironmentOptions> = {}) => startTestEnvironment({ ...options, env: { IMAGE_TIMEOUT_MS: '60000', ...options.env } });

export const personaLine = (id: string, extra: Record<string, unknown> = {}) => JSON.stringify({ persona: { ...persona, id }, ...extra });
export const team = (n: number, prefix = 'member') => Array.from({ length: n }, (_, i) => personaLine(`${prefix}-${i + 1}`));

/** A batch of these JSON lines run locally as the batch state machine runs it; its report. */
export async function runBatch(w: LocalEnvironment, lines: string[], batchId: string): Promise<BatchReport> {
  const personasKey = `batches/${batchId}/personas.jsonl`;
  await w.deps.store.put(personasKey, `${lines.join('\n')}\n`, 'application/x-ndjson');
  const outcome = await runLocally<BatchSummary>({ machine: 'batch', input: { personasKey }, runId: batchId, deps: w.deps });
  if (outcome.status !== 'SUCCEEDED') throw new Error(`batch ${batchId} failed: ${outcome.error}: ${outcome.cause}`);
  return JSON.parse(await w.deps.store.getText(outcome.output.reportKey)) as BatchReport;
}

