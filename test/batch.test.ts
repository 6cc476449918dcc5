import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { ListExecutionsCommand } from '@aws-sdk/client-sfn';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import type { BatchItem, BatchReport } from '../lambdas/shared/batch.ts';
import type { ObjectStore } from '../lambdas/shared/store.ts';
import { startOfflineBackend } from '../local/offline-openai.ts';
import { avatars, imageCalls, invoke, persona, personaLine, runBatch, startBatchWorld as startWorld, startDynamoDb, team } from './support.ts';

const dirs: string[] = [];
afterEach(async () => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

const statusesOf = (report: BatchReport) => report.personas.map((p) => `${p.line}:${p.personaId ?? '-'}:${p.status}`);

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'avatars-batch-'));
  dirs.push(dir);
  return dir;
}

describe('a batch of personas', () => {
  it('makes no image call when the same file runs again, each persona reported as already published', async () => {
    const world = await startWorld();
    const lines = team(3);
    await runBatch(world, lines, 'again');
    const calls = imageCalls(world.backend!).length;
    const second = await runBatch(world, lines, 'again-2');
    expect(imageCalls(world.backend!)).toHaveLength(calls);
    expect(second.counts).toEqual({ total: 3, SUCCEEDED: 0, FAILED: 0, SKIPPED: 3 });
    for (const p of second.personas) {
      expect(p.reason).toBe('already published with the same request');
      expect(p.avatars).toHaveLength(4);
    }
  });

  it('runs again only the personas whose request changed or never published', async () => {
    const world = await startWorld();
    await runBatch(world, team(2), 'first');
    const calls = imageCalls(world.backend!).length;
    const report = await runBatch(world, [personaLine('member-1'), personaLine('member-2', { images: 8 }), personaLine('member-3')], 'second');
    expect(statusesOf(report)).toEqual(['1:member-1:SKIPPED', '2:member-2:SUCCEEDED', '3:member-3:SUCCEEDED']);
    // member-2 with 8 images (a base, two grids) and member-3 (a base, a grid).
    expect(imageCalls(world.backend!).length - calls).toBe(5);
  });

  it('runs the first of two lines with one id and reports the other, overwriting nothing', async () => {
    const world = await startWorld();
    const report = await runBatch(world, [personaLine('twin'), personaLine('other'), JSON.stringify({ persona: { ...persona, id: 'twin', firstname: 'Grace' } })], 'twins');
    expect(statusesOf(report)).toEqual(['1:twin:SUCCEEDED', '2:other:SUCCEEDED', '3:twin:SKIPPED']);
    expect(report.personas[2]!.reason).toMatch(/duplicate id: line 1 has persona twin already/);
    const manifest = JSON.parse(await world.deps.store.getText('avatars/twin/manifest.json'));
    expect(manifest.persona.firstname).toBe(persona.firstname);
  });

  it('writes a contact sheet with a row of avatars per persona and each failure with its reason', async () => {
    const world = await startWorld();
    await runBatch(world, [personaLine('shown'), '{"persona": {"id": "broken"}}'], 'sheet');
    const html = await world.deps.store.getText('batches/sheet/index.html');
    expect(html.match(/<img /g)).toHaveLength(4);
    expect(html).toContain('shown');
    expect(html).toMatch(/line 2 · SKIPPED[\s\S]*not a valid persona: persona.firstname/);
  });

  it('spaces the personas\u2019 turns by their image calls at the governor\u2019s pace, just under IMAGES_PER_MINUTE', async () => {
    const world = await startWorld({ env: { IMAGES_PER_MINUTE: '30' } });
    await world.deps.store.put('batches/paced/personas.jsonl', [personaLine('a'), personaLine('b', { images: 8 }), personaLine('c')].join('\n'), 'application/x-ndjson');
    const plan = await invoke(world, 'plan-batch', { personasKey: 'batches/paced/personas.jsonl', batchId: 'paced' });
    const items = (await world.deps.store.getText(plan.itemsKey)).trim().split('\n').map((l) => JSON.parse(l) as BatchItem);
    const turns = items.map((i) => Date.parse(i.notBefore));
    // a: 2 calls, 4 s at 30 a minute, 4.2 s at the governor's pace, 5% under it; b: 3 calls, 6.3 s.
    expect([turns[1]! - turns[0]!, turns[2]! - turns[1]!]).toEqual([4200, 6300]);
    expect(plan).toMatchObject({ toRun: 3, imageCalls: 7, imagesPerMinute: 30 });
  });

  it('starts an uploaded file again only once a persona in it failed, then runs just that persona, as a new attempt', async () => {
    // The base image call fails on its first try and on each of its three retries.
    const world = await startWorld({ stepFunctions: {}, faults: [{ kind: 'server-error', times: 4, route: 'generations' }] });
    await world.deps.store.put('personas/one.jsonl', `${personaLine('solo')}\n`, 'application/x-ndjson');
    const upload = { Records: [{ eventName: 'ObjectCreated:Put', s3: { bucket: { name: world.deps.store.bucket }, object: { key: 'personas/one.jsonl' } } }] };
    const [first] = await invoke(world, 'start-from-upload', upload);
    await world.stepFunctions!.settled();
    const failed = JSON.parse(await world.deps.store.getText(`batches/${first!.batch!.name}/report.json`)) as BatchReport;
    expect(failed.counts.FAILED).toBe(1);
    const [second] = await invoke(world, 'start-from-upload', upload);
    expect(second!.batch).toMatchObject({ name: `${first!.batch!.name}-2`, existing: false, attempt: 2 });
    await world.stepFunctions!.settled();
    const fixed = JSON.parse(await world.deps.store.getText(`batches/${second!.batch!.name}/report.json`)) as BatchReport;
    expect(fixed.personas).toEqual([expect.objectContaining({ personaId: 'solo', status: 'SUCCEEDED', name: `${failed.personas[0]!.name}-2` })]);
    // Done with every persona published: the same upload starts nothing more.
    const [third] = await invoke(world, 'start-from-upload', upload);
    expect(third!.batch).toMatchObject({ name: second!.batch!.name, existing: true });
  });

  it('checks a 10,000-line upload as it streams: bad lines by number, one batch for the rest', async () => {
    const world = await startWorld({ stepFunctions: {}, env: { IDENTITY_POLICY: 'off' } });
    // Five personas, each on 1,998 lines (the first runs, the others are duplicates), and ten bad lines.
    const lines = Array.from({ length: 10_000 }, (_, i) => (i % 1000 === 999 ? `{"persona": {"id": "bad-${i + 1}"}}` : personaLine(`p${i % 5}`, { images: 1 })));
    await world.deps.store.put('personas/big.jsonl', lines.join('\n'), 'application/x-ndjson');
    const [outcome] = await invoke(world, 'start-from-upload', { Records: [{ eventName: 'ObjectCreated:Put', s3: { bucket: { name: world.deps.store.bucket }, object: { key: 'personas/big.jsonl' } } }] });
    expect(outcome!.rejected.map((p) => p.line)).toEqual([1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000]);
    expect(outcome!.batch).toMatchObject({ personas: 9990, existing: false });
    await world.stepFunctions!.settled();
    const report = JSON.parse(await world.deps.store.getText(`batches/${outcome!.batch!.name}/report.json`)) as BatchReport;
    expect(report.counts).toEqual({ total: 10_000, SUCCEEDED: 5, FAILED: 0, SKIPPED: 9995 });
    const children = await world.deps.sfn.send(new ListExecutionsCommand({ stateMachineArn: world.deps.settings.stateMachineArn! }));
    expect(children.executions).toHaveLength(5);
  }, 120_000);
});

describe('avatars batch', () => {
  it('exits non-zero with every persona reported failed when every image call fails, and publishes them all once the API answers', async () => {
    const cwd = tempDir();
    writeFileSync(join(cwd, 'team.jsonl'), `${team(3).join('\n')}\n`);
    const failing = await avatars(cwd, ['batch', 'team.jsonl', '--fault', 'server-error:always', '--json']);
    expect(failing.code).toBe(1);
    const failed = JSON.parse(failing.stdout) as BatchReport;
    expect(failed.counts).toEqual({ total: 3, SUCCEEDED: 0, FAILED: 3, SKIPPED: 0 });
    for (const p of failed.personas) expect(p).toMatchObject({ status: 'FAILED', error: 'UpstreamError', cause: expect.stringContaining(p.personaId!) });

    const fixed = await avatars(cwd, ['batch', 'team.jsonl']);
    expect(fixed.code).toBe(0);
    expect(fixed.stdout).toMatch(/✓ batch team-[0-9a-f]{16}-2: 3 published, 0 failed, 0 skipped/);
    const report = JSON.parse(readFileSync(fixed.stdout.match(/report: (\S+report\.json);/)![1]!, 'utf8')) as BatchReport;
    // Each persona ran as a new attempt: the failed one's name is kept with its failure record.
    for (const p of report.personas) expect(p.name).toMatch(new RegExp(`^${p.personaId}-[0-9a-f]{16}-2$`));

    // Everything published: the same file again starts nothing.
    const again = await avatars(cwd, ['batch', 'team.jsonl']);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/^✓ team\.jsonl: nothing to run: 3 of 3 personas already published with the same request; no batch started$/m);
    expect(readdirSync(join(cwd, 'out', 'batches')).some((d) => d.endsWith('-3'))).toBe(false);
  }, 120_000);

  it('rejects a file with no valid persona before starting anything, naming the line and field', async () => {
    const cwd = tempDir();
    writeFileSync(join(cwd, 'bad.jsonl'), '{"persona": {"id": "x", "firstname": "X"}}\n');
    const result = await avatars(cwd, ['batch', 'bad.jsonl']);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/bad.jsonl: line 1: .*persona\.gender: required$/m);
  });

  it('names only the file\u2019s own line and column of a broken JSON line, runs the rest, and does not call an exit 1 a success', async () => {
    const cwd = tempDir();
    writeFileSync(join(cwd, 'team.jsonl'), `${personaLine('whole')}\n{"persona": {"id": "broken" "firstname": "B"}}\n`);
    const result = await avatars(cwd, ['batch', 'team.jsonl']);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/team\.jsonl: line 2: not valid JSON: .* at column 29$/m);
    expect(`${result.stderr}${result.stdout}`).not.toMatch(/line 1 column|line 1:/);
    expect(result.stdout).toMatch(/^✗ batch team-[0-9a-f]{16}: 1 published, 0 failed, 1 skipped/m);
    expect(result.stdout).not.toMatch(/^✓/m);
  });
});

describe('a batch with a budget', () => {
  it('publishes what the budget pays for, refuses the rest before paying, and with a larger budget runs only those', async () => {
    const backend = await startOfflineBackend();
    onTestFinished(backend.close);
    const db = await startDynamoDb();
    const cwd = tempDir();
    writeFileSync(join(cwd, 'team.jsonl'), `${team(4).join('\n')}\n`);
    const env = { OPENAI_API_KEY: 'sk-test', OPENAI_BASE_URL: backend.baseUrl, PROMPT_PROVIDER: 'template', IDENTITY_POLICY: 'off', LOOKALIKE_POLICY: 'off', IMAGE_BUDGET_TABLE: 'image-budget', ...db.env };

    // About $0.115 a persona (gpt-image-2, medium, 1024x1024: a base and a grid): $0.25 pays for two.
    const first = await avatars(cwd, ['batch', 'team.jsonl', '--budget-usd', '0.25'], env);
    expect(first.code).toBe(1);
    expect(first.stdout).toMatch(/✗ member-3 \(line 3\): BudgetExhausted: not run, nothing paid: its image calls are estimated at \$0\.1\d+ and the batch budget of \$0\.25 has \$0\.0\d+ left/);
    expect(first.stdout).toContain('2 not run: the batch budget of $0.25 ran out; run the same file again with a larger --budget-usd');
    expect(first.stdout).toMatch(/2 published, 2 failed, 0 skipped/);
    const paidFirst = imageCalls(backend).length;
    expect(paidFirst).toBe(4);

    const spent = await avatars(cwd, ['budget', '--json'], env);
    expect(spent.code, spent.stderr).toBe(0);
    const today = JSON.parse(spent.stdout) as { totalUsd: number; batches: { batchId: string; usd: number }[] };
    expect(today.totalUsd).toBeGreaterThan(0.2);
    expect(today.totalUsd).toBeLessThanOrEqual(0.25);
    expect(today.batches).toEqual([{ batchId: expect.stringMatching(/^team-[0-9a-f]{16}$/), usd: today.totalUsd }]);

    const second = await avatars(cwd, ['batch', 'team.jsonl', '--budget-usd', '5'], env);
    expect(second.code, second.stdout + second.stderr).toBe(0);
    expect(second.stdout).toMatch(/2 published, 0 failed, 2 skipped/);
    // Only the two refused personas were drawn: a base and a grid each.
    expect(imageCalls(backend).length - paidFirst).toBe(4);
  }, 120_000);
});

describe('a batch report at any size', () => {
  it('reads the results the Map wrote as compact JSON Lines, one persona a line, keys and no URLs', async () => {
    const world = await startWorld({ env: { IDENTITY_POLICY: 'off' } });
    const report = await runBatch(world, team(3), 'compact');
    expect(report.counts).toMatchObject({ SUCCEEDED: 3 });
    const plan = JSON.parse(await world.deps.store.getText('batches/compact/plan.json')) as { resultsPrefix: string };
    const manifestKey = (await world.deps.store.s3.send(new ListObjectsV2Command({ Bucket: world.deps.store.bucket, Prefix: plan.resultsPrefix }))).Contents!.map((o) => o.Key!).find((k) => k.endsWith('manifest.json'))!;
    const manifest = JSON.parse(await world.deps.store.getText(manifestKey)) as { ResultFiles: { SUCCEEDED: { Key: string }[] } };
    const lines = (await world.deps.store.getText(manifest.ResultFiles.SUCCEEDED[0]!.Key)).trim().split('\n').map((l) => JSON.parse(l) as Record<string, any>);
    expect(lines).toHaveLength(3);
    for (const line of lines) {
      expect(Object.keys(line).sort()).toEqual(['line', 'name', 'outcome', 'personaId']);
      expect(line.outcome).toEqual({
        status: 'SUCCEEDED',
        manifestKey: expect.any(String),
        images: [expect.stringMatching(/^avatars\/.+\/img_\d\.png$/), expect.any(String), expect.any(String), expect.any(String)],
        look: null,
      });
    }
  });

  it('still reports every persona, failed with the Map\u2019s error, when the Map cannot read its items', async () => {
    const world = await startWorld({ env: { IDENTITY_POLICY: 'off' } });
    // The items file unreadable once planned, as a lost object or a denied read would leave it.
    const store = Object.create(world.deps.store) as ObjectStore;
    store.getBytes = async (key: string) => {
      if (key.endsWith('/items.jsonl')) throw Object.assign(new Error('Access Denied'), { name: 'AccessDenied' });
      return world.deps.store.getBytes(key);
    };
    const report = await runBatch({ ...world, deps: { ...world.deps, store } }, team(2), 'unreadable');
    expect(report.counts).toEqual({ total: 2, SUCCEEDED: 0, FAILED: 2, SKIPPED: 0 });
    for (const p of report.personas) expect(p).toMatchObject({ status: 'FAILED', error: 'States.ItemReaderFailed', cause: expect.stringContaining('AccessDenied: Access Denied') });
    expect(imageCalls(world.backend!)).toHaveLength(0);
  });
});
