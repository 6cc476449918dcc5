import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import type { BatchReport } from '../lambdas/shared/batch.ts';
import { startOfflineBackend } from '../local/offline-openai.ts';
import { budgetTableClient, dynamoStore, governor } from '../lambdas/shared/governor.ts';
import { runLocally } from '../local/runner.ts';
import { avatars, imageCalls, persona, runBatch, startBatchWorld, startDynamoDb, startTestEnvironment, team, tempDir } from './support.ts';

const work = tempDir('pacing');

/** Image calls drawn a minute, from the first to the last. */
const rateOf = (drawn: { at: number }[]) => ((drawn.length - 1) * 60_000) / (drawn.at(-1)!.at - drawn[0]!.at);

// Runs alone, after the other files (vitest.config.ts): it measures throughput against the clock.
describe('a batch of personas, paced', () => {
  it('publishes 24 of 24 against an API limited to 120 images a minute, its image calls at 90% of the limit or more', async () => {
    // The identity check's CPU is not what this measures: without it a small machine keeps up.
    const world = await startBatchWorld({ imagesPerMinute: 120, env: { IMAGES_PER_MINUTE: '120', IDENTITY_POLICY: 'off' } });
    const report = await runBatch(world, team(24), 'team-of-24');
    expect(report.counts).toEqual({ total: 24, SUCCEEDED: 24, FAILED: 0, SKIPPED: 0 });
    expect(report.personas.map((p) => p.personaId)).toEqual(team(24).map((_, i) => `member-${i + 1}`));
    for (const p of report.personas) expect(p.avatars).toHaveLength(4);
    const drawn = imageCalls(world.backend!).filter((c) => !c.rateLimited);
    expect(drawn).toHaveLength(48);
    expect(rateOf(drawn)).toBeGreaterThanOrEqual(0.9 * 120);
    // And never above it for long: the API refused next to nothing.
    expect(imageCalls(world.backend!).filter((c) => c.rateLimited).length).toBeLessThan(10);
  }, 120_000);

  it('keeps two avatars batch processes sharing one DynamoDB table under the API\u2019s limit together, near it', async () => {
    const backend = await startOfflineBackend({ imagesPerMinute: 60 });
    onTestFinished(backend.close);
    const db = await startDynamoDb();
    writeFileSync(join(work, 'a.jsonl'), `${team(6, 'a').join('\n')}\n`);
    writeFileSync(join(work, 'b.jsonl'), `${team(6, 'b').join('\n')}\n`);
    // Both planned against the whole limit, as two uploads of one account would be.
    const env = { OPENAI_API_KEY: 'sk-test', OPENAI_BASE_URL: backend.baseUrl, PROMPT_PROVIDER: 'template', IDENTITY_POLICY: 'off', LOOKALIKE_POLICY: 'off', IMAGES_PER_MINUTE: '60', IMAGE_BUDGET_TABLE: 'image-budget', ...db.env };
    const runs = await Promise.all(['a', 'b'].map((name) => avatars(work, ['batch', `${name}.jsonl`, '--json', '--data', `data-${name}`], env)));
    for (const run of runs) {
      expect(run.code, run.stderr).toBe(0);
      expect((JSON.parse(run.stdout) as BatchReport).counts).toMatchObject({ total: 6, SUCCEEDED: 6 });
    }
    const calls = imageCalls(backend);
    const drawn = calls.filter((c) => !c.rateLimited);
    expect(drawn).toHaveLength(24);
    expect(calls.length - drawn.length).toBeLessThanOrEqual(Math.floor(0.05 * calls.length));
    expect(rateOf(drawn)).toBeGreaterThanOrEqual(0.85 * 60);
    expect(rateOf(drawn)).toBeLessThanOrEqual(60);
  }, 120_000);
});

describe('an image call whose turn is far off', () => {
  it('waits for it in Step Functions, claimed first come first served, and publishes', async () => {
    const db = await startDynamoDb();
    const world = await startTestEnvironment({ env: { ...db.env, IMAGE_BUDGET_TABLE: 'image-budget', IMAGES_PER_MINUTE: '60', IMAGE_TURN_WAIT_MS: '0' } });
    // Others were first in line: five turns a second apart, claimed before this run asks.
    const others = governor(dynamoStore(budgetTableClient(db.env), 'image-budget'), { imagesPerMinute: 60 });
    for (const call of ['a', 'b', 'c', 'd', 'e']) await others.claimTurn(`other/${call}`, 'gpt-image-2', 1);
    const outcome = await runLocally({ input: { persona }, deps: world.deps, runId: 'queued' });
    expect(outcome.status).toBe('SUCCEEDED');
    // The base stage answered that its turn was later, waited in a Wait state, and came back to it.
    const base = outcome.events.filter((e) => ['GenerateBase', 'WaitForGenerateBaseTurn'].includes(e.state) && e.kind === 'entered').map((e) => e.state);
    expect(base).toEqual(['GenerateBase', 'WaitForGenerateBaseTurn', 'GenerateBase']);
    // Nothing asked of the API before its turn, and nothing refused.
    expect(imageCalls(world.backend!).filter((c) => c.rateLimited)).toEqual([]);
  }, 60_000);
});
