import { join, resolve } from 'node:path';
import { diversityLines } from '../../lambdas/report-batch/contact-sheet.ts';
import type { BatchPlan, BatchReport, BatchSummary } from '../../lambdas/shared/batch.ts';
import { projectContext } from '../../infra/context.ts';
import { batchKeys } from '../../lambdas/shared/keys.ts';
import { ErrorNames } from '../../lambdas/shared/errors.ts';
import { describeProblem } from '../../lambdas/shared/run-input.ts';
import { attemptName, MAX_ATTEMPTS } from '../../lambdas/shared/run-name.ts';
import type { ObjectStore } from '../../lambdas/shared/store.ts';
import { nothingToRun, readBatchFile } from '../batch-file.ts';
import { startLocalEnvironment, UNLIMITED_IMAGES_PER_MINUTE } from '../environment.ts';
import { batchFolder, saveReport } from '../outputs.ts';
import { describeFiredFault, parseFaults } from '../faults.ts';
import { runLocally, type ProgressEvent } from '../runner.ts';
import { UsageError } from './common.ts';
import type { RunFlags } from './run.ts';

export type BatchFlags = Omit<RunFlags, 'verbose'> & { budgetUsd?: number; openaiBatch?: boolean; queueLimit?: number };

/** What the batch is doing, from its events: each persona's state and every image call. */
class BatchProgress {
  readonly personas = new Map<number, 'waiting' | 'running' | 'done' | 'failed'>();
  readonly imageCalls: number[] = [];
  plan: BatchPlan | undefined;
  /** Batch mode: its images are drawn in OpenAI batch rounds before the personas run. */
  openAiBatch = false;
  private rounds = 0;
  /** When each persona's run began, and how long the finished ones took. */
  private readonly runningSince = new Map<number, number>();
  private readonly runMs: number[] = [];

  onBatchEvent(event: ProgressEvent): void {
    if (event.kind === 'entered' && event.state === 'SubmitRound') this.rounds++;
    if (event.kind !== 'entered' || event.index === undefined) return;
    const state = { WaitTurn: 'waiting', RunPersona: 'running', PersonaDone: 'done', PersonaFailed: 'failed' } as const;
    const now = state[event.state as keyof typeof state];
    if (!now) return;
    this.personas.set(event.index, now);
    if (now === 'running') this.runningSince.set(event.index, event.at);
    const since = this.runningSince.get(event.index);
    if ((now === 'done' || now === 'failed') && since !== undefined) this.runMs.push(event.at - since);
  }

  onPersonaEvent(event: ProgressEvent): void {
    // Each image call is a Generate… Task that ended, whether it drew or not.
    if ((event.kind === 'exited' || event.kind === 'failed') && event.stateType === 'Task' && /^Generate(Base|Grid)/.test(event.state)) this.imageCalls.push(event.at);
    // …but one that answered that its turn comes later made none.
    if (event.kind === 'entered' && /^WaitForGenerate\w+Turn$/.test(event.state)) this.imageCalls.pop();
  }

  count(status: string): number {
    return [...this.personas.values()].filter((s) => s === status).length;
  }

  /** Image calls a minute over the last minute (or since the first call). */
  rate(now = Date.now()): number {
    const recent = this.imageCalls.filter((t) => t > now - 60_000);
    if (recent.length < 2) return recent.length;
    return (recent.length * 60_000) / Math.max(now - recent[0]!, 1000);
  }

  line(): string {
    const plan = this.plan;
    if (!plan) return 'planning…';
    const waiting = plan.toRun - this.count('running') - this.count('done') - this.count('failed');
    // Until the last persona's turn, then about one persona's run.
    const typicalRun = this.runMs.length > 0 ? this.runMs.reduce((a, b) => a + b, 0) / this.runMs.length : 0;
    const left = (Math.max(0, Date.parse(plan.lastTurn) - Date.now()) + typicalRun) / 1000;
    if (this.openAiBatch && this.personas.size === 0) return `OpenAI batch round ${this.rounds}: waiting for OpenAI to draw`;
    const limit = plan.imagesPerMinute < UNLIMITED_IMAGES_PER_MINUTE ? ` (limit ${plan.imagesPerMinute})` : '';
    if (this.openAiBatch) return `${this.count('done')} done, ${this.count('failed')} failed, ${this.count('running')} running, drawn in ${this.rounds} OpenAI batch rounds`;
    return `${this.count('done')} done, ${this.count('failed')} failed, ${this.count('running')} running, ${waiting} waiting · ${this.rate().toFixed(0)} images/min${limit} · ${left > 0 ? `about ${Math.ceil(left)} s left` : 'finishing'}`;
  }
}

/** The first attempt of this batch that has not run here yet: reruns keep earlier reports. */
async function freshAttempt(store: ObjectStore, name: string): Promise<string> {
  for (let n = 1; n <= MAX_ATTEMPTS; n++) {
    if (!(await store.getJsonIfExists(batchKeys(attemptName(name, n)).plan))) return attemptName(name, n);
  }
  throw new UsageError(`batch ${name} has run ${MAX_ATTEMPTS} times in this --data folder; use another --data folder`);
}

export async function batchCommand(file: string, flags: BatchFlags): Promise<number> {
  const batch = await readBatchFile(file, flags);
  const log = (line: string) => {
    if (!flags.quiet) process.stderr.write(`${line}\n`);
  };
  for (const problem of batch.problems.slice(0, 20)) log(`✗ ${file}: ${describeProblem(problem)}`);
  if (batch.problems.length > 20) log(`✗ ${file}: ${batch.problems.length - 20} more lines are not valid personas`);
  if (batch.personas === 0) {
    process.stderr.write(`✗ ${file}: no valid personas: nothing to run\n`);
    return 1;
  }
  const progress = new BatchProgress();
  const env = await startLocalEnvironment({
    // Child executions run here, in a local Step Functions that keeps names as the service does.
    env: { ...process.env, STATE_MACHINE_ARN: undefined, BATCH_STATE_MACHINE_ARN: undefined },
    dataDir: flags.data,
    faults: parseFaults(flags.fault),
    onFault: (fired) => log(`${process.stderr.isTTY && !flags.quiet ? '\r\x1b[K' : ''}${describeFiredFault(fired)}`),
    latencyMs: flags.latency,
    ...(flags.rpm ? { imagesPerMinute: flags.rpm } : {}),
    ...(flags.queueLimit ? { batchQueueLimit: flags.queueLimit } : {}),
    stepFunctions: { retryDelayMs: flags.retryDelay, onProgress: (execution, event) => (execution.machine === 'persona' ? progress.onPersonaEvent(event) : undefined) },
  });
  try {
    const { store } = env.deps;
    const nothing = await nothingToRun(file, batch, store);
    if (nothing) {
      process.stdout.write(`${nothing}\n`);
      return batch.problems.length === 0 ? 0 : 1;
    }
    const batchId = await freshAttempt(store, batch.name);
    const personasKey = batchKeys(batchId).personas;
    await store.put(personasKey, batch.body, 'application/x-ndjson');
    const limit = env.deps.settings.imagesPerMinute;
    const paced = limit < UNLIMITED_IMAGES_PER_MINUTE;
    const defaulted = process.env.IMAGES_PER_MINUTE === undefined && projectContext().imagesPerMinute === undefined && env.images === 'openai';
    const openAiBatch = flags.openaiBatch ?? env.deps.settings.imageApiMode === 'batch';
    progress.openAiBatch = openAiBatch;
    log(
      `batch ${batchId}: ${batch.personas} personas from ${file}, ` +
        (openAiBatch
          ? `images drawn through OpenAI\u2019s Batch API in rounds, at half the price, outside IMAGES_PER_MINUTE (within 24 h; looked at every ${env.deps.settings.openAiBatchPollSeconds} s, then less often)`
          : paced
            ? `image calls paced to ${limit}/min (IMAGES_PER_MINUTE${defaulted ? ': the default; set it to your account\u2019s image limit' : ''})`
            : 'no image rate limit to pace to (the offline backend has none unless --rpm)'),
    );
    for (const note of env.notes) log(`⚠ ${note}`);

    const live = process.stderr.isTTY && !flags.quiet;
    const show = () => (live ? process.stderr.write(`\r\x1b[K${progress.line()}`) : log(progress.line()));
    const ticker = setInterval(show, live ? 500 : 10_000);
    const outcome = await runLocally<BatchSummary>({
      machine: 'batch',
      input: { personasKey, ...(flags.budgetUsd !== undefined ? { budgetUsd: flags.budgetUsd } : {}), ...(flags.openaiBatch ? { openAiBatch: true } : {}) },
      runId: batchId,
      deps: env.deps,
      retryDelayMs: flags.retryDelay,
      children: env.stepFunctions!.children,
      onProgress: (event) => {
        progress.onBatchEvent(event);
        if (event.state === 'PlanBatch' && event.kind === 'exited') {
          store.getJsonIfExists<BatchPlan>(batchKeys(batchId).plan).then((plan) => (progress.plan = plan), () => undefined);
        }
      },
    }).finally(() => clearInterval(ticker));
    if (live) process.stderr.write('\r\x1b[K');
    if (outcome.status !== 'SUCCEEDED') {
      process.stderr.write(`✗ batch ${batchId} failed: ${outcome.error}: ${outcome.cause}\n`);
      return 1;
    }
    const report = JSON.parse(await store.getText(outcome.output.reportKey)) as BatchReport;
    const outDir = resolve(flags.out ?? join('out', 'batches', batchFolder(batchId, env.deps.clock)));
    await saveReport(store, report, outDir);
    const calls = progress.imageCalls;
    const minutes = calls.length > 1 ? (calls.at(-1)! - calls[0]!) / 60_000 : 0;
    const rate = minutes > 0 ? (calls.length - 1) / minutes : 0;
    const failed = report.personas.filter((p) => p.status === 'FAILED');
    const refused = failed.filter((p) => p.error === ErrorNames.BudgetExhausted);
    const plan = await store.getJsonIfExists<BatchPlan>(batchKeys(batchId).plan);
    const invalid = report.personas.filter((p) => p.status === 'SKIPPED' && !p.personaId);
    // The mark says what the exit code says: ✓ only when nothing failed and every line was a persona.
    const clean = failed.length === 0 && invalid.length === 0;
    if (flags.json) process.stdout.write(`${JSON.stringify({ ...report, outDir }, null, 2)}\n`);
    else {
      for (const p of failed) process.stdout.write(`✗ ${p.personaId} (line ${p.line}): ${p.error}: ${p.cause}\n`);
      for (const p of report.personas.filter((e) => e.status === 'SKIPPED')) process.stdout.write(`- ${p.personaId ?? '(invalid)'} (line ${p.line}): skipped, ${p.reason}\n`);
      const { counts } = report;
      process.stdout.write(
        [
          '',
          `${clean ? '✓' : '✗'} batch ${batchId}: ${counts.SUCCEEDED} published, ${counts.FAILED} failed, ${counts.SKIPPED} skipped, in ${(outcome.ms / 1000).toFixed(1)} s`,
          report.openAiBatch
            ? `  OpenAI Batch API: ${report.openAiBatch.batches.length} batches in ${report.openAiBatch.rounds} rounds, no call to the image endpoints; images $${report.openAiBatch.costUsd.toFixed(4)}, against $${report.openAiBatch.syncCostUsd.toFixed(4)} in sync mode`
            : `  ${calls.length} image calls${rate > 0 ? `, ${rate.toFixed(1)}/min from first to last${paced ? ` (${((rate / limit) * 100).toFixed(0)}% of the ${limit}/min limit)` : ''}` : ''}`,
          ...(report.diversity ? diversityLines(report.diversity).map((l) => `  ${l}`) : []),
          `  report: ${join(outDir, 'report.json')}; open ${join(outDir, 'index.html')}`,
          ...(refused.length > 0
            ? [`  ${refused.length} not run: the batch budget of $${plan?.budgetUsd?.toFixed(2) ?? '?'} ran out; run the same file again with a larger --budget-usd: published personas are not paid for twice`]
            : []),
          ...(failed.length > refused.length ? ['  run the same command again once the cause is fixed: published personas are not paid for twice'] : []),
          '',
        ].join('\n'),
      );
    }
    return clean ? 0 : 1;
  } finally {
    await env.close();
  }
}
