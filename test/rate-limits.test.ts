import { ListExecutionsCommand } from '@aws-sdk/client-sfn';
import { describe, expect, it } from 'vitest';
import { startFromUpload, type S3Notification } from '../lambdas/start-from-upload/core.ts';
import type { Fault } from '../local/offline-openai.ts';
import { imageCalls, persona, startTestEnvironment } from './support.ts';

const uploaded = (bucket: string, key: string): S3Notification => ({ Records: [{ eventName: 'ObjectCreated:Put', s3: { bucket: { name: bucket }, object: { key } } }] });

async function statuses(world: Awaited<ReturnType<typeof startTestEnvironment>>) {
  const listed = await world.deps.sfn.send(new ListExecutionsCommand({ stateMachineArn: world.deps.settings.stateMachineArn! }));
  return (listed.executions ?? []).map((e) => e.status);
}

describe('runs sharing an account\u2019s image rate limit', () => {
  it('publishes every persona uploaded at once when the API allows fewer images a minute than they ask', async () => {
    // 6 personas at once, 2 images each, against 120 images a minute, and no pacing of our own
    // (IMAGES_PER_MINUTE far above it): 429s with retry-after-ms are waited out inside the image
    // call, not counted against the state machine's retries.
    const env = await startTestEnvironment({ stepFunctions: {}, imagesPerMinute: 120, env: { IMAGE_TIMEOUT_MS: '30000', IMAGES_PER_MINUTE: '100000' } });
    const keys = Array.from({ length: 6 }, (_, i) => `personas/persona-${i}.json`);
    for (const [i, key] of keys.entries()) await env.deps.store.putJson(key, { ...persona, id: `persona-${i}` });
    const outcomes = await startFromUpload({ Records: keys.flatMap((key) => uploaded(env.deps.store.bucket, key).Records!) }, env.deps);
    expect(outcomes.flatMap((o) => o.started)).toHaveLength(6);
    await env.stepFunctions!.settled();
    expect(await statuses(env)).toEqual(Array(6).fill('SUCCEEDED'));
    // 12 images were drawn; the requests beyond those were refused with 429 and asked again.
    expect(imageCalls(env.backend!).length).toBeGreaterThan(12);
    // A 429 that states the account's limit says what IMAGES_PER_MINUTE should be.
    const warnings = await Promise.all(Array.from({ length: 6 }, async (_, i) => JSON.parse(await env.deps.store.getText(`avatars/persona-${i}/manifest.json`)).warnings as string[]));
    expect(warnings.flat()).toContainEqual(expect.stringMatching(/allows 120 images a minute, fewer than IMAGES_PER_MINUTE=100000/));
  }, 120_000);

  it('starts a persona again as a new attempt once its run failed, and not while it runs or after it succeeded', async () => {
    const faults: Fault[] = [{ kind: 'policy', times: 2, route: 'generations' }];
    const env = await startTestEnvironment({ stepFunctions: {}, faults });
    await env.deps.store.putJson('personas/ada-lovelace.json', persona);
    const event = uploaded(env.deps.store.bucket, 'personas/ada-lovelace.json');
    const [first] = await startFromUpload(event, env.deps);
    await env.stepFunctions!.settled();
    expect(await statuses(env)).toEqual(['FAILED']);
    // The same upload again, the API behaving now: a second attempt under a name of its own.
    const [second] = await startFromUpload(event, env.deps);
    expect(second!.started.map((s) => s.name)).toEqual([`${first!.started[0]!.name}-2`]);
    await env.stepFunctions!.settled();
    const [third] = await startFromUpload(event, env.deps);
    expect(third!.started).toEqual([]);
    expect(third!.alreadyStarted.map((s) => s.name)).toEqual([`${first!.started[0]!.name}-2`]);
    expect((await statuses(env)).sort()).toEqual(['FAILED', 'SUCCEEDED']);
    const record = JSON.parse(await env.deps.store.getText(`avatars/ada-lovelace/failures/${first!.started[0]!.name}.json`));
    expect(record.retry).toMatch(/upload the persona again/);
  });
});
