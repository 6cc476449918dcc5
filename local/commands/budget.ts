import { dayOf, systemClock } from '../../lambdas/shared/clock.ts';
import { budgetStoreFromEnv, spendKeys } from '../../lambdas/shared/governor.ts';
import { settingsFromEnv } from '../../lambdas/shared/settings.ts';
import { localVariables } from '../environment.ts';
import { UsageError } from './common.ts';

const usd = (n: number) => `$${n.toFixed(4)}`;

/** What the account's image calls have spent on a day (estimated from their usage), and by which batches. */
export async function budgetCommand(flags: { day?: string; json?: boolean }): Promise<number> {
  const env = localVariables();
  if (!env.IMAGE_BUDGET_TABLE) {
    throw new UsageError(
      'no IMAGE_BUDGET_TABLE: spending is shared and kept only in a DynamoDB table; set IMAGE_BUDGET_TABLE (on AWS: the stack\u2019s ImageBudgetTable output; for a compatible server also AWS_ENDPOINT_URL_DYNAMODB)',
    );
  }
  const day = flags.day ?? dayOf(systemClock);
  if (!/^\d{4}-\d{2}-\d{2}$/.test(day)) throw new UsageError(`--day must be a date as YYYY-MM-DD, got "${day}"`);
  const { maxSpendUsdPerDay } = settingsFromEnv(env);
  const store = budgetStoreFromEnv(env);
  const amounts = await store.amounts(spendKeys.day(day));
  const total = amounts.find((a) => a.key === spendKeys.day(day))?.usd ?? 0;
  const prefix = spendKeys.dayOfBatch(day, '');
  const batches = amounts.filter((a) => a.key.startsWith(prefix)).map((a) => ({ batchId: a.key.slice(prefix.length), usd: a.usd }));
  batches.sort((a, b) => b.usd - a.usd);
  const other = Math.max(0, total - batches.reduce((sum, b) => sum + b.usd, 0));
  if (flags.json) {
    process.stdout.write(`${JSON.stringify({ day, table: env.IMAGE_BUDGET_TABLE, totalUsd: total, maxSpendUsdPerDay: maxSpendUsdPerDay ?? null, batches, otherRunsUsd: other }, null, 2)}\n`);
    return 0;
  }
  const cap = maxSpendUsdPerDay === undefined ? 'no daily cap (MAX_SPEND_USD_PER_DAY)' : `of MAX_SPEND_USD_PER_DAY ${usd(maxSpendUsdPerDay)}`;
  process.stdout.write(
    [
      `image calls on ${day} (UTC), estimated from their usage: ${usd(total)}, ${cap}`,
      ...batches.map((b) => `  batch ${b.batchId}: ${usd(b.usd)}`),
      ...(batches.length > 0 ? [`  other runs: ${usd(other)}`] : []),
      '',
    ].join('\n'),
  );
  return 0;
}
