import { spawn } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { GetObjectTaggingCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { DescribeExecutionCommand, ListExecutionsCommand, StartExecutionCommand, StopExecutionCommand, type HistoryEvent } from '@aws-sdk/client-sfn';
import { describe, expect, it, onTestFinished } from 'vitest';
import { parseRunRequest } from '../lambdas/shared/persona.ts';
import { executionArn } from '../lambdas/shared/sfn.ts';
import type { S3Notification } from '../lambdas/start-from-upload/core.ts';
import { EXECUTION_NAME_PATTERN, executionName } from '../lambdas/shared/run-name.ts';
import { historyReader } from '../local/follow.ts';
import { startEmbeddedS3 } from '../local/embedded-s3.ts';
import { startOfflineBackend, type Fault } from '../local/offline-openai.ts';
import { avatars, cliPath, eventsDir, imageCalls, invoke, persona, personaLine, startTestEnvironment, tempDir } from './support.ts';

const work = tempDir('start');

/** The embedded S3, the offline backend and a Step Functions API running the workflow, on loopback. */
const startWorld = (faults: Fault[] = [], variables: Record<string, string> = {}) => startTestEnvironment({ faults, stepFunctions: {}, env: variables });

/** A batch runs many personas at once: on a small machine its image calls get the time a real one would. */
const batchVariables = { IMAGE_TIMEOUT_MS: '60000' };

type World = Awaited<ReturnType<typeof startWorld>>;

const notification = (bucket: string, ...keys: string[]): S3Notification => ({
  Records: keys.map((key) => ({ eventName: 'ObjectCreated:Put', s3: { bucket: { name: bucket }, object: { key } } })),
});

async function executions(world: World) {
  const listed = await world.deps.sfn.send(new ListExecutionsCommand({ stateMachineArn: world.deps.settings.stateMachineArn! }));
  return listed.executions ?? [];
}

async function keysUnder(world: World, prefix: string): Promise<string[]> {
  const listed = await world.deps.store.s3.send(new ListObjectsV2Command({ Bucket: world.deps.store.bucket, Prefix: prefix }));
  return (listed.Contents ?? []).map((o) => o.Key!);
}

const line = (p: Record<string, unknown>) => JSON.stringify(p);

describe('the upload trigger', () => {
  it('starts one execution when S3 delivers the same notification twice', async () => {
    const world = await startWorld();
    await world.deps.store.putJson('personas/ada-lovelace.json', persona);
    const event = JSON.parse(readFileSync(join(eventsDir, 's3-persona-uploaded.json'), 'utf8')) as S3Notification;
    const [first] = await invoke(world, 'start-from-upload', event);
    const [second] = await invoke(world, 'start-from-upload', event);
    expect(first!.started).toHaveLength(1);
    expect([...second!.started, ...second!.alreadyStarted].map((s) => s.name)).toEqual([first!.started[0]!.name]);
    await world.stepFunctions!.settled();
    const runs = await executions(world);
    expect(runs).toHaveLength(1);
    expect(runs[0]!.status).toBe('SUCCEEDED');
    expect((await keysUnder(world, 'avatars/ada-lovelace/')).filter((k) => /img_\d+\.png$/.test(k))).toHaveLength(4);
  });

  it('does not start a persona again when the same content is uploaded after its run ended', async () => {
    const world = await startWorld();
    await world.deps.store.putJson('personas/ada-lovelace.json', persona);
    await invoke(world, 'start-from-upload', notification(world.deps.store.bucket, 'personas/ada-lovelace.json'));
    await world.stepFunctions!.settled();
    const [again] = await invoke(world, 'start-from-upload', notification(world.deps.store.bucket, 'personas/ada-lovelace.json'));
    expect(again!.started).toEqual([]);
    expect(again!.alreadyStarted.map((s) => s.personaId)).toEqual(['ada-lovelace']);
    expect(await executions(world)).toHaveLength(1);
  });

  it('starts one batch for a JSON Lines file, reports its bad line, and the batch publishes the rest', async () => {
    const world = await startWorld([], batchVariables);
    const text = [
      line({ ...persona, id: 'p1' }),
      line({ ...persona, id: 'p2', firstname: 'Grace' }),
      line({ ...persona, id: 'p3', gender: '' }),
      '',
      line({ persona: { ...persona, id: 'p4' }, images: 8 }),
    ].join('\n');
    await world.deps.store.put('personas/team.jsonl', text, 'application/x-ndjson');
    const [outcome] = await invoke(world, 'start-from-upload', notification(world.deps.store.bucket, 'personas/team.jsonl'));
    expect(outcome!.batch).toMatchObject({ name: expect.stringMatching(/^team-[0-9a-f]{16}$/), existing: false, personas: 3 });
    expect(await keysUnder(world, 'rejected/')).toEqual(['rejected/personas/team.jsonl.error.json']);
    const rejected = JSON.parse(await world.deps.store.getText('rejected/personas/team.jsonl.error.json'));
    expect(rejected).toMatchObject({ key: 'personas/team.jsonl', problems: [{ line: 3, field: 'persona.gender' }] });
    expect(rejected.problems).toHaveLength(1);
    await world.stepFunctions!.settled();
    const report = JSON.parse(await world.deps.store.getText(`batches/${outcome!.batch!.name}/report.json`));
    expect(report.personas.map((p: { line: number; personaId?: string; status: string }) => [p.line, p.personaId, p.status])).toEqual([
      [1, 'p1', 'SUCCEEDED'],
      [2, 'p2', 'SUCCEEDED'],
      [3, undefined, 'SKIPPED'],
      [5, 'p4', 'SUCCEEDED'],
    ]);
    expect(report.personas[3].avatars).toHaveLength(8);
    // The upload itself is kept as it was.
    expect(await world.deps.store.getText('personas/team.jsonl')).toBe(text);
  });

  it('starts a JSON Lines file once when S3 delivers it twice', async () => {
    const world = await startWorld([], batchVariables);
    await world.deps.store.put('personas/pair.jsonl', [line({ ...persona, id: 'p1' }), line({ ...persona, id: 'p2' })].join('\n'), 'application/x-ndjson');
    const event = notification(world.deps.store.bucket, 'personas/pair.jsonl');
    const [first] = await invoke(world, 'start-from-upload', event);
    const [second] = await invoke(world, 'start-from-upload', event);
    // Step Functions answers a second start of a running execution, same name and input, with it.
    expect(second!.batch!.executionArn).toBe(first!.batch!.executionArn);
    await world.stepFunctions!.settled();
    const batches = await world.deps.sfn.send(new ListExecutionsCommand({ stateMachineArn: world.deps.settings.batchStateMachineArn! }));
    expect(batches.executions).toHaveLength(1);
    expect(await executions(world)).toHaveLength(2);
  });

  it('reports a file that is not JSON and starts nothing', async () => {
    const world = await startWorld();
    await world.deps.store.put('personas/broken.json', '{"id": "x", ', 'application/json');
    const [outcome] = await invoke(world, 'start-from-upload', notification(world.deps.store.bucket, 'personas/broken.json'));
    expect(outcome!.rejected).toEqual([expect.objectContaining({ field: '(json)', message: expect.stringContaining('not valid JSON') })]);
    expect(await executions(world)).toEqual([]);
    expect(await world.deps.store.getText('personas/broken.json')).toBe('{"id": "x", ');
  });

  it('names the persona after its file when the file gives no id', async () => {
    const world = await startWorld();
    const { id: _id, ...withoutId } = persona;
    await world.deps.store.putJson('personas/grace-hopper.json', withoutId);
    const [outcome] = await invoke(world, 'start-from-upload', notification(world.deps.store.bucket, 'personas/grace-hopper.json'));
    expect(outcome!.started.map((s) => s.personaId)).toEqual(['grace-hopper']);
    await world.stepFunctions!.settled();
  });

  it('reads a file saved with a byte-order mark', async () => {
    const world = await startWorld();
    await world.deps.store.put('personas/ada-lovelace.json', `\uFEFF${JSON.stringify(persona)}`, 'application/json');
    const [outcome] = await invoke(world, 'start-from-upload', notification(world.deps.store.bucket, 'personas/ada-lovelace.json'));
    expect(outcome!.rejected).toEqual([]);
    expect(outcome!.started).toHaveLength(1);
    await world.stepFunctions!.settled();
  });

  it('removes the report once the corrected file is uploaded', async () => {
    const world = await startWorld();
    const key = 'personas/ada-lovelace.json';
    await world.deps.store.putJson(key, { ...persona, firstname: '' });
    await invoke(world, 'start-from-upload', notification(world.deps.store.bucket, key));
    expect(await keysUnder(world, 'rejected/')).toHaveLength(1);
    await world.deps.store.putJson(key, persona);
    const [outcome] = await invoke(world, 'start-from-upload', notification(world.deps.store.bucket, key));
    expect(outcome!.started).toHaveLength(1);
    expect(await keysUnder(world, 'rejected/')).toEqual([]);
    await world.stepFunctions!.settled();
  });

  it('ignores uploads outside personas/ and objects that are gone', async () => {
    const world = await startWorld();
    // A valid persona, but not an upload: the trigger must not start it.
    await world.deps.store.putJson('avatars/x/manifest.json', persona);
    const outcomes = await invoke(world, 'start-from-upload', notification(world.deps.store.bucket, 'avatars/x/manifest.json', 'personas/deleted.json'));
    expect(outcomes).toEqual([]);
    expect(await executions(world)).toEqual([]);
  });
});

describe('execution names', () => {
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_';
  const randomId = (i: number) =>
    Array.from({ length: 1 + (i % 64) }, (_, j) => alphabet[(i * 31 + j * 17 + ((i * j) % 7)) % alphabet.length]).join('').replace(/^[-_]/, 'a');

  it('is always valid for Step Functions, whatever the persona id', () => {
    const ids = [...Array.from({ length: 300 }, (_, i) => randomId(i)), 'a'.repeat(64), '9', 'x_-_-_'];
    for (const id of ids) {
      const name = executionName(parseRunRequest({ persona: { ...persona, id } }));
      expect(name, id).toMatch(EXECUTION_NAME_PATTERN);
      expect(name.length, id).toBeLessThanOrEqual(80);
    }
    // Even ids that never pass validation cannot produce an invalid name.
    for (const id of ['ünïcødé persona', 'a/b\\c', ' ', '💥'.repeat(100), 'x'.repeat(500)]) {
      expect(executionName({ persona: { ...persona, id }, images: 4, mode: 'grid' } as never), id).toMatch(EXECUTION_NAME_PATTERN);
    }
  });

  it('is the same for the same persona content in any field order, and differs when the content does', () => {
    const reordered = Object.fromEntries(Object.entries(persona).reverse());
    const name = executionName(parseRunRequest({ persona }));
    expect(executionName(parseRunRequest({ persona: reordered }))).toBe(name);
    expect(executionName(parseRunRequest({ persona, images: 8 }))).not.toBe(name);
    expect(executionName(parseRunRequest({ persona: { ...persona, bio_x: 'Counting machines.' } }))).not.toBe(name);
    expect(name.startsWith('ada-lovelace-')).toBe(true);
  });
});

describe('avatars start and status', () => {
  const sfnEnv = (world: World) => ({
    AWS_ENDPOINT_URL_SFN: world.stepFunctions!.endpoint,
    AWS_ACCESS_KEY_ID: 'local',
    AWS_SECRET_ACCESS_KEY: 'local',
    STATE_MACHINE_ARN: world.stepFunctions!.stateMachineArn,
  });

  it('starts an execution, prints each state transition as it happens, then the avatars', async () => {
    const world = await startWorld();
    const { code, stdout, stderr } = await avatars(work, ['start', join(eventsDir, 'persona.json'), '--wait', '--poll-interval', '50'], sfnEnv(world));
    expect(code, stderr).toBe(0);
    expect(stdout).toMatch(/^started: arn:aws:states:us-east-1:000000000000:execution:PersonaAvatars:ada-lovelace-[0-9a-f]{16}$/m);
    const transitions = stderr.split('\n').filter((l) => /^\s+[→✓]/.test(l));
    for (const state of ['PlanRun', 'PromptAndBase', 'WritePrompt', 'GenerateBase', 'GenerateGrids', 'GenerateGrid', 'SplitGrid', 'Publish']) {
      const grid = ['GenerateGrid', 'SplitGrid'].includes(state) ? ' \\[grid 0\\]' : '';
      expect(transitions, state).toContainEqual(expect.stringMatching(new RegExp(`→ ${state}${grid}$`)));
      expect(transitions, state).toContainEqual(expect.stringMatching(new RegExp(`✓ ${state}${grid} \\d+ ms$`)));
    }
    expect(transitions.indexOf('  → PlanRun')).toBeLessThan(transitions.indexOf('  → Publish'));
    expect(stdout).toContain('✓ 4 avatars for ada-lovelace');
    expect(stdout).toMatch(/avatars\/ada-lovelace\/runs\/[\w-]+\/img_4\.png/);
  });

  it('exits non-zero with the error name and cause when the execution fails', async () => {
    const world = await startWorld([{ kind: 'policy', times: Infinity, route: 'generations' }]);
    const { code, stderr } = await avatars(work, ['start', join(eventsDir, 'persona.json'), '--wait', '--poll-interval', '50'], sfnEnv(world));
    expect(code).toBe(1);
    expect(stderr).toMatch(/✗ GenerateBase ContentPolicyViolation: base image for persona ada-lovelace/);
    expect(stderr).toContain('→ RecordFailure');
    expect(stderr).toMatch(/✗ execution arn:\S+ FAILED: ContentPolicyViolation: /);
  });

  it('starts a batch for a JSON Lines file, follows it, and prints what it published', async () => {
    const world = await startWorld([], batchVariables);
    const s3 = world.embeddedS3!;
    const start = () =>
      avatars(work, ['start', join(eventsDir, 'team.jsonl'), '--wait', '--poll-interval', '50'], {
        ...sfnEnv(world),
        BATCH_STATE_MACHINE_ARN: world.stepFunctions!.batchStateMachineArn,
        S3_ENDPOINT: s3.endpoint,
        S3_ACCESS_KEY: s3.accessKey,
        S3_SECRET_KEY: s3.secretKey,
        S3_BUCKET_NAME: world.deps.store.bucket,
      });
    const { code, stdout, stderr } = await start();
    expect(code, stderr).toBe(0);
    expect(stdout).toMatch(/^started batch: arn:aws:states:us-east-1:000000000000:execution:PersonaAvatars-Batch:team-[0-9a-f]{16}$/m);
    expect(stdout).toMatch(/✓ 6 published, 0 failed, 0 skipped; report batches\/team-[0-9a-f]{16}\/report\.json/);
    expect(stderr).toContain('✓ ReportBatch');

    // All six published: the same file again starts nothing.
    const executions = world.stepFunctions!.executions.size;
    const again = await start();
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/^✓ .*team\.jsonl: nothing to run: 6 of 6 personas already published with the same request; no batch started$/m);
    expect(world.stepFunctions!.executions.size).toBe(executions);
  }, 120_000);

  it('follows an execution started elsewhere with avatars status', async () => {
    const world = await startWorld();
    const { executionArn } = await world.deps.sfn.send(
      new StartExecutionCommand({ stateMachineArn: world.deps.settings.stateMachineArn!, name: 'from-the-console', input: JSON.stringify({ persona, images: 8 }) }),
    );
    const { code, stdout, stderr } = await avatars(work, ['status', executionArn!, '--poll-interval', '50', '--json'], sfnEnv(world));
    expect(code, stderr).toBe(0);
    expect(stderr).toContain('✓ Publish');
    // Eight images: two grids, each state shown with the grid it worked on.
    expect(stderr).toMatch(/✓ SplitGrid \[grid 0\] \d+ ms/);
    expect(stderr).toMatch(/✓ SplitGrid \[grid 1\] \d+ ms/);
    const result = JSON.parse(stdout);
    expect(result).toMatchObject({ executionArn, status: 'SUCCEEDED' });
    expect(result.output.images).toHaveLength(8);
  });

  it('says the persona already started instead of starting it twice', async () => {
    const world = await startWorld();
    const file = join(eventsDir, 'persona.json');
    expect((await avatars(work, ['start', file, '--wait', '--poll-interval', '50'], sfnEnv(world))).code).toBe(0);
    const again = await avatars(work, ['start', file], sfnEnv(world));
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/^already started \(pass --name to start another run\): arn:/m);
    expect(await executions(world)).toHaveLength(1);
  });

  it('rejects a malformed persona before starting anything, naming the field', async () => {
    const world = await startWorld();
    const { code, stderr } = await avatars(work, ['start', join(eventsDir, 'persona.json'), '--images', '0'], sfnEnv(world));
    expect(code).toBe(2);
    expect(stderr).toContain('images');
    expect(await executions(world)).toEqual([]);
  });

  it('asks for the state machine when none is given', async () => {
    const { code, stderr } = await avatars(work, ['start', join(eventsDir, 'persona.json')]);
    expect(code).toBe(2);
    expect(stderr).toContain('--state-machine-arn');
  });
});

describe('reading an execution history from AWS', () => {
  it('ties each event to its state and grid across parallel branches, with durations and the Lambda\u2019s message', () => {
    const t0 = Date.parse('2026-11-25T10:00:00Z');
    const at = (s: number) => new Date(t0 + s * 1000);
    const cause = JSON.stringify({ errorType: 'RateLimited', errorMessage: 'base image for persona ada-lovelace: rate limited', trace: [] });
    const history: HistoryEvent[] = [
      { id: 1, previousEventId: 0, timestamp: at(0), type: 'ExecutionStarted' },
      { id: 2, previousEventId: 1, timestamp: at(0), type: 'ParallelStateEntered', stateEnteredEventDetails: { name: 'PromptAndBase' } },
      { id: 3, previousEventId: 2, timestamp: at(0), type: 'ParallelStateStarted' },
      { id: 4, previousEventId: 3, timestamp: at(1), type: 'TaskStateEntered', stateEnteredEventDetails: { name: 'WritePrompt' } },
      { id: 5, previousEventId: 3, timestamp: at(1), type: 'TaskStateEntered', stateEnteredEventDetails: { name: 'GenerateBase' } },
      { id: 6, previousEventId: 4, timestamp: at(1), type: 'TaskScheduled' },
      { id: 7, previousEventId: 5, timestamp: at(1), type: 'TaskScheduled' },
      { id: 8, previousEventId: 7, timestamp: at(2), type: 'TaskStarted' },
      { id: 9, previousEventId: 6, timestamp: at(2), type: 'TaskStarted' },
      { id: 10, previousEventId: 8, timestamp: at(4), type: 'TaskFailed', taskFailedEventDetails: { resourceType: 'lambda', resource: 'invoke', error: 'RateLimited', cause } },
      { id: 11, previousEventId: 9, timestamp: at(5), type: 'TaskSucceeded' },
      { id: 12, previousEventId: 11, timestamp: at(5), type: 'TaskStateExited', stateExitedEventDetails: { name: 'WritePrompt' } },
      { id: 13, previousEventId: 12, timestamp: at(6), type: 'MapStateEntered', stateEnteredEventDetails: { name: 'GenerateGrids' } },
      { id: 14, previousEventId: 13, timestamp: at(6), type: 'MapStateStarted' },
      { id: 15, previousEventId: 14, timestamp: at(6), type: 'MapIterationStarted', mapIterationStartedEventDetails: { name: 'GenerateGrids', index: 1 } },
      { id: 16, previousEventId: 15, timestamp: at(6), type: 'TaskStateEntered', stateEnteredEventDetails: { name: 'GenerateGrid' } },
      { id: 17, previousEventId: 16, timestamp: at(9), type: 'TaskStateExited', stateExitedEventDetails: { name: 'GenerateGrid' } },
      { id: 18, previousEventId: 17, timestamp: at(9), type: 'TaskStateEntered', stateEnteredEventDetails: { name: 'SplitGrid' } },
    ];
    const read = historyReader();
    const progress = history.map(read).filter((p) => p !== undefined);
    expect(progress.map((p) => [p.kind, p.state])).toEqual([
      ['entered', 'PromptAndBase'],
      ['entered', 'WritePrompt'],
      ['entered', 'GenerateBase'],
      ['failed', 'GenerateBase'],
      ['exited', 'WritePrompt'],
      ['entered', 'GenerateGrids'],
      ['entered', 'GenerateGrid'],
      ['exited', 'GenerateGrid'],
      ['entered', 'SplitGrid'],
    ]);
    expect(progress.slice(5).map((p) => p.index)).toEqual([undefined, 1, 1, 1]);
    expect(progress[3]).toMatchObject({ error: 'RateLimited', cause: 'base image for persona ada-lovelace: rate limited' });
    expect(progress[4]!.ms).toBe(4000);
  });
});

describe('avatars invoke start-from-upload', () => {
  it('replays the S3 event fixture: starts the persona it names and waits for the run', async () => {
    const data = join(work, 'invoke-data');
    const { code, stdout, stderr } = await avatars(work, [
      'invoke',
      'start-from-upload',
      '--event',
      join(eventsDir, 's3-persona-uploaded.json'),
      '--put',
      `personas/ada-lovelace.json=${join(eventsDir, 'persona.json')}`,
      '--data',
      data,
    ]);
    expect(code, stderr).toBe(0);
    const [outcome] = JSON.parse(stdout);
    expect(outcome).toMatchObject({ key: 'personas/ada-lovelace.json', rejected: [] });
    expect(outcome.started).toHaveLength(1);
    expect(stderr).toMatch(/execution ada-lovelace-[0-9a-f]{16}: SUCCEEDED, 4 avatars/);
  });
});

describe('a published run, from any process', () => {
  it('is never run again: a second invoke of the same upload on the same S3 makes no image call and rewrites nothing', async () => {
    // An S3-compatible server and an image API of their own, as a user's would be.
    const s3 = await startEmbeddedS3(join(work, 'shared-s3'), 'shared');
    const api = await startOfflineBackend();
    onTestFinished(async () => {
      await api.close();
      await s3.close();
    });
    const env = { S3_ENDPOINT: s3.endpoint, S3_ACCESS_KEY: s3.accessKey, S3_SECRET_KEY: s3.secretKey, S3_BUCKET_NAME: 'shared', OPENAI_API_KEY: 'sk-test', OPENAI_BASE_URL: api.baseUrl, PROMPT_PROVIDER: 'template' };
    const event = JSON.parse(readFileSync(join(eventsDir, 's3-persona-uploaded.json'), 'utf8')) as S3Notification;
    for (const record of event.Records!) record.s3.bucket.name = 'shared';
    writeFileSync(join(work, 'shared-event.json'), JSON.stringify(event));
    const invoke = () =>
      avatars(work, ['invoke', 'start-from-upload', '--event', join(work, 'shared-event.json'), '--put', `personas/ada-lovelace.json=${join(eventsDir, 'persona.json')}`, '--data', join(work, 'shared-data')], env);
    const client = new S3Client({ endpoint: s3.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: s3.accessKey, secretAccessKey: s3.secretKey } });
    onTestFinished(() => client.destroy());
    const published = async () => {
      const { Contents = [] } = await client.send(new ListObjectsV2Command({ Bucket: 'shared', Prefix: 'avatars/ada-lovelace/' }));
      return Promise.all(
        Contents.map(async ({ Key, ETag }) => ({ Key, ETag, tags: (await client.send(new GetObjectTaggingCommand({ Bucket: 'shared', Key }))).TagSet })),
      );
    };

    const first = await invoke();
    expect(first.code, first.stderr).toBe(0);
    expect(first.stderr).toMatch(/execution ada-lovelace-[0-9a-f]{16}: SUCCEEDED, 4 avatars/);
    const calls = imageCalls(api).length;
    const before = await published();
    expect(before.filter((o) => /img_\d\.png$/.test(o.Key!))).toHaveLength(4);

    const second = await invoke();
    expect(second.code, second.stderr).toBe(0);
    expect(second.stderr).toMatch(/execution ada-lovelace-[0-9a-f]{16}: persona ada-lovelace already published \(avatars\/ada-lovelace\/runs\/.*\/manifest\.json\): nothing ran/);
    expect(JSON.parse(second.stdout)[0]).toMatchObject({ started: [], alreadyStarted: [{ personaId: 'ada-lovelace' }] });
    expect(imageCalls(api)).toHaveLength(calls);
    expect(await published()).toEqual(before);
  });
});

describe('avatars dev', () => {
  /** `avatars dev` as a user runs it, with a way to upload to its S3 and to wait for its output. */
  function startDev(out: string, data: string) {
    const child = spawn(process.execPath, [cliPath, 'dev', '--data', data, '--out', out], { cwd: work, env: { PATH: process.env.PATH, HOME: work } });
    const output = { stdout: '', stderr: '' };
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    child.stdout.on('data', (chunk) => (output.stdout += chunk));
    child.stderr.on('data', (chunk) => (output.stderr += chunk));
    const seen = async (pattern: RegExp, stream: 'stdout' | 'stderr' = 'stdout'): Promise<RegExpMatchArray> => {
      for (const deadline = Date.now() + 50_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 50))) {
        const match = pattern.exec(output[stream]);
        if (match) return match;
        if (child.exitCode !== null) break;
      }
      throw new Error(`avatars dev never printed ${pattern}: ${output.stderr}`);
    };
    const upload = async (key: string, body: unknown) => {
      const [, endpoint] = await seen(/S3 endpoint: (http:\/\/127\.0\.0\.1:\d+)/);
      const s3 = new S3Client({ region: 'us-east-1', endpoint, forcePathStyle: true, credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } });
      await s3.send(new PutObjectCommand({ Bucket: 'avatars', Key: key, Body: typeof body === 'string' ? body : JSON.stringify(body), ContentType: 'application/json' }));
      s3.destroy();
    };
    const stop = async () => {
      child.kill('SIGINT');
      return exited;
    };
    return { output, seen, upload, stop };
  }

  it('runs the workflow for each persona file put under personas/ and saves its avatars', async () => {
    const out = join(work, 'dev-out');
    const dev = startDev(out, join(work, 'dev-data'));
    try {
      await dev.upload('personas/ada-lovelace.json', persona);
      await dev.seen(/✓ 4 avatars for ada-lovelace/);
      expect(readdirSync(join(out, 'ada-lovelace'))).toEqual(expect.arrayContaining(['img_1.png', 'img_4.png', 'index.html', 'manifest.json']));
      expect(dev.output.stderr).toMatch(/personas\/ada-lovelace\.json: started ada-lovelace-[0-9a-f]{16}/);
    } finally {
      expect(await dev.stop()).toBe(0);
    }
  });

  it('saves a batch\u2019s report and contact sheet from a .jsonl file put there to a folder of its own under out/batches/', async () => {
    const out = join(work, 'dev-batch-out');
    const dev = startDev(out, join(work, 'dev-batch-data'));
    try {
      await dev.upload('personas/pair.jsonl', `${JSON.stringify({ persona: { ...persona, id: 'pair-1' } })}\n${JSON.stringify({ persona: { ...persona, id: 'pair-2' } })}\n`);
      const [, folder] = await dev.seen(/batch: 2 published, 0 failed, 0 skipped; open (\S+)index\.html/, 'stderr');
      expect(folder!.startsWith(join(out, 'batches'))).toBe(true);
      expect(readdirSync(folder!)).toEqual(expect.arrayContaining(['report.json', 'index.html', 'pair-1', 'pair-2']));
    } finally {
      expect(await dev.stop()).toBe(0);
    }
  });

  it('keeps running, and says so, when it cannot save a run\u2019s images', async () => {
    const out = join(work, 'dev-out-is-a-file');
    writeFileSync(out, 'not a folder');
    const dev = startDev(out, join(work, 'dev-data-file'));
    try {
      await dev.upload('personas/ada-lovelace.json', persona);
      await dev.seen(/could not save the images/, 'stderr');
      await dev.upload('personas/grace.json', { ...persona, id: 'grace' });
      await dev.seen(/✓ 4 avatars for grace/);
    } finally {
      expect(await dev.stop()).toBe(0);
    }
  });
});

describe('the local Step Functions API', () => {
  it('refuses a second start under the same name with other input, as the service does', async () => {
    const world = await startWorld();
    const stateMachineArn = world.deps.settings.stateMachineArn!;
    await world.deps.sfn.send(new StartExecutionCommand({ stateMachineArn, name: 'same', input: JSON.stringify({ persona }) }));
    await expect(world.deps.sfn.send(new StartExecutionCommand({ stateMachineArn, name: 'same', input: JSON.stringify({ persona, images: 8 }) }))).rejects.toMatchObject({
      name: 'ExecutionAlreadyExists',
    });
    await expect(world.deps.sfn.send(new StartExecutionCommand({ stateMachineArn, name: 'has space', input: '{}' }))).rejects.toMatchObject({ name: 'InvalidName' });
    await world.stepFunctions!.settled();
    const described = await world.deps.sfn.send(new DescribeExecutionCommand({ executionArn: executionArn(stateMachineArn, 'same') }));
    expect(described.status).toBe('SUCCEEDED');
    expect(described.stopDate).toBeInstanceOf(Date);
  });

  it('stops a running execution, which ends ABORTED with the error and cause given, its name still taken', async () => {
    const world = await startTestEnvironment({ stepFunctions: {}, latencyMs: 2_000 });
    const stateMachineArn = world.deps.settings.stateMachineArn!;
    const { executionArn: arn } = await world.deps.sfn.send(new StartExecutionCommand({ stateMachineArn, name: 'stopped', input: JSON.stringify({ persona }) }));
    await world.deps.sfn.send(new StopExecutionCommand({ executionArn: arn, error: 'Operator', cause: 'wrong persona' }));
    expect(await world.deps.sfn.send(new DescribeExecutionCommand({ executionArn: arn }))).toMatchObject({ status: 'ABORTED', error: 'Operator', cause: 'wrong persona' });
    await expect(world.deps.sfn.send(new StartExecutionCommand({ stateMachineArn, name: 'stopped', input: JSON.stringify({ persona }) }))).rejects.toMatchObject({ name: 'ExecutionAlreadyExists' });
  });
});

describe('a batch, planning its personas\u2019 names', () => {
  it('runs a persona as its next attempt when its name is taken in Step Functions by a run that left no record', async () => {
    const world = await startTestEnvironment({ stepFunctions: {}, latencyMs: 500, env: batchVariables });
    const request = parseRunRequest(JSON.parse(personaLine('taken')));
    const name = executionName(request);
    const stateMachineArn = world.deps.settings.stateMachineArn!;
    // Stopped before it wrote anything but its working files: no manifest, no failure record.
    const { executionArn: arn } = await world.deps.sfn.send(new StartExecutionCommand({ stateMachineArn, name, input: JSON.stringify(request) }));
    await world.deps.sfn.send(new StopExecutionCommand({ executionArn: arn }));
    expect(await keysUnder(world, 'avatars/taken/failures/')).toEqual([]);

    await world.deps.store.put('batches/again/personas.jsonl', `${personaLine('taken')}\n${personaLine('fresh')}\n`, 'application/x-ndjson');
    await world.deps.sfn.send(new StartExecutionCommand({ stateMachineArn: world.deps.settings.batchStateMachineArn!, name: 'again', input: JSON.stringify({ personasKey: 'batches/again/personas.jsonl' }) }));
    await world.stepFunctions!.settled();
    const report = JSON.parse(await world.deps.store.getText('batches/again/report.json'));
    expect(report.personas.map((p: { personaId: string; status: string; name: string }) => [p.personaId, p.status, p.name])).toEqual([
      ['taken', 'SUCCEEDED', `${name}-2`],
      ['fresh', 'SUCCEEDED', executionName(parseRunRequest(JSON.parse(personaLine('fresh'))))],
    ]);
    // The child names the execution that started it (on AWS the Map's own; the local interpreter gives the batch's), so the console links them.
    const child = await world.deps.sfn.send(new DescribeExecutionCommand({ executionArn: executionArn(stateMachineArn, `${name}-2`) }));
    expect(JSON.parse(child.input!).AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID).toBe(executionArn(world.deps.settings.batchStateMachineArn!, 'again'));
  });

  it('skips a persona whose run is still going, started by an upload or avatars start, instead of starting it twice', async () => {
    const world = await startTestEnvironment({ stepFunctions: {}, latencyMs: 1_000 });
    const request = parseRunRequest(JSON.parse(personaLine('busy')));
    await world.deps.sfn.send(new StartExecutionCommand({ stateMachineArn: world.deps.settings.stateMachineArn!, name: executionName(request), input: JSON.stringify(request) }));
    await world.deps.store.put('batches/busy/personas.jsonl', `${personaLine('busy')}\n`, 'application/x-ndjson');
    const plan = await invoke(world, 'plan-batch', { personasKey: 'batches/busy/personas.jsonl', batchId: 'busy' });
    expect(plan).toMatchObject({ toRun: 0, skipped: 1 });
    const { skippedLines } = JSON.parse(await world.deps.store.getText(plan.planKey));
    expect(skippedLines[0].reason).toContain(`running already as execution ${executionName(request)}`);
  });
});

