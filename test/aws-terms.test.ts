import { DescribeExecutionCommand, SFNClient } from '@aws-sdk/client-sfn';
import { describe, expect, it, onTestFinished } from 'vitest';
import { s3ClientFromEnv } from '../lambdas/shared/s3.ts';
import { ObjectStore } from '../lambdas/shared/store.ts';
import { listenOnLoopback, readBody } from '../local/loopback-server.ts';
import { API_TOKEN_BUCKETS } from '../local/step-functions-api.ts';
import { invoke, startTestEnvironment, team } from './support.ts';

describe('the local peers, as strict as AWS', () => {
  it('throttles DescribeExecution past its documented bucket of 300, then refills it at 15 a second', async () => {
    let now = 1_800_000_000_000;
    const w = await startTestEnvironment({ stepFunctions: { now: () => now } });
    // The SDK's own retries would wait out the throttle; here each refusal is seen.
    const sfn = new SFNClient({ region: 'us-east-1', endpoint: w.stepFunctions!.endpoint, credentials: { accessKeyId: 'local', secretAccessKey: 'local' }, maxAttempts: 1 });
    onTestFinished(() => sfn.destroy());
    const describe = () => sfn.send(new DescribeExecutionCommand({ executionArn: `${w.stepFunctions!.stateMachineArn.replace(':stateMachine:', ':execution:')}:none` })).then(
      () => 'ok',
      (error: Error) => error.name,
    );
    const answers = [];
    for (let i = 0; i < API_TOKEN_BUCKETS.DescribeExecution!.size + 1; i++) answers.push(await describe());
    expect(answers.slice(0, -1).every((a) => a === 'ExecutionDoesNotExist')).toBe(true);
    expect(answers.at(-1)).toBe('ThrottlingException');
    now += 1000;
    const refilled = [];
    for (let i = 0; i < 16; i++) refilled.push(await describe());
    expect(refilled.filter((a) => a === 'ThrottlingException')).toHaveLength(1);
  });

  it('lets plan-batch plan more new personas than DescribeExecution\u2019s bucket holds, a list call per status and none per persona', async () => {
    // The buckets never refill: a call per persona would be refused past the 300th.
    const w = await startTestEnvironment({ stepFunctions: { now: () => 1_800_000_000_000 } });
    const calls: string[] = [];
    w.deps.sfn.middlewareStack.add((next, context) => (args) => (calls.push(String(context.commandName)), next(args)), { step: 'initialize' });
    const personas = API_TOKEN_BUCKETS.DescribeExecution!.size + 100;
    await w.deps.store.put('batches/many/personas.jsonl', `${team(personas, 'many').join('\n')}\n`, 'application/x-ndjson');
    const plan = await invoke(w, 'plan-batch', { personasKey: 'batches/many/personas.jsonl', batchId: 'many' });
    expect(plan.toRun).toBe(personas);
    expect(calls).toEqual(Array(5).fill('ListExecutionsCommand'));
  }, 60_000);

  it('writes a new object after S3 answers 409 ConditionalRequestConflict to its conditional write', async () => {
    let puts = 0;
    const server = await listenOnLoopback(
      async (req, res) => {
        await readBody(req);
        if (req.method === 'PUT' && ++puts === 1) {
          res.writeHead(409, { 'content-type': 'application/xml' });
          res.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>ConditionalRequestConflict</Code><Message>A conflicting conditional operation is currently in progress against this resource. Please try again.</Message></Error>');
          return;
        }
        res.writeHead(200, { etag: '"e"' });
        res.end();
      },
      (res) => res.end(),
    );
    onTestFinished(() => server.close());
    const store = new ObjectStore(s3ClientFromEnv({ S3_ENDPOINT: `http://127.0.0.1:${server.port}`, S3_ACCESS_KEY: 'k', S3_SECRET_KEY: 's' }), 'avatars');
    expect(await store.putNew('runs/x/manifest.json', '{}', 'application/json')).toBe(true);
    expect(puts).toBe(2);
  });
});
