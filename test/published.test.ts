import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { GetObjectTaggingCommand, HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { Template } from 'aws-cdk-lib/assertions';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { buildApp } from '../infra/app.ts';
import type { PublishEvent } from '../lambdas/publish/core.ts';
import { avatarKeys } from '../lambdas/shared/keys.ts';
import { runLocally, type RunOutcome } from '../local/runner.ts';
import { eventsDir, invoke, persona, startTestEnvironment, tempDir } from './support.ts';

const fixture = (stage: string): unknown => JSON.parse(readFileSync(join(eventsDir, `${stage}.json`), 'utf8'));

const outdir = tempDir('synth');

type Succeeded = Extract<RunOutcome, { status: 'SUCCEEDED' }>;

type Env = Awaited<ReturnType<typeof startTestEnvironment>>;

async function runOnce(env: Env, runId: string, input: Record<string, unknown> = { persona, images: 8 }): Promise<Succeeded> {
  const outcome = await runLocally({ input, deps: env.deps, runId });
  if (outcome.status !== 'SUCCEEDED') throw new Error(`${outcome.error}: ${outcome.cause}`);
  return outcome;
}

const dimensionsOf = async (env: Env, keys: string[]) =>
  Promise.all(keys.map(async (key) => sharp(await env.deps.store.getBytes(key)).metadata().then((m) => `${m.width}x${m.height}`)));

describe('what users receive', () => {
  it('gives every avatar of a run the same square size, from tiles of uneven sizes', async () => {
    const env = await startTestEnvironment();
    const { output } = await runOnce(env, 'uniform');
    const sizes = await dimensionsOf(env, output.images.map((i) => i.key));
    expect(new Set(sizes).size).toBe(1);
    const [width, height] = sizes[0]!.split('x').map(Number);
    expect(width).toBe(height);
    // The largest square every tile gives: nothing upscaled from a 1024x1024 grid.
    expect(width).toBeGreaterThan(400);
    expect(width).toBeLessThan(512);
    expect(output.images.every((i) => `${i.width}x${i.height}` === sizes[0])).toBe(true);
  });

  it('crops to the aspect and width asked, never stretching', async () => {
    const env = await startTestEnvironment({ env: { AVATAR_ASPECT: '4:5', AVATAR_SIZE: '400', TILE_FORMAT: 'webp' } });
    const { output } = await runOnce(env, 'portrait', { persona, images: 4 });
    expect(await dimensionsOf(env, output.images.map((i) => i.key))).toEqual(['400x500', '400x500', '400x500', '400x500']);
    expect(output.images.every((i) => i.key.endsWith('.webp'))).toBe(true);
  });

  it('leaves an earlier run byte for byte as it was, and the current manifest names only the latest', async () => {
    const env = await startTestEnvironment();
    const first = await runOnce(env, 'first-run');
    const before = await Promise.all(first.output.images.map((i) => env.deps.store.getBytes(i.key)));
    const second = await runOnce(env, 'second-run', { persona, images: 4 });
    const after = await Promise.all(first.output.images.map((i) => env.deps.store.getBytes(i.key)));
    expect(after).toEqual(before);
    const current = JSON.parse(await env.deps.store.getText(second.output.currentManifestKey));
    expect(current.runId).toBe('second-run');
    expect(current.images.map((i: { key: string }) => i.key)).toEqual(second.output.images.map((i) => i.key));
    expect(JSON.parse(await env.deps.store.getText(first.output.manifestKey)).images).toHaveLength(8);
  });

  it('tags a run superseded once a newer run replaces it, for an opt-in lifecycle rule to expire', async () => {
    const env = await startTestEnvironment();
    const first = await runOnce(env, 'old-run', { persona, images: 4 });
    const second = await runOnce(env, 'new-run', { persona, images: 4 });
    const tagsOf = async (key: string) =>
      (await env.deps.store.s3.send(new GetObjectTaggingCommand({ Bucket: env.deps.store.bucket, Key: key }))).TagSet?.map((t) => `${t.Key}=${t.Value}`) ?? [];
    for (const key of [...first.output.images.map((i) => i.key), first.output.manifestKey]) expect(await tagsOf(key), key).toEqual(['avatar-run=superseded']);
    for (const key of [...second.output.images.map((i) => i.key), second.output.manifestKey]) expect(await tagsOf(key), key).toEqual([]);
    const template = Template.fromStack(buildApp({ bundle: false, validate: false, outdir, context: { supersededRunExpiryDays: 30 } }).stack);
    template.hasResourceProperties('AWS::S3::Bucket', {
      LifecycleConfiguration: { Rules: [{}, {}, { Prefix: 'avatars/', TagFilters: [{ Key: 'avatar-run', Value: 'superseded' }], ExpirationInDays: 30, Status: 'Enabled' }].map((r) => (Object.keys(r).length ? r : {})) },
    });
  });

  it('keeps two runs of one persona at once whole, the current manifest naming one of them with its own images', async () => {
    const env = await startTestEnvironment();
    const runs = await Promise.all([runOnce(env, 'run-a', { persona, images: 8 }), runOnce(env, 'run-b', { persona, images: 4 })]);
    const current = JSON.parse(await env.deps.store.getText(runs[0].output.currentManifestKey));
    const winner = runs.find((r) => r.runId === current.runId)!;
    expect(winner).toBeDefined();
    expect(current.images).toHaveLength(winner.output.images.length);
    for (const image of current.images as { key: string }[]) {
      expect(image.key).toContain(`/runs/${current.runId}/`);
      expect((await env.deps.store.getBytes(image.key)).length).toBeGreaterThan(0);
    }
  });

  describe('a run folder written once', () => {
    /** The stage fixtures replayed in order up to publish, in one environment: publish's event, ready. */
    async function readyToPublish(env: Env): Promise<PublishEvent> {
      for (const stage of ['plan-run', 'write-prompt', 'generate-base', 'generate-grid', 'split-grid', 'check-identity'] as const) {
        await invoke(env, stage, fixture(stage) as never);
      }
      return fixture('publish') as PublishEvent;
    }
    const etags = async (env: Env, keys: string[]) => Promise.all(keys.map(async (Key) => (await env.deps.store.s3.send(new HeadObjectCommand({ Bucket: env.deps.store.bucket, Key }))).ETag));

    it('publishes the same run when Publish is retried after a partial write, rewriting none of its avatars', async () => {
      const env = await startTestEnvironment();
      const event = await readyToPublish(env);
      const first = await invoke(env, 'publish', event);
      const before = await etags(env, first.images.map((i) => i.key));
      // As if the first attempt stopped after its avatars: no manifest yet.
      await env.deps.store.delete(first.manifestKey);
      const retried = await invoke(env, 'publish', event);
      expect(retried.images.map((i) => i.key)).toEqual(first.images.map((i) => i.key));
      expect(await etags(env, retried.images.map((i) => i.key))).toEqual(before);
      expect(JSON.parse(await env.deps.store.getText(retried.currentManifestKey)).runId).toBe(event.runId);
    });

    it('refuses to replace an avatar another writer put in the run folder, leaving it as it was', async () => {
      const env = await startTestEnvironment();
      const event = await readyToPublish(env);
      const foreign = avatarKeys(event.personaId).run(event.runId).image(1);
      await env.deps.store.put(foreign, 'someone else', 'image/png');
      const error = (await invoke(env, 'publish', event).catch((e: unknown) => e)) as Error;
      expect(error.name).toBe('RunAlreadyPublished');
      expect(error.message).toContain(`persona ${event.personaId}`);
      expect(await env.deps.store.getText(foreign)).toBe('someone else');
    });

    it('gets 412 PreconditionFailed from the embedded S3 for a conditional write to a key that exists, as from S3', async () => {
      const env = await startTestEnvironment();
      expect(await env.deps.store.putNew('avatars/x/runs/r/img_1.png', 'first', 'image/png')).toBe(true);
      const error = await env.deps.store.s3
        .send(new PutObjectCommand({ Bucket: env.deps.store.bucket, Key: 'avatars/x/runs/r/img_1.png', Body: 'second', IfNoneMatch: '*' }))
        .catch((e: unknown) => e as { name: string; $metadata: { httpStatusCode: number } });
      expect(error).toMatchObject({ name: 'PreconditionFailed', $metadata: { httpStatusCode: 412 } });
      expect(await env.deps.store.getText('avatars/x/runs/r/img_1.png')).toBe('first');
    });
  });
});

