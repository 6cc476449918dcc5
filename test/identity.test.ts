import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { facesIn, similarity } from '../lambdas/check-identity/faces.ts';
import { runLocally, type RunOutcome } from '../local/runner.ts';
import { persona, startTestEnvironment } from './support.ts';

const faces = join(import.meta.dirname, '..', 'local', 'faces');
const portrait = (file: string) => readFileSync(join(faces, file));

const retriesOf = (outcome: RunOutcome, state: string) => outcome.events.filter((e) => e.kind === 'retried' && e.state === state).length;

describe('the identity check', () => {
  it('draws a grid with another person in a panel again, and publishes only the subject, each avatar scored', async () => {
    const env = await startTestEnvironment({ faults: [{ kind: 'impostor', times: 1 }] });
    const outcome = await runLocally({ input: { persona, images: 4 }, deps: env.deps });
    if (outcome.status !== 'SUCCEEDED') throw new Error(`${outcome.error}: ${outcome.cause}`);
    expect(retriesOf(outcome, 'GridAttempt')).toBe(1);
    const manifest = JSON.parse(await env.deps.store.getText(outcome.output.manifestKey));
    for (const image of manifest.images) {
      expect(image.identity.pass).toBe(true);
      expect(image.identity.similarity).toBeGreaterThan(0.55);
    }
  });

  it('raises no false alarm on shifted, flipped or tinted pictures of the same person', async () => {
    const env = await startTestEnvironment();
    const outcome = await runLocally({ input: { persona, images: 8 }, deps: env.deps });
    if (outcome.status !== 'SUCCEEDED') throw new Error(`${outcome.error}: ${outcome.cause}`);
    expect(retriesOf(outcome, 'GridAttempt')).toBe(0);
    expect(outcome.output.images.every((i) => i.identity?.pass)).toBe(true);
  });

  it('fails the run naming the identity check when every grid shows a stranger, publishing nothing', async () => {
    const env = await startTestEnvironment({ faults: [{ kind: 'impostor', times: Infinity }] });
    const outcome = await runLocally({ input: { persona, images: 4 }, deps: env.deps });
    expect(outcome.status).toBe('FAILED');
    if (outcome.status !== 'FAILED') return;
    expect(outcome.error).toBe('IdentityMismatch');
    expect(outcome.cause).toMatch(/panel 2: another person\? \(0\.\d+ < 0\.55\)/);
    await expect(env.deps.store.getText('avatars/ada-lovelace/manifest.json')).rejects.toThrow();
    expect(await env.deps.store.getText(`avatars/ada-lovelace/failures/${outcome.runId}.json`)).toContain('IdentityMismatch');
  });

  it('publishes everything with its verdict under IDENTITY_POLICY=flag', async () => {
    const env = await startTestEnvironment({ faults: [{ kind: 'impostor', times: Infinity }], env: { IDENTITY_POLICY: 'flag' } });
    const outcome = await runLocally({ input: { persona, images: 4 }, deps: env.deps });
    if (outcome.status !== 'SUCCEEDED') throw new Error(`${outcome.error}: ${outcome.cause}`);
    expect(outcome.output.images.map((i) => i.identity?.pass)).toEqual([true, false, true, true]);
  });

  it('scores real photos: the same person transformed high, two different people low', async () => {
    const [collins] = await facesIn(portrait('astronaut.png'));
    const [hopper] = await facesIn(portrait('grace_hopper.jpg'));
    const changed = await sharp(portrait('astronaut.png')).flop().modulate({ hue: 30, brightness: 0.85 }).extract({ left: 30, top: 0, width: 440, height: 440 }).toBuffer();
    const [collinsAgain] = await facesIn(changed);
    expect(similarity(collins!.embedding, collinsAgain!.embedding)).toBeGreaterThan(0.8);
    expect(similarity(collins!.embedding, hopper!.embedding)).toBeLessThan(0.5);
  });
});
