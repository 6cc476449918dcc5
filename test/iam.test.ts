import { describe, expect, it } from 'vitest';
import { localStageRoles, runLocally } from '../local/runner.ts';
import type { StageRoles } from '../local/iam.ts';
import { imageCalls, persona, startDynamoDb, startTestEnvironment } from './support.ts';

/** The roles with `action` taken out of every statement of `stage`'s policies. */
function without(roles: StageRoles, stage: keyof StageRoles, action: string): StageRoles {
  const copy = structuredClone(roles);
  for (const policy of copy[stage]!.policies) {
    for (const statement of policy.Statement) {
      const actions = [statement.Action].flat().filter((a) => a !== action);
      statement.Action = actions.length > 0 ? actions : ['none:None'];
    }
  }
  return copy;
}

describe("each stage's synthesized role, enforced locally", () => {
  it('fails a stage whose grant was taken away as AWS does, naming the action, the resource and the function', async () => {
    const w = await startTestEnvironment();
    const roles = without(await localStageRoles(w.deps), 'write-prompt', 's3:PutObject');
    const outcome = await runLocally({ input: { persona }, deps: w.deps, roles, runId: 'no-put' });
    expect(outcome.status).toBe('FAILED');
    if (outcome.status !== 'FAILED') return;
    expect(outcome.error).toBe('AccessDenied');
    expect(outcome.cause).toMatch(/assumed-role\/\w+\/Stageswriteprompt\w* is not authorized to perform: s3:PutObject on resource: arn:aws:s3:::avatars\/runs\/ada-lovelace\/no-put\//);
  });

  it('lets a full run with the synthesized roles make every call it needs', async () => {
    const w = await startTestEnvironment();
    const outcome = await runLocally({ input: { persona }, deps: w.deps });
    expect(outcome.status).toBe('SUCCEEDED');
  });

  it('refuses an image call over the daily cap with BudgetExhausted naming the cap, the budget table read only by its keys', async () => {
    const dynamo = await startDynamoDb();
    const w = await startTestEnvironment({ env: { ...dynamo.env, IMAGE_BUDGET_TABLE: 'image-budget', MAX_SPEND_USD_PER_DAY: '0.01' } });
    const outcome = await runLocally({ input: { persona }, deps: w.deps, runId: 'over-cap' });
    expect(outcome.status).toBe('FAILED');
    if (outcome.status !== 'FAILED') return;
    expect(outcome.error).toBe('BudgetExhausted');
    expect(outcome.cause).toMatch(/MAX_SPEND_USD_PER_DAY is \$0\.01/);
    expect(imageCalls(w.backend!)).toHaveLength(0);
  });
});
