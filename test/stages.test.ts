import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { GetObjectCommand, HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { planRun as plan, type PlanRunEvent } from '../lambdas/plan-run/core.ts';
import { publish } from '../lambdas/publish/core.ts';
import { recordFailure } from '../lambdas/record-failure/core.ts';
import { s3ClientFromEnv } from '../lambdas/shared/s3.ts';
import { sfnClientFromEnv } from '../lambdas/shared/sfn.ts';
import { fixedClock, type Clock } from '../lambdas/shared/clock.ts';
import { InvalidPersona } from '../lambdas/shared/errors.ts';
import { settingsFromEnv } from '../lambdas/shared/settings.ts';
import type { StageDeps } from '../lambdas/shared/stage.ts';
import { splitGrid } from '../lambdas/split-grid/core.ts';
import { writePrompt } from '../lambdas/write-prompt/core.ts';
import type { Fault } from '../local/offline-openai.ts';
import { generateBaseNow, generateGridNow, imageCalls, persona, startTestEnvironment } from './support.ts';

const environment = (faults: Fault[] = [], extra: Record<string, string> = {}, clock?: Clock) => startTestEnvironment({ faults, env: extra, ...(clock ? { clock } : {}) });

const run = { personaId: persona.id, runId: 'test-run', persona };

async function baseAndPrompt(deps: Awaited<ReturnType<typeof environment>>['deps']) {
  const [prompt, base] = await Promise.all([writePrompt(run, deps), generateBaseNow(run, deps)]);
  return { prompt, base };
}

describe('plan-run', () => {
  // Planning reads nothing but its settings.
  const planDeps = (env: Record<string, string> = {}) => ({ settings: settingsFromEnv(env) }) as StageDeps;
  const planRun = (event: PlanRunEvent, deps = planDeps()) => plan(event, deps);

  it('plans one grid per four images, the last one partial', async () => {
    const plan = await planRun({ input: { persona, images: 10 }, runId: 'r1' });
    expect(plan.grids).toEqual([{ index: 0, count: 4 }, { index: 1, count: 4 }, { index: 2, count: 2 }]);
    expect(plan.mode).toBe('grid');
  });

  it('rejects a persona with an unsafe id, naming the field', async () => {
    await expect(planRun({ input: { persona: { ...persona, id: '../etc/passwd' } }, runId: 'r1' })).rejects.toThrow(/persona\.id/);
  });

  it('rejects a persona with no bio at all, naming the field', async () => {
    const { bio_facebook: _f, bio_instagram: _i, bio_x: _x, bio_tiktok: _t, ...bare } = persona;
    const error = await planRun({ input: { persona: bare }, runId: 'r1' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidPersona);
    expect((error as InvalidPersona).field).toBe('persona.bio_facebook');
  });

  it('turns any execution name into a run id that is safe in keys', async () => {
    expect((await planRun({ input: { persona }, runId: 'a/b c:d' })).runId).toBe('a-b-c-d');
  });

  it('makes the deployment\u2019s default number of images when the input names none', async () => {
    expect((await planRun({ input: { persona }, runId: 'r1' })).images).toBe(4);
    const plan8 = await planRun({ input: { persona }, runId: 'r1' }, planDeps({ DEFAULT_IMAGES: '8' }));
    expect(plan8.grids).toHaveLength(2);
    expect((await planRun({ input: { persona, images: 1 }, runId: 'r1' }, planDeps({ DEFAULT_IMAGES: '8' }))).images).toBe(1);
  });
});

describe('write-prompt', () => {
  it('writes the built-in template prompt when no text provider is configured', async () => {
    const { deps } = await environment();
    const result = await writePrompt(run, deps);
    expect(result.provider).toBe('template');
    expect(await deps.store.getText(result.promptKey)).toContain('Ada');
  });

  it('asks the OpenAI text model when a key is set and the template is not forced', async () => {
    const { deps, backend } = await environment([], { PROMPT_PROVIDER: '' });
    const result = await writePrompt(run, { ...deps, settings: { ...deps.settings, promptProvider: 'auto' } });
    expect(result.provider).toBe('openai');
    expect(result.usage?.total_tokens).toBeGreaterThan(0);
    expect(backend!.requests.at(-1)).toMatchObject({ route: 'chat', model: 'gpt-4.1-mini' });
  });

  it('asks a Flowise chatflow when one is configured, with its bearer key', async () => {
    const seen: { url?: string; auth?: string; question?: string } = {};
    const flowise = createServer((req, res) => {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        Object.assign(seen, { url: req.url, auth: req.headers.authorization, question: JSON.parse(body).question });
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ text: 'Four photos of Ada by the sea.' }));
      });
    });
    await new Promise<void>((r) => flowise.listen(0, '127.0.0.1', r));
    try {
      const url = `http://127.0.0.1:${(flowise.address() as AddressInfo).port}`;
      const { deps } = await environment([], { PROMPT_PROVIDER: 'auto', FLOWISE_URL: url, FLOWISE_CHATFLOW_ID: 'flow-1', FLOWISE_API_KEY: 'fw-key' });
      const result = await writePrompt(run, deps);
      expect(result.provider).toBe('flowise');
      expect(seen).toMatchObject({ url: '/api/v1/prediction/flow-1', auth: 'Bearer fw-key' });
      expect(seen.question).toContain('Facebook bio');
      expect(await deps.store.getText(result.promptKey)).toBe('Four photos of Ada by the sea.');
    } finally {
      flowise.close();
    }
  });

  it('rewrites a refused prompt into a safer one under its own key, leaving the original', async () => {
    const { deps } = await environment();
    const original = await writePrompt(run, deps);
    const safer = await writePrompt({ ...run, rewrite: { target: 'grid', reason: 'moderation_blocked' } }, deps);
    expect(safer.promptKey).not.toBe(original.promptKey);
    expect(await deps.store.getText(safer.promptKey)).not.toContain('analytical engines');
    expect(await deps.store.getText(original.promptKey)).toContain('analytical engines');
  });
});

describe('generate-base', () => {
  it('calls images/generations with gpt-image-2 and stores the PNG under the run', async () => {
    const { deps, backend } = await environment();
    const result = await generateBaseNow(run, deps);
    expect(imageCalls(backend!)[0]).toMatchObject({ route: 'generations', model: 'gpt-image-2', size: '1024x1024' });
    expect(result.baseKey).toBe('runs/ada-lovelace/test-run/base.png');
    const meta = await sharp(await deps.store.getBytes(result.baseKey)).metadata();
    expect([meta.format, meta.width]).toEqual(['png', 1024]);
    expect(result.usage?.output_tokens).toBeGreaterThan(0);
  });

  it('falls back to the second model when the first answers model_not_found', async () => {
    // Before gpt-image-1.5's shutdown date: the fault, not the date, makes it answer model_not_found.
    const { deps, backend } = await environment([{ kind: 'model-gone', times: 1 }], { IMAGE_MODEL: 'gpt-image-1.5', IMAGE_FALLBACK_MODEL: 'gpt-image-2' }, fixedClock('2026-11-15'));
    const result = await generateBaseNow(run, deps);
    expect(result.model).toBe('gpt-image-2');
    expect(imageCalls(backend!).map((r) => r.model)).toEqual(['gpt-image-1.5', 'gpt-image-2']);
  });

  const failures: [string, Fault, RegExp][] = [
    ['RateLimited', { kind: 'rate-limit', times: Infinity }, /retry after 1 s/],
    ['ContentPolicyViolation', { kind: 'policy', times: 1 }, /moderation_blocked.*moderation_details/],
    ['UpstreamError', { kind: 'server-error', times: 1 }, /500/],
    ['ImageTimeout', { kind: 'hang', times: 1 }, /no answer within/],
  ];
  for (const [name, fault, message] of failures) {
    it(`turns ${fault.kind} from the API into ${name}, naming the persona`, async () => {
      const { deps } = await environment([fault]);
      const error = (await generateBaseNow(run, { ...deps, imageTimeoutMs: 1500 }).catch((e: unknown) => e)) as Error;
      expect(error.name).toBe(name);
      expect(error.message).toMatch(message);
      expect(error.message).toContain('persona ada-lovelace');
    });
  }
});

describe('generate-grid and split-grid', () => {
  it('sends the base image as a multipart image/png part to images/edits and gets a grid', async () => {
    const { deps, backend } = await environment();
    const { prompt, base } = await baseAndPrompt(deps);
    const grid = await generateGridNow({ ...run, mode: 'grid', grid: { index: 0, count: 4 }, promptKey: prompt.promptKey, baseKey: base.baseKey }, deps);
    const edit = backend!.requests.find((r) => r.route === 'edits')!;
    expect(edit.files).toEqual([{ field: 'image', filename: 'base.png', mimeType: 'image/png' }]);
    expect(edit.prompt).toMatch(/2x2 grid/);
    expect(grid.gridKey).toBe('runs/ada-lovelace/test-run/grid_0.png');
  });

  it('splits the stored grid into four tiles with their boxes', async () => {
    const { deps } = await environment();
    const { prompt, base } = await baseAndPrompt(deps);
    const generated = await generateGridNow({ ...run, mode: 'grid', grid: { index: 1, count: 4 }, promptKey: prompt.promptKey, baseKey: base.baseKey }, deps);
    const split = await splitGrid({ personaId: run.personaId, runId: run.runId, generated }, deps);
    expect(split.tiles.map((t) => t.key)).toEqual([0, 1, 2, 3].map((i) => `runs/ada-lovelace/test-run/tiles/grid_1_${i}.png`));
    for (const tile of split.tiles) {
      const meta = await sharp(await deps.store.getBytes(tile.key)).metadata();
      expect([meta.width, meta.height]).toEqual([tile.box.width, tile.box.height]);
    }
  });

  it('asks for n separate images in separate mode and stores each', async () => {
    const { deps, backend } = await environment();
    const { prompt, base } = await baseAndPrompt(deps);
    const generated = await generateGridNow({ ...run, mode: 'separate', grid: { index: 0, count: 3 }, promptKey: prompt.promptKey, baseKey: base.baseKey }, deps);
    expect(backend!.requests.find((r) => r.route === 'edits')!.n).toBe(3);
    expect(generated.imageKeys).toHaveLength(3);
    const split = await splitGrid({ personaId: run.personaId, runId: run.runId, generated }, deps);
    expect(split.tiles.map((t) => t.box.width)).toEqual([1024, 1024, 1024]);
  });
});

describe('publish and record-failure', () => {
  it('publishes numbered images and a manifest with prompt, model, timings, usage and cost', async () => {
    const { deps } = await environment();
    const { prompt, base } = await baseAndPrompt(deps);
    const generated = await generateGridNow({ ...run, mode: 'grid', grid: { index: 0, count: 4 }, promptKey: prompt.promptKey, baseKey: base.baseKey }, deps);
    const split = await splitGrid({ personaId: run.personaId, runId: run.runId, generated }, deps);
    const result = await publish({ ...run, images: 3, mode: 'grid', prompt, base, grids: [split] }, deps);
    expect(result.images.map((i) => i.key)).toEqual([1, 2, 3].map((n) => `avatars/ada-lovelace/runs/test-run/img_${n}.png`));
    expect(result.images[0]!.url).toBe(`${deps.settings.s3Endpoint}/avatars/avatars/ada-lovelace/runs/test-run/img_1.png`);
    await deps.store.s3.send(new HeadObjectCommand({ Bucket: deps.store.bucket, Key: 'avatars/ada-lovelace/runs/test-run/img_3.png' }));
    const manifest = JSON.parse(await deps.store.getText(result.manifestKey));
    expect(manifest).toMatchObject({ personaId: 'ada-lovelace', runId: 'test-run', model: 'gpt-image-2', size: '1024x1024', quality: 'medium' });
    expect(manifest.prompt.text).toContain('Ada');
    expect(manifest.timingsMs.grids[0]).toHaveProperty('split-grid');
    // The built-in template wrote the prompt: no usage of its own.
    expect(manifest.usage.map((u: { stage: string }) => u.stage)).toEqual(['generate-base', 'generate-grid 0']);
    expect(manifest.estimatedCostUsd).toBeGreaterThan(0);
    expect(manifest.images).toHaveLength(3);
  });

  it('uses PUBLIC_BASE_URL for the URLs when one is configured', async () => {
    const { deps } = await environment();
    const { prompt, base } = await baseAndPrompt(deps);
    const generated = await generateGridNow({ ...run, mode: 'grid', grid: { index: 0, count: 4 }, promptKey: prompt.promptKey, baseKey: base.baseKey }, deps);
    const split = await splitGrid({ personaId: run.personaId, runId: run.runId, generated }, deps);
    const settings = { ...deps.settings, publicBaseUrl: 'https://cdn.example.test' };
    const result = await publish({ ...run, images: 1, mode: 'grid', prompt, base, grids: [split] }, { ...deps, settings });
    expect(result.images[0]!.url).toBe('https://cdn.example.test/avatars/ada-lovelace/runs/test-run/img_1.png');
  });

  it('returns presigned URLs that fetch the image when no public or S3-compatible base URL is set', async () => {
    const { deps } = await environment();
    const { prompt, base } = await baseAndPrompt(deps);
    const generated = await generateGridNow({ ...run, mode: 'grid', grid: { index: 0, count: 4 }, promptKey: prompt.promptKey, baseKey: base.baseKey }, deps);
    const split = await splitGrid({ personaId: run.personaId, runId: run.runId, generated }, deps);
    const settings = { ...deps.settings, s3Endpoint: undefined, urlExpirySeconds: 600 };
    const result = await publish({ ...run, images: 1, mode: 'grid', prompt, base, grids: [split] }, { ...deps, settings });
    const url = new URL(result.images[0]!.url);
    expect(url.searchParams.get('X-Amz-Expires')).toBe('600');
    expect(url.searchParams.get('X-Amz-Signature')).toMatch(/^[0-9a-f]{64}$/);
    const response = await fetch(url);
    expect(response.status).toBe(200);
    expect(Buffer.from(await response.arrayBuffer())).toEqual(await deps.store.getBytes(result.images[0]!.key));
  });

  it('records a failure next to where the images would have gone, with the message from the Lambda error', async () => {
    const { deps } = await environment();
    const cause = JSON.stringify({ errorType: 'ContentPolicyViolation', errorMessage: 'base image for persona ada-lovelace: rejected' });
    const record = await recordFailure({ input: { persona }, runId: 'r-9', error: { Error: 'ContentPolicyViolation', Cause: cause } }, deps);
    expect(record).toEqual({ error: 'ContentPolicyViolation', cause: 'base image for persona ada-lovelace: rejected', failureKey: 'avatars/ada-lovelace/failures/r-9.json' });
    expect(JSON.parse(await deps.store.getText(record.failureKey))).toMatchObject({ runId: 'r-9', error: 'ContentPolicyViolation' });
  });

  it('keeps the workflow\u2019s own record when the run\u2019s status event records the same failure again', async () => {
    const { deps } = await environment();
    const cause = JSON.stringify({ errorType: 'ImageTimeout', errorMessage: 'grid 2 for persona ada-lovelace: no answer in 600 s' });
    await recordFailure({ input: { persona }, runId: 'r-3', error: { Error: 'ImageTimeout', Cause: cause } }, deps);
    const again = await recordFailure({ input: JSON.stringify({ persona }), runId: 'r-3', error: { Error: 'States.TaskFailed', Cause: 'execution failed' } }, deps);
    expect(again).toMatchObject({ failureKey: 'avatars/ada-lovelace/failures/r-3.json', alreadyRecorded: true });
    expect(JSON.parse(await deps.store.getText(again.failureKey))).toMatchObject({ error: 'ImageTimeout', cause: 'grid 2 for persona ada-lovelace: no answer in 600 s' });
  });

  it('files failures of personas with unusable ids under _invalid', async () => {
    const { deps } = await environment();
    const record = await recordFailure({ input: { persona: { id: '../x' } }, runId: 'r-1', error: { Error: 'InvalidPersona', Cause: 'Invalid persona: persona.id' } }, deps);
    expect(record.failureKey).toBe('avatars/_invalid/failures/r-1.json');
  });
});

describe('AWS SDK configuration', () => {
  it('talks to Step Functions in the region of the ARN it is given, else the configured one', async () => {
    const arn = 'arn:aws:states:eu-west-3:123456789012:stateMachine:PersonaAvatars';
    const clients = [sfnClientFromEnv({ AWS_REGION: 'us-west-2' }, arn), sfnClientFromEnv({ AWS_REGION: 'us-west-2' })];
    expect(await Promise.all(clients.map((c) => c.config.region()))).toEqual(['eu-west-3', 'us-west-2']);
    for (const c of clients) c.destroy();
  });

  it('reaches an S3-compatible server named by AWS_ENDPOINT_URL_S3 alone, path-style', async () => {
    const { env: used } = await environment();
    const s3 = s3ClientFromEnv({ AWS_ENDPOINT_URL_S3: used.S3_ENDPOINT, S3_ACCESS_KEY: 'S3RVER', S3_SECRET_KEY: 'S3RVER' });
    try {
      await s3.send(new PutObjectCommand({ Bucket: used.S3_BUCKET_NAME, Key: 'personas/x.json', Body: '{}' }));
      const got = await s3.send(new GetObjectCommand({ Bucket: used.S3_BUCKET_NAME, Key: 'personas/x.json' }));
      expect(await got.Body!.transformToString()).toBe('{}');
    } finally {
      s3.destroy();
    }
  });
});
