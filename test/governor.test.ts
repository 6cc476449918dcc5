import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { describe, expect, it, onTestFinished } from 'vitest';
import { fixedClock } from '../lambdas/shared/clock.ts';
import { dynamoStore, ensureBudgetTable, governor, memoryStore, spendKeys, type BudgetStore } from '../lambdas/shared/governor.ts';
import { startDynamoDb } from './support.ts';

const stores: [string, () => Promise<[BudgetStore, BudgetStore]>][] = [
  ['in memory', async () => {
    const store = memoryStore();
    return [store, store];
  }],
  [
    'in a DynamoDB table shared by two clients',
    async () => {
      const { client, endpoint } = await startDynamoDb();
      await ensureBudgetTable(client, 'image-budget');
      const other = new DynamoDBClient({ endpoint, region: 'us-east-1', credentials: { accessKeyId: 'local', secretAccessKey: 'local' } });
      onTestFinished(() => other.destroy());
      return [dynamoStore(client, 'image-budget'), dynamoStore(other, 'image-budget')];
    },
  ],
];

const T0 = 1_800_000_000_000;

for (const [where, make] of stores) {
  describe(`image turns and spending ${where}`, () => {
    it('gives sixty concurrent takers sixty distinct turns at the rate, a second\u2019s burst early', async () => {
      const [a, b] = await make();
      // 600 images a minute: one every 100 ms, up to 900 ms early.
      const waits = await Promise.all(Array.from({ length: 60 }, (_, i) => (i % 2 ? a : b).turn('rate#gpt-image-2', 1, 100, 900, 60_000, T0)));
      expect(waits.sort((x, y) => x - y)).toEqual(Array.from({ length: 60 }, (_, k) => Math.max(0, k * 100 - 900)));
    });

    it('takes nothing when the turn is further off than the caller may wait', async () => {
      const [store] = await make();
      await store.turn('rate#m', 10, 1000, 0, 60_000, T0);
      expect(await store.turn('rate#m', 1, 1000, 0, 5_000, T0)).toBe(10_000);
      // The refused turn left the schedule as it was.
      expect(await store.turn('rate#m', 1, 1000, 0, 60_000, T0)).toBe(10_000);
    });

    it('stops counting a reservation never settled (its Lambda died) once its lease is past: the next call the cap refuses sweeps it and goes', async () => {
      const [store] = await make();
      let now = Date.parse('2026-12-03T10:00:00Z');
      const clock = { now: () => new Date(now) };
      const turns = governor(store, { imagesPerMinute: 100_000, maxSpendUsdPerDay: 0.1 }, clock);
      const call = (estimatedUsd: number) => ({ what: 'grid 0 for persona ada', model: 'gpt-image-2', images: 1, estimatedUsd });
      const died = await turns.take(call(0.08), 0);
      expect(((await turns.take(call(0.05), 0).catch((e: unknown) => e)) as Error).name).toBe('BudgetExhausted');
      now += 21 * 60_000;
      await (await turns.take(call(0.05), 0)).settle(0.04);
      expect(await turns.spentToday()).toBeCloseTo(0.04, 6);
      // Its answer came after all: paid, so counted, once.
      await died.settle(0.07);
      expect(await turns.spentToday()).toBeCloseTo(0.11, 6);
    });

    it('lets forty concurrent $0.10 reservations against a $1.00 limit spend exactly $1.00', async () => {
      const [a, b] = await make();
      const granted = await Promise.all(Array.from({ length: 40 }, (_, i) => (i % 2 ? a : b).add('budget#b', 0.1, 1)));
      expect(granted.filter(Boolean)).toHaveLength(10);
      expect(await a.amounts('budget#')).toEqual([{ key: 'budget#b', usd: 1 }]);
    });
  });
}

describe('the image governor', () => {
  const call = (estimatedUsd: number, budget?: { batchId: string; usd: number }) => ({ what: 'grid 0 for persona ada', model: 'gpt-image-2', images: 1, estimatedUsd, ...(budget ? { budget } : {}) });
  const clock = fixedClock('2026-12-03T10:00:00Z');

  it('refuses a call past the batch budget before it is paid for, naming the budget and what to do', async () => {
    const store = memoryStore();
    const turns = governor(store, { imagesPerMinute: 100_000 }, clock);
    const budget = { batchId: 'team-1', usd: 0.1 };
    await (await turns.take(call(0.06, budget), 0)).settle(0.05);
    const error = (await turns.take(call(0.06, budget), 0).catch((e: unknown) => e)) as Error;
    expect(error.name).toBe('BudgetExhausted');
    expect(error.message).toBe(
      'grid 0 for persona ada: refused before paying: batch team-1 has a budget of $0.10 and $0.05 of it is spent or reserved; this call is estimated at $0.06. Run the batch again with a larger budget (avatars batch --budget-usd, or budgetUsd in its input): what is published is not paid again',
    );
    // Settled at what the API said it cost; the refused call reserved nothing.
    expect(Object.fromEntries((await store.amounts('')).map((a) => [a.key, a.usd]))).toEqual({
      [spendKeys.day('2026-12-03')]: 0.05,
      [spendKeys.batch('team-1')]: 0.05,
      [spendKeys.dayOfBatch('2026-12-03', 'team-1')]: 0.05,
    });
  });

  it('refuses a call past the account\u2019s daily cap, whichever batch makes it, and releases what was not paid', async () => {
    const store = memoryStore();
    const turns = governor(store, { imagesPerMinute: 100_000, maxSpendUsdPerDay: 0.1 }, clock);
    await (await turns.take(call(0.06), 0)).release();
    await turns.take(call(0.06, { batchId: 'a', usd: 5 }), 0);
    const error = (await turns.take(call(0.06, { batchId: 'b', usd: 5 }), 0).catch((e: unknown) => e)) as Error;
    expect(error.name).toBe('BudgetExhausted');
    expect(error.message).toMatch(/^grid 0 for persona ada: refused before paying: MAX_SPEND_USD_PER_DAY is \$0\.10 and \$0\.06 is spent or reserved today \(UTC\)/);
    expect((await store.amounts(spendKeys.batch('b')))).toEqual([]);
  });

  it('refuses a try whose turn is minutes away as RateLimited, reserving nothing: the stage comes back and claims one', async () => {
    const store = memoryStore();
    const turns = governor(store, { imagesPerMinute: 1 }, clock);
    await turns.take(call(0.01), 0);
    const error = (await turns.take(call(0.01), 20_000).catch((e: unknown) => e)) as Error;
    expect(error.name).toBe('RateLimited');
    expect(error.message).toMatch(/^grid 0 for persona ada: the account's next image turn at 1 images a minute is 6[0-3] s away; the stage is tried again/);
    expect(await store.amounts(spendKeys.day('2026-12-03'))).toEqual([{ key: spendKeys.day('2026-12-03'), usd: 0.01 }]);
  });

  it('gives each call its turn first come, first served, however far away, held for it until it is used', async () => {
    const store = memoryStore();
    const turns = governor(store, { imagesPerMinute: 60 }, clock);
    const first = await turns.claimTurn('run-a/base', 'gpt-image-2', 1);
    const queued = await Promise.all(Array.from({ length: 100 }, (_, i) => turns.claimTurn(`run-${i}/grid-0`, 'gpt-image-2', 1)));
    // A second apiece, a little slower than the limit: the hundredth is about 105 s after the first.
    expect(Math.round((queued.at(-1)! - first) / 1000)).toBe(105);
    // Asked again before it is used (the stage back from its Wait), the call finds the same turn.
    expect(await turns.claimTurn('run-50/grid-0', 'gpt-image-2', 1)).toBe(queued[50]);
    await (await turns.takeHeld('run-50/grid-0', call(0.01))).settle(0.01);
    // Used: the call's next claim (a retry) is a new turn, behind everyone's.
    expect(await turns.claimTurn('run-50/grid-0', 'gpt-image-2', 1)).toBeGreaterThan(queued.at(-1)!);
  });
});
