import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { projectRoot } from '../infra/context.ts';
import { estimatedCost } from '../lambdas/plan-batch/core.ts';
import { referenceOf } from '../lambdas/submit-round/core.ts';
import { budgetTableClient, dynamoStore, spendKeys } from '../lambdas/shared/governor.ts';
import { FILE_UPLOADS_PER_MINUTE, pacer } from '../lambdas/shared/openai-batch.ts';
import OpenAI from 'openai';
import { loadRounds, roundsSpent, type RoundStatus } from '../lambdas/shared/rounds.ts';
import { parseRunRequest } from '../lambdas/shared/persona.ts';
import { settingsFromEnv } from '../lambdas/shared/settings.ts';
import type { BatchPlan, BatchReport } from '../lambdas/shared/batch.ts';
import { startOfflineBackend } from '../local/offline-openai.ts';
import { avatars, imageCalls, invoke, personaLine, runBatch, startBatchWorld, startDynamoDb, team, tempDir } from './support.ts';

const work = tempDir('openai-batch');

/** Each persona's lines over every OpenAI batch: what was asked of the API for it. */
const linesPer = (lines: { custom_id: string }[], report: BatchReport) =>
  Object.fromEntries(report.personas.map((p) => [p.personaId, lines.filter((l) => Number(l.custom_id.split(':')[0]) === p.line).map((l) => l.custom_id.split(':')[1])]));

/** A batch of three planned for OpenAI's Batch API in a world with a budget table, its first round submitted. */
async function firstRound(batchId: string) {
  const dynamo = await startDynamoDb();
  const world = await startBatchWorld({ env: { ...dynamo.env, IMAGE_BUDGET_TABLE: 'image-budget', OPENAI_BATCH_POLL_SECONDS: '1' } });
  const personasKey = `batches/${batchId}/personas.jsonl`;
  await world.deps.store.put(personasKey, `${team(3, batchId).join('\n')}\n`, 'application/x-ndjson');
  const plan = await invoke(world, 'plan-batch', { personasKey, batchId, input: { openAiBatch: true, budgetUsd: 5 } });
  return { dynamo, world, plan, round: await invoke(world, 'submit-round', { plan }) };
}

/** CollectRound invoked until the round is collected: what each invocation answered. */
async function collectUntilDone(world: Parameters<typeof invoke>[0], plan: BatchPlan, round: RoundStatus): Promise<RoundStatus[]> {
  const statuses: RoundStatus[] = [];
  for (let polls = 0; round.status !== 'collected' && polls < 100; polls++) {
    await new Promise((resolve) => setTimeout(resolve, 100)); // the offline batch moves a step every 200 ms
    round = await invoke(world, 'collect-round', { plan, round });
    statuses.push(round);
  }
  return statuses;
}

describe('a batch through OpenAI\u2019s Batch API', () => {
  it('publishes every persona with no call to the image endpoints, each image asked as a line of an uploaded batch file', async () => {
    const backend = await startOfflineBackend({ batchStepMs: 100 });
    onTestFinished(backend.close);
    writeFileSync(join(work, 'six.jsonl'), `${team(5, 'bulk').join('\n')}\n${personaLine('bulk-8', { images: 8 })}\n`);
    // Six copies of one persona: the base checks' look-alikes among them are test/lookalikes.test.ts's subject.
    const env = { OPENAI_API_KEY: 'sk-test', OPENAI_BASE_URL: backend.baseUrl, PROMPT_PROVIDER: 'template', OPENAI_BATCH_POLL_SECONDS: '1', LOOKALIKE_POLICY: 'off' };
    const run = await avatars(work, ['batch', 'six.jsonl', '--openai-batch', '--json', '--data', 'data-six'], env);
    expect(run.code, run.stderr).toBe(0);
    const report = JSON.parse(run.stdout) as BatchReport;
    expect(report.counts).toMatchObject({ total: 6, SUCCEEDED: 6, FAILED: 0 });
    expect(report.personas.at(-1)!.avatars).toHaveLength(8);
    expect(imageCalls(backend)).toEqual([]);
    // A base per persona, then a grid per four avatars, each a line of OpenAI's batch request shape.
    expect(Object.values(linesPer(backend.batchLines, report))).toEqual([...Array(5).fill(['base', 'grid-0']), ['base', 'grid-0', 'grid-1']]);
    for (const line of backend.batchLines) {
      expect(line).toMatchObject({ custom_id: expect.any(String), method: 'POST', url: expect.stringMatching(/^\/v1\/images\/(generations|edits)$/) });
      expect(line.body).toMatchObject({ model: 'gpt-image-2', prompt: expect.any(String), n: 1, size: expect.any(String), quality: expect.any(String) });
      if (line.url === '/v1/images/edits') expect((line.body.images as { image_url: string }[])[0]!.image_url).toMatch(/^data:image\/png;base64,iVBOR/);
    }
    expect(report.openAiBatch!.costUsd).toBeGreaterThan(0);
    expect(report.openAiBatch!.costUsd * 2).toBeCloseTo(report.openAiBatch!.syncCostUsd, 6);
  }, 120_000);

  it('estimates a persona at half its sync price', () => {
    const settings = settingsFromEnv({});
    const request = parseRunRequest(JSON.parse(personaLine('priced', { images: 8 })));
    expect(estimatedCost(request, settings, 'batch')).toBeCloseTo(estimatedCost(request, settings, 'sync') / 2, 9);
  });

  it('draws a failed line again in the next round, and publishes every persona', async () => {
    const world = await startBatchWorld({ faults: [{ kind: 'server-error', times: 1 }] });
    const report = await runBatch(world, team(3, 'retry'), 'retry', { openAiBatch: true });
    expect(report.counts).toMatchObject({ SUCCEEDED: 3, FAILED: 0 });
    const lines = linesPer(world.backend!.batchLines, report);
    // The first line failed: its base was asked again beside the others' grids, then its own grid.
    expect(lines['retry-1']).toEqual(['base', 'base', 'grid-0']);
    expect(report.openAiBatch!.rounds).toBe(3);
  }, 120_000);

  it('names the base by file id when OPENAI_BATCH_IMAGE_INPUT=file-id, and asks a separate-mode persona\u2019s images in one edit', async () => {
    const world = await startBatchWorld({ env: { OPENAI_BATCH_IMAGE_INPUT: 'file-id' } });
    const report = await runBatch(world, [personaLine('by-id'), personaLine('apart', { mode: 'separate', images: 3 })], 'by-id', { openAiBatch: true });
    expect(report.counts).toMatchObject({ SUCCEEDED: 2 });
    expect(report.personas[1]!.avatars).toHaveLength(3);
    const edits = world.backend!.batchLines.filter((l) => l.url === '/v1/images/edits');
    for (const edit of edits) expect((edit.body.images as { file_id?: string }[])[0]!.file_id).toMatch(/^file-/);
    expect(edits.map((e) => e.body.n)).toEqual([1, 3]);
  }, 120_000);

  it('names bases by data URL while a round’s lines can carry them, and by file id past that, under OPENAI_BATCH_IMAGE_INPUT=auto', async () => {
    const world = await startBatchWorld();
    const api = world.deps.text!;
    const personaWithBase = async (id: string) => {
      const key = `runs/${id}/r/base.png`;
      await world.deps.store.put(key, readFileSync(join(projectRoot, 'local', 'faces', 'astronaut.png')), 'image/png');
      return { line: 1, personaId: id, runId: 'r', mode: 'grid' as const, calls: [{ id: 'base', count: 1, tries: 1, drawn: { keys: [key], format: 'png' as const } }, { id: 'grid-0', count: 1, tries: 0 }, { id: 'grid-1', count: 1, tries: 0 }] };
    };
    // Room for one base carried in its two grids' lines (the portrait is about 0.4 MB), not for two.
    const inline = { bytesLeft: 1.5 * 2 ** 20 };
    const upload = async () => undefined;
    const first = await referenceOf(world.deps, api, (await personaWithBase('a')) as never, upload, inline);
    const second = await referenceOf(world.deps, api, (await personaWithBase('b')) as never, upload, inline);
    expect(first.image_url).toMatch(/^data:image\/png;base64,iVBOR/);
    expect(second).toEqual({ file_id: expect.stringMatching(/^file-/) });
    expect(world.deps.settings.openAiBatchImageInput).toBe('auto');
  });

  it('pays for a batch\u2019s personas from its budget at batch price: one that fits three personas at half price runs all three', async () => {
    const world = await startBatchWorld();
    // Estimated at about $0.117 a persona in sync mode, $0.0585 in batch mode.
    const report = await runBatch(world, team(3, 'thrifty'), 'thrifty', { openAiBatch: true, budgetUsd: 0.18 });
    expect(report.counts).toMatchObject({ SUCCEEDED: 3, FAILED: 0 });
    const sync = await runBatch(world, team(3, 'costly'), 'costly', { budgetUsd: 0.18 });
    expect(sync.counts).toMatchObject({ SUCCEEDED: 1, FAILED: 2 });
  }, 120_000);

  it('keeps what an expired OpenAI batch drew, fails the rest, and the same file again draws only what is missing', async () => {
    const world = await startBatchWorld({ faults: [{ kind: 'expire', times: 1 }] });
    const first = await runBatch(world, team(4, 'late'), 'late', { openAiBatch: true });
    expect(first.personas.map((p) => p.status)).toEqual(['SUCCEEDED', 'SUCCEEDED', 'FAILED', 'FAILED']);
    expect(first.personas[2]).toMatchObject({ error: 'NotDrawnInBatch', cause: expect.stringMatching(/OpenAI batch \S+ ended expired before drawing it \(2 of 4 requests done\)/) });
    const afterFirst = world.backend!.batchLines.length;
    const again = await runBatch(world, team(4, 'late'), 'late-2', { openAiBatch: true });
    expect(again.personas.map((p) => p.status)).toEqual(['SKIPPED', 'SKIPPED', 'SUCCEEDED', 'SUCCEEDED']);
    // Only the two that were never drawn: a base and a grid each, nothing paid twice.
    expect(world.backend!.batchLines.slice(afterFirst).map((l) => l.custom_id.split(':').slice(0, 2).join(':')).sort()).toEqual(['3:base', '3:grid-0', '4:base', '4:grid-0']);
  }, 120_000);

  it('gives up on a line after three tries, and the same file again reuses the base it drew, asking only for the grid', async () => {
    const world = await startBatchWorld({ faults: [{ kind: 'server-error', times: 3, route: 'edits' }] });
    const first = await runBatch(world, team(1, 'stuck'), 'stuck', { openAiBatch: true });
    expect(first.personas.map((p) => p.status)).toEqual(['FAILED']);
    expect(first.personas[0]!.cause).toMatch(/drawn 3 times in OpenAI batches without a usable image: OpenAI batch \S+, line 1:grid-0:3:r4: 500/);
    const afterFirst = world.backend!.batchLines.length;
    const again = await runBatch(world, team(1, 'stuck'), 'stuck-2', { openAiBatch: true });
    expect(again.personas.map((p) => p.status)).toEqual(['SUCCEEDED']);
    expect(world.backend!.batchLines.slice(afterFirst).map((l) => l.custom_id.split(':').slice(0, 2).join(':'))).toEqual(['1:grid-0']);
  }, 120_000);

  it('draws a refused line again from a safer rewrite of its prompt, in the next round', async () => {
    const world = await startBatchWorld({ faults: [{ kind: 'policy', times: 1, route: 'generations' }] });
    const report = await runBatch(world, team(1, 'refused'), 'refused', { openAiBatch: true });
    expect(report.counts).toMatchObject({ SUCCEEDED: 1 });
    const [first, second] = world.backend!.batchLines.filter((l) => l.url === '/v1/images/generations');
    expect(second!.body.prompt).not.toEqual(first!.body.prompt);
    expect(await world.deps.store.getText(`runs/refused-1/${report.personas[0]!.name}/base-prompt-safer.txt`)).toBe(second!.body.prompt);
  }, 120_000);

  it('draws a grid the identity check refused again in a later round, and runs its persona again under its next attempt', async () => {
    const world = await startBatchWorld({ faults: [{ kind: 'impostor', times: 1 }] });
    const report = await runBatch(world, team(2, 'lookalike'), 'lookalike', { openAiBatch: true });
    expect(report.counts).toMatchObject({ SUCCEEDED: 2, FAILED: 0 });
    const [first] = report.personas;
    expect(first!.name).toMatch(/-2$/);
    // Its base and the other persona's images were drawn once; only the refused grid twice.
    expect(linesPer(world.backend!.batchLines, report)).toEqual({ 'lookalike-1': ['base', 'grid-0', 'grid-0'], 'lookalike-2': ['base', 'grid-0'] });
    expect(report.openAiBatch!.rounds).toBe(3);
  }, 120_000);

  it('sends again, in halves, a batch OpenAI failed for its queue limit after creating it, paying nothing for it', async () => {
    const world = await startBatchWorld({ faults: [{ kind: 'rate-limit', times: 1, route: 'batches' }] });
    const report = await runBatch(world, team(4, 'queued'), 'queued', { openAiBatch: true });
    expect(report.counts).toMatchObject({ SUCCEEDED: 4 });
    const lines = world.backend!.batchLines.map((l) => l.custom_id.replace(/:\d+:r(\d+)$/, '@$1'));
    // The bases' batch of four, failed whole and sent again; then the grids, each line once.
    expect(lines).toEqual(['1:base@1', '2:base@1', '3:base@1', '4:base@1', '1:base@2', '2:base@2', '3:base@2', '4:base@2', '1:grid-0@3', '2:grid-0@3', '3:grid-0@3', '4:grid-0@3']);
    // In batches of two once the queue limit refused four.
    expect(report.openAiBatch!.batches).toHaveLength(1 + 2 + 2);
    expect(report.openAiBatch!.costUsd).toBeCloseTo(report.openAiBatch!.syncCostUsd / 2, 6);
  }, 120_000);

  it('gives back what a round reserved when it fails mid-way: the batch budget holds only what was paid', async () => {
    const { dynamo, world, plan, round } = await firstRound('leaky');
    // Round 1 drew the bases; collected, it has paid for them.
    await collectUntilDone(world, plan, round);
    const state = (await loadRounds(world.deps.store, 'leaky'))!;
    const paid = state.costUsd;
    expect(paid).toBeGreaterThan(0);
    // A base gone: round 2 reads it for its grid's line (an AccessDenied under the role, no s3:ListBucket), after others reserved theirs.
    await world.deps.store.delete(state.personas[2]!.calls[0]!.drawn!.keys[0]!);
    const error = (await invoke(world, 'submit-round', { plan }).catch((e: unknown) => e)) as Error;
    expect(error.name).toBe('AccessDenied');
    const budget = dynamoStore(budgetTableClient(dynamo.env), 'image-budget');
    expect(await budget.amount(spendKeys.batch('leaky'))).toBeCloseTo(paid, 6);
  }, 120_000);

  it('runs a SubmitRound killed mid-way again from its checkpoint: the batch it made adopted, nothing sent or reserved twice, and the batch completes', async () => {
    const dynamo = await startDynamoDb();
    let stage: ChildProcess | undefined;
    // Killed the moment OpenAI made its first batch, before the stage heard: a Lambda timing out there.
    const backend = await startOfflineBackend({ batchStepMs: 100, onBatchCreated: () => stage?.kill('SIGKILL') });
    onTestFinished(backend.close);
    const env = { OPENAI_API_KEY: 'sk-test', OPENAI_BASE_URL: backend.baseUrl, PROMPT_PROVIDER: 'template', IMAGE_BUDGET_TABLE: 'image-budget', OPENAI_BATCH_POLL_SECONDS: '1', ...dynamo.env };
    const world = await startBatchWorld({ env });
    const lines = team(3, 'killed');
    await world.deps.store.put('batches/killed/personas.jsonl', `${lines.join('\n')}\n`, 'application/x-ndjson');
    const plan = await invoke(world, 'plan-batch', { personasKey: 'batches/killed/personas.jsonl', batchId: 'killed', input: { openAiBatch: true, budgetUsd: 5 } });
    const script = `
      const { Logger } = await import('@aws-lambda-powertools/logger');
      const { depsFromEnv } = await import('./lambdas/shared/stage.ts');
      const { storeClient } = await import('./lambdas/shared/s3.ts');
      const { openAiClients } = await import('./lambdas/shared/openai.ts');
      const { governorClient } = await import('./lambdas/shared/governor.ts');
      const { submitRound } = await import('./lambdas/submit-round/core.ts');
      const deps = await depsFromEnv(process.env, new Logger({ logLevel: 'SILENT' }), [storeClient, openAiClients, governorClient]);
      await submitRound(JSON.parse(process.argv[1]), deps);
      console.log('not killed');`;
    stage = spawn(process.execPath, ['--input-type=module', '-e', script, JSON.stringify({ plan })], { cwd: projectRoot, env: { ...process.env, ...world.env, ...env, S3_SECRET_KEY: world.embeddedS3!.secretKey } });
    const [, signal] = (await once(stage, 'exit')) as [number | null, string | null];
    expect(signal).toBe('SIGKILL');
    expect(backend.batchLines.map((l) => l.custom_id)).toEqual(['1:base:1:r1', '2:base:1:r1', '3:base:1:r1']);
    // Run again as Step Functions would: the whole batch, whose SubmitRound finds the round half done.
    const report = await runBatch(world, lines, 'killed', { openAiBatch: true, budgetUsd: 5 });
    expect(report.counts).toMatchObject({ SUCCEEDED: 3, FAILED: 0 });
    expect(linesPer(backend.batchLines, report)).toEqual({ 'killed-1': ['base', 'grid-0'], 'killed-2': ['base', 'grid-0'], 'killed-3': ['base', 'grid-0'] });
    // Reserved once, settled once: the batch's budget holds what its images cost, nothing more.
    const budget = dynamoStore(budgetTableClient(dynamo.env), 'image-budget');
    expect(await budget.amount(spendKeys.batch('killed'))).toBeCloseTo(report.openAiBatch!.costUsd, 6);
  }, 120_000);

  it('uploads files no faster than the Files API allows: the offline one refuses past it with a 429, as OpenAI does, and the rounds pace under it', async () => {
    const backend = await startOfflineBackend();
    onTestFinished(backend.close);
    const api = new OpenAI({ apiKey: 'sk-test', baseURL: backend.baseUrl, maxRetries: 0 });
    const statuses = await Promise.all(
      Array.from({ length: 40 }, () => api.files.create({ file: new File(['x'], 'base.png', { type: 'image/png' }), purpose: 'vision' }).then(() => 200, (e: { status: number }) => e.status)),
    );
    expect(statuses.filter((s) => s === 429).length).toBeGreaterThan(0);
    // The rounds' pace: a slot each, 60 ms apart at 1,000 a minute, in the order asked.
    let clock = 0;
    const slept: number[] = [];
    const upload = pacer(FILE_UPLOADS_PER_MINUTE, () => clock, async (ms) => void slept.push(ms));
    await Promise.all([upload(), upload(), upload()]);
    expect(slept).toEqual([60, 120]);
    clock = 1_000;
    await upload();
    expect(slept).toEqual([60, 120]);
  });

  it('collects a round too big for one invocation in parts, each image stored and paid once', async () => {
    const { dynamo, world, plan, round: submitted } = await firstRound('parts');
    // Every invocation past its deadline at once: each stores one answer, saves, and hands on.
    const statuses = await collectUntilDone({ deps: { ...world.deps, deadline: 0 } }, plan, submitted);
    const round = statuses.at(-1)!;
    const parts = statuses.filter((r) => r.status === 'pending' && r.waitSeconds === 0).length;
    expect(round).toMatchObject({ status: 'collected', next: 'submit' });
    expect(parts).toBe(2);
    const state = (await loadRounds(world.deps.store, 'parts'))!;
    expect(state.personas.map((p) => p.calls[0]!.drawn?.keys.length)).toEqual([1, 1, 1]);
    const budget = dynamoStore(budgetTableClient(dynamo.env), 'image-budget');
    expect(await budget.amount(spendKeys.batch('parts'))).toBeCloseTo(state.costUsd, 6);
  }, 120_000);

  it('sends what a SubmitRound prepared in its time and the rest in the next round, which does not count against the six', async () => {
    const world = await startBatchWorld({ env: { OPENAI_BATCH_POLL_SECONDS: '1' } });
    await world.deps.store.put('batches/many/personas.jsonl', `${team(20, 'many').join('\n')}\n`, 'application/x-ndjson');
    const plan = await invoke(world, 'plan-batch', { personasKey: 'batches/many/personas.jsonl', batchId: 'many', input: { openAiBatch: true } });
    // Out of time at once: it prepares what it started, sends that, and leaves the rest ready.
    const round = await invoke({ deps: { ...world.deps, deadline: 0 } }, 'submit-round', { plan });
    expect(round).toMatchObject({ n: 1, status: 'submitted' });
    const sentFirst = world.backend!.batchLines.length;
    expect(sentFirst).toBeGreaterThan(0);
    expect(sentFirst).toBeLessThan(20);
    const state = (await loadRounds(world.deps.store, 'many'))!;
    expect(state.partialRounds).toBe(1);
    expect(roundsSpent(state)).toBe(0);
    expect(state.personas.filter((p) => !p.calls[0]!.pending).every((p) => p.calls[0]!.tries === 0)).toBe(true);
    // The machine goes on: collect, then the next round sends the bases not yet sent, each once.
    expect((await collectUntilDone(world, plan, round)).at(-1)).toMatchObject({ status: 'collected', next: 'submit' });
    await invoke(world, 'submit-round', { plan });
    const bases = world.backend!.batchLines.map((l) => l.custom_id).filter((id) => id.includes(':base:'));
    expect(bases).toHaveLength(20);
    expect(new Set(bases.map((id) => id.split(':')[0])).size).toBe(20);
  }, 120_000);

  it('publishes all of a batch of twelve against a queue limit of six enqueued lines', async () => {
    const world = await startBatchWorld({ batchQueueLimit: 6 });
    const report = await runBatch(world, team(12, 'crowd'), 'crowd', { openAiBatch: true });
    expect(report.counts).toMatchObject({ SUCCEEDED: 12, FAILED: 0 });
  }, 180_000);
});
