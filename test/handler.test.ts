import type { Context } from 'aws-lambda';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { handler } from '../lambdas/plan-run/handler.ts';
import { persona } from './support.ts';

const context = {
  functionName: 'plan-run',
  functionVersion: '$LATEST',
  invokedFunctionArn: 'arn:aws:lambda:us-east-1:000000000000:function:plan-run',
  memoryLimitInMB: '256',
  awsRequestId: 'req-1',
  getRemainingTimeInMillis: () => 10_000,
} as unknown as Context;

function capturedLogs(): { lines: () => Record<string, unknown>[] } {
  const chunks: string[] = [];
  for (const stream of [process.stdout, process.stderr]) {
    vi.spyOn(stream, 'write').mockImplementation((chunk: string | Uint8Array) => {
      chunks.push(String(chunk));
      return true;
    });
  }
  return { lines: () => chunks.join('').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)) };
}

describe('a stage handler', () => {
  afterEach(() => vi.restoreAllMocks());

  it('logs structured JSON with the stage and persona id, and returns the core result', async () => {
    const logs = capturedLogs();
    const plan = await handler({ input: { persona }, runId: 'exec-1' }, context);
    expect(plan.grids).toHaveLength(1);
    const line = logs.lines().find((l) => l.message === 'stage succeeded')!;
    expect(line).toMatchObject({ level: 'INFO', stage: 'plan-run', personaId: 'ada-lovelace', service: 'persona-avatars' });
  });

  it('lets a named error through for the state machine to match, and logs it', async () => {
    const logs = capturedLogs();
    const error = await handler({ input: { persona: { ...persona, firstname: '' } }, runId: 'exec-2' }, context).catch((e: unknown) => e as Error);
    expect(error).toMatchObject({ name: 'InvalidPersona' });
    expect(logs.lines().find((l) => l.message === 'stage failed')).toMatchObject({ level: 'ERROR', stage: 'plan-run' });
  });

  it('tags every line of a run it logs with the persona, the run and, in a batch, the batch', async () => {
    const logs = capturedLogs();
    await handler({ input: { persona, batchId: 'team-1' }, runId: 'exec-3' }, context);
    const line = logs.lines().find((l) => l.message === 'stage succeeded')!;
    expect(line).toMatchObject({ stage: 'plan-run', personaId: 'ada-lovelace', runId: 'exec-3', batchId: 'team-1' });
    // Not carried over to the next invocation.
    await handler({ input: { persona }, runId: 'exec-4' }, context);
    expect(logs.lines().filter((l) => l.message === 'stage succeeded').at(-1)).not.toHaveProperty('batchId');
  });
});
