import { describe, expect, it } from 'vitest';
import type { BatchReport } from '../lambdas/shared/batch.ts';
import { FaceIndex } from '../lambdas/shared/face-index.ts';
import { faceIndexKeys, runKeys } from '../lambdas/shared/keys.ts';
import { statedAge } from '../lambdas/shared/persona-look.ts';
import { drawAvatar, lookFor } from '../local/avatar-art.ts';
import { runLocally } from '../local/runner.ts';
import { avatars, eventsDir, imageCalls, invoke, persona, runBatch, startTestEnvironment, tempDir } from './support.ts';

const woman = (id: string, bio: string) => JSON.stringify({ id, firstname: id, gender: 'female', bio_facebook: bio });
const man = (id: string, bio: string) => JSON.stringify({ id, firstname: id, gender: 'male', bio_facebook: bio });

const lookOf = (report: BatchReport, id: string) => report.personas.find((p) => p.personaId === id)!.look!;

describe('every persona a different person', () => {
  it('publishes a batch as different people of each persona’s gender, drawing again only a look-alike and a woman drawn as a man', async () => {
    const world = await startTestEnvironment({
      faults: [
        { kind: 'wrong-gender', times: 1, matching: 'Beekeeper' },
        { kind: 'lookalike', times: 1, matching: 'Marathon' },
      ],
    });
    const report = await runBatch(world, [woman('ana', 'Potter and painter.'), woman('bea', 'Beekeeper in the hills.'), man('carl', 'Chess coach.'), man('dan', 'Marathon runner.')], 'cast');
    expect(report.counts.SUCCEEDED).toBe(4);
    for (const p of report.personas) expect(p.look!.read!.gender).toBe(p.look!.asked.gender);
    // The woman drawn as a man is drawn again for it, once; one of the two men who came out as one person is too.
    expect(lookOf(report, 'bea').redrawn).toEqual(['gender']);
    expect([...lookOf(report, 'carl').redrawn, ...lookOf(report, 'dan').redrawn]).toEqual(['lookalike']);
    expect(lookOf(report, 'ana').redrawn).toEqual([]);
    expect(report.diversity!.lookalikes).toEqual({ redrawn: 1, keptFlagged: 0 });
    expect(report.diversity!.nearestPair!.similarity).toBeLessThan(0.58);
    expect(report.diversity!.gender).toEqual({ asked: { female: 2, male: 2 }, read: { female: 2, male: 2 }, misses: 0 });
    const sheet = await world.deps.store.getText(`batches/cast/index.html`);
    expect(sheet).toContain('Look-alikes: 1 drawn again, 0 kept and flagged');
    expect(sheet).toMatch(/bea.*redrawn 1x \(gender\)/s);
  });

  it('draws a persona of a later batch again when its first base is someone already published', async () => {
    const world = await startTestEnvironment({ faults: [{ kind: 'lookalike', times: 1, matching: 'Sailor' }] });
    await runBatch(world, [man('first', 'Carpenter.')], 'earlier');
    const report = await runBatch(world, [man('later', 'Sailor and cook.')], 'later');
    const look = lookOf(report, 'later');
    expect(look.redrawn).toEqual(['lookalike']);
    expect(look.misses).toEqual([]);
    expect(look.nearest!.similarity).toBeLessThan(0.58);
    const manifest = JSON.parse(await world.deps.store.getText('avatars/later/manifest.json'));
    expect(manifest.baseCheck.redraws[0].reasons[0]).toMatch(/^lookalike: the person of persona first \(0\.\d+ ≥ 0\.58\)/);
    // The refused base is paid for, and the manifest's cost says so.
    expect(manifest.usage.map((u: { stage: string }) => u.stage)).toContain('generate-base (refused, redraw 1)');
  });

  it('publishes a look-alike flagged, drawn once, under LOOKALIKE_POLICY=flag', async () => {
    const world = await startTestEnvironment({ faults: [{ kind: 'lookalike', times: 1, matching: 'Sailor' }], env: { LOOKALIKE_POLICY: 'flag' } });
    await runBatch(world, [man('first', 'Carpenter.')], 'earlier');
    const report = await runBatch(world, [man('later', 'Sailor and cook.')], 'later');
    expect(lookOf(report, 'later')).toMatchObject({ redrawn: [], misses: ['lookalike'], nearest: { personaId: 'first' } });
    expect(report.diversity!.lookalikes).toEqual({ redrawn: 0, keptFlagged: 1 });
  });

  it('draws a base refused in batch mode again in the batch’s next OpenAI round, with its grid, under the persona’s next attempt', async () => {
    const world = await startTestEnvironment({ faults: [{ kind: 'wrong-gender', times: 1, matching: 'Beekeeper' }] });
    const report = await runBatch(world, [woman('ana', 'Potter and painter.'), woman('bea', 'Beekeeper in the hills.')], 'batched', { openAiBatch: true });
    expect(report.counts).toMatchObject({ SUCCEEDED: 2, FAILED: 0 });
    expect(lookOf(report, 'bea')).toMatchObject({ redrawn: ['gender'], misses: [], read: { gender: 'female' } });
    expect(lookOf(report, 'ana').redrawn).toEqual([]);
    expect(report.personas.find((p) => p.personaId === 'bea')!.name).toMatch(/-2$/);
    const lines = world.backend!.batchLines.map((l) => l.custom_id.split(':').slice(0, 2).join(':'));
    // Lines are numbered by the persona's line in the file: bea's base and grid twice, ana's once.
    expect(lines.filter((l) => l.startsWith('2:'))).toEqual(['2:base', '2:grid-0', '2:base', '2:grid-0']);
    expect(lines.filter((l) => l.startsWith('1:'))).toEqual(['1:base', '1:grid-0']);
    expect(imageCalls(world.backend!)).toEqual([]);
    const manifest = JSON.parse(await world.deps.store.getText('avatars/bea/manifest.json'));
    expect(manifest.usage).toContainEqual(expect.objectContaining({ stage: 'generate-base (refused, redraw 1)', api: 'batch' }));
  }, 120_000);

  it('prints the base’s verdicts with the avatars of `avatars run`', async () => {
    const dir = tempDir('lookalike-cli');
    const result = await avatars(dir, ['run', `${eventsDir}/persona.json`, '--images', '4', '--fault', 'wrong-gender', '--data', `${dir}/data`]);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/base: read as female \(0\.\d+\), looks \d+; asked female; no other persona to compare · redrawn 1x \(gender\)/);
  });
});

describe('the face index', () => {
  const vector = (seed: number) => Array.from({ length: 64 }, (_, i) => Math.sin(seed * 7.1 + i * 1.3));
  const nudged = (v: number[]) => v.map((x, i) => x + (i % 5 === 0 ? 0.05 : 0));
  const face = (personaId: string) => ({ personaId, runId: 'r', manifestKey: `avatars/${personaId}/runs/r/manifest.json`, at: '2026-01-01T00:00:00.000Z' });

  it('lets one of two look-alikes registering at the same moment in two Lambdas keep its face, the other told whose it is', async () => {
    const env = await startTestEnvironment();
    const [a, b] = [new FaceIndex(env.deps.store), new FaceIndex(env.deps.store)];
    const answers = await Promise.all([a.register(face('p1'), vector(1), 0.58), b.register(face('p2'), nudged(vector(1)), 0.58)]);
    const registered = answers.filter((r) => 'registered' in r);
    const collided = answers.filter((r) => 'collided' in r);
    expect(registered).toHaveLength(1);
    expect(collided).toHaveLength(1);
    expect(collided[0]!.collided.face.personaId).toBe('registered' in answers[0]! ? 'p1' : 'p2');
    expect(await env.deps.store.getTextIfExists(faceIndexKeys.entry(1))).toBeUndefined();
  });

  it('finds the nearest face among those registered by others, in a copy that starts cold, through its chunks', async () => {
    const env = await startTestEnvironment();
    const writer = new FaceIndex(env.deps.store, { chunk: 4 });
    for (let i = 0; i < 9; i++) await writer.register(face(`p${i}`), vector(i + 10), 0.99);
    expect(await env.deps.store.getTextIfExists(faceIndexKeys.chunk(4))).toBeDefined();
    const cold = new FaceIndex(env.deps.store, { chunk: 4 });
    await cold.refresh();
    expect(cold.size).toBe(9);
    expect(cold.nearest(nudged(vector(16)))).toMatchObject({ face: { personaId: 'p6', seq: 6 } });
    expect(cold.nearest(vector(16), 'p6')!.face.personaId).not.toBe('p6');
  });
});

describe('the person the persona describes', () => {
  it.each([
    ['Retired teacher, gardening every day.', 60, 80],
    ['College freshman studying biology.', 17, 20],
    ["I'm 34 and I love climbing.", 32, 36],
    ['A 52-year-old baker.', 50, 54],
    ['Still in my late forties, still skating.', 46, 49],
    ['Proud grandmother of five.', 55, 85],
  ])('reads an apparent age from “%s”', (bio, min, max) => {
    expect(statedAge(bio)).toMatchObject({ min, max });
  });

  it.each(['I have 12 cats and 3 dogs.', 'Runner: 42 km every Sunday.', 'Writing notes on engines.'])('invents no age from “%s”', (bio) => {
    expect(statedAge(bio)).toBeUndefined();
  });

  it('asks for the stated age in the base prompt, and nothing where the bios state none', async () => {
    const env = await startTestEnvironment();
    const retired = { ...persona, id: 'retired', bio_facebook: 'Retired sailor.' };
    const outcome = await runLocally({ input: { persona: retired, images: 4 }, deps: env.deps });
    if (outcome.status !== 'SUCCEEDED') throw new Error(`${outcome.error}: ${outcome.cause}`);
    expect(await env.deps.store.getText(runKeys('retired', outcome.runId).basePrompt)).toContain('Apparent age 60 to 80.');
    const plain = await runLocally({ input: { persona, images: 4 }, deps: env.deps });
    if (plain.status !== 'SUCCEEDED') throw new Error(`${plain.error}: ${plain.cause}`);
    expect(await env.deps.store.getText(runKeys(persona.id, plain.runId).basePrompt)).not.toContain('Apparent age');
  });

  it('draws again a base whose apparent age clearly misses the bios’, asking for the age in the new prompt', async () => {
    const env = await startTestEnvironment();
    const freshman = { ...persona, id: 'freshman', gender: 'male', bio_facebook: 'College freshman, into robotics.' };
    const keys = runKeys('freshman', 'r1');
    // A man the face model reads as about 59.
    await env.deps.store.put(keys.base, await drawAvatar(lookFor('x'), 1024, 1024, -1, 'biden2'), 'image/png');
    const base = { baseKey: keys.base, model: 'gpt-image-2', estimatedCostUsd: 0.04, warnings: [], ms: 1 };
    const answer = await invoke(env, 'check-base', { personaId: 'freshman', runId: 'r1', persona: freshman, base });
    if (!('redraw' in answer)) throw new Error(`not drawn again: ${JSON.stringify(answer.check)}`);
    expect(answer.redraws[0]!.misses).toEqual(['age']);
    expect(answer.redraws[0]!.reasons[0]).toMatch(/^age: looks 5\d, far from 17-20 \("College freshman", ±15\)/);
    expect(await env.deps.store.getText(answer.redraw.promptKey)).toContain('They clearly look 17 to 20 years old.');
  });
});
