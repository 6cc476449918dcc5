import { join } from 'node:path';
import OpenAI from 'openai';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import { buildApp } from '../infra/app.ts';
import { fixedClock } from '../lambdas/shared/clock.ts';
import { estimateImageCost } from '../lambdas/shared/models.ts';
import { settingsFromEnv } from '../lambdas/shared/settings.ts';
import { startOfflineBackend, type OfflineBackend } from '../local/offline-openai.ts';
import { runLocally } from '../local/runner.ts';
import { avatars, eventsDir, generateBaseNow, generateGridNow, imageCalls, persona, startTestEnvironment, tempDir } from './support.ts';

const RETIRING = ['gpt-image-1.5', 'gpt-image-1-mini', 'chatgpt-image-latest'];
// The model table's dates, seen from either side: tests about them fix the clock.
const beforeShutdown = fixedClock('2026-11-30T23:59:59Z');
const shutdownDay = fixedClock('2026-12-01T00:00:00Z');
const work = tempDir('models');

let server: OfflineBackend | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

const run = { personaId: persona.id, runId: 'models-run', persona };

describe('image models after 2026-12-01', () => {
  it('runs with no model settings against a server that has retired gpt-image-1.5, gpt-image-1-mini and chatgpt-image-latest', async () => {
    server = await startOfflineBackend({ retiredModels: RETIRING });
    const out = join(work, 'out-default');
    const { code, stderr } = await avatars(work, ['run', join(eventsDir, 'persona.json'), '--out', out, '--data', join(work, 'data-default'), '--quiet'], {
      OPENAI_API_KEY: 'sk-test',
      OPENAI_BASE_URL: server.baseUrl,
    });
    expect(code, stderr).toBe(0);
    expect(imageCalls(server).map((r) => r.model)).toEqual(['gpt-image-2', 'gpt-image-2']);
  });

  it('configures every deployed function with a model that is not retiring', () => {
    const template = buildApp({ bundle: false, validate: false, outdir: join(work, 'synth') }).app.synth().getStackByName('PersonaAvatars').template as { Resources: Record<string, { Type: string; Properties: any }> };
    const stages = Object.values(template.Resources).filter((r) => r.Type === 'AWS::Lambda::Function' && r.Properties.Environment?.Variables?.STAGE);
    for (const fn of stages) {
      expect(fn.Properties.Environment.Variables).toMatchObject({ IMAGE_MODEL: 'gpt-image-2' });
      // No fallback by default: a fallback to the model itself only repeats the call that failed.
      expect(fn.Properties.Environment.Variables.IMAGE_FALLBACK_MODELS).toBeUndefined();
      expect(RETIRING).not.toContain(fn.Properties.Environment.Variables.IMAGE_MODEL);
    }
  });

  it('falls back through IMAGE_FALLBACK_MODELS in order, warning about each retired model', async () => {
    const env = await startTestEnvironment({
      retiredModels: ['gpt-image-1.5', 'chatgpt-image-latest'],
      env: { IMAGE_MODEL: 'gpt-image-1.5', IMAGE_FALLBACK_MODELS: 'chatgpt-image-latest, gpt-image-2' },
    });
    const base = await generateBaseNow(run, env.deps);
    expect(imageCalls(env.backend!).map((r) => r.model)).toEqual(['gpt-image-1.5', 'chatgpt-image-latest', 'gpt-image-2']);
    expect(base.model).toBe('gpt-image-2');
    expect(base.warnings.join('\n')).toMatch(/gpt-image-1\.5 answered model_not_found.*\n.*chatgpt-image-latest answered model_not_found/);
    // Known gone: the next call goes straight to the model that answers.
    await generateBaseNow(run, env.deps);
    expect(imageCalls(env.backend!).at(-1)!.model).toBe('gpt-image-2');
    expect(imageCalls(env.backend!)).toHaveLength(4);
  });

  it('still reads the single IMAGE_FALLBACK_MODEL the Python service used', () => {
    expect(settingsFromEnv({ IMAGE_MODEL: 'gpt-image-1.5', IMAGE_FALLBACK_MODEL: 'gpt-image-2' }).imageFallbackModels).toEqual(['gpt-image-2']);
  });

  it('records in the manifest which model made each image, and the warning', async () => {
    const env = await startTestEnvironment({ retiredModels: ['gpt-image-1.5'], env: { IMAGE_MODEL: 'gpt-image-1.5', IMAGE_FALLBACK_MODELS: 'gpt-image-2' } });
    const outcome = await runLocally({ input: { persona }, deps: env.deps });
    if (outcome.status !== 'SUCCEEDED') throw new Error(outcome.cause);
    const manifest = JSON.parse(await env.deps.store.getText(outcome.output.manifestKey));
    expect(manifest.images.map((i: { model: string }) => i.model)).toEqual(['gpt-image-2', 'gpt-image-2', 'gpt-image-2', 'gpt-image-2']);
    expect(manifest.warnings[0]).toMatch(/gpt-image-1\.5.*model_not_found.*IMAGE_MODEL=gpt-image-2/);
  });
});

describe('shutdown dates, read from the clock', () => {
  it('answers model_not_found for a model from its shutdown day on, and draws with it the day before', async () => {
    const client = (backend: OfflineBackend) => new OpenAI({ apiKey: 'sk-test', baseURL: backend.baseUrl, maxRetries: 0 });
    server = await startOfflineBackend({ clock: beforeShutdown });
    await expect(client(server).images.generate({ model: 'gpt-image-1.5', prompt: 'a selfie', size: '1024x1024' })).resolves.toMatchObject({ data: [expect.anything()] });
    await server.close();
    server = await startOfflineBackend({ clock: shutdownDay });
    const error = await client(server).images.generate({ model: 'gpt-image-1.5', prompt: 'a selfie', size: '1024x1024' }).catch((e: unknown) => e);
    expect((error as InstanceType<typeof OpenAI.NotFoundError>).code).toBe('model_not_found');
  });

  it('names a model past its shutdown date at cdk synth, and one still to shut down as such', () => {
    const warnings = (clock: typeof shutdownDay) => {
      const { stack } = buildApp({ bundle: false, outdir: join(work, 'synth'), clock, context: { imageModel: 'gpt-image-1.5', imageFallbackModels: 'gpt-image-2' } });
      return stack.node.metadata.filter((m) => m.type === 'aws:cdk:warning').map((m) => String(m.data));
    };
    expect(warnings(beforeShutdown).join('\n')).toMatch(/gpt-image-1\.5 shuts down on 2026-12-01; use gpt-image-2/);
    expect(warnings(shutdownDay).join('\n')).toMatch(/gpt-image-1\.5 was shut down on 2026-12-01; use gpt-image-2/);
  });

  it('refuses settings whose every model is shut down, suggesting one that is not', () => {
    const env = { IMAGE_MODEL: 'gpt-image-1.5', IMAGE_FALLBACK_MODELS: 'gpt-image-1-mini' };
    expect(() => settingsFromEnv(env, beforeShutdown)).not.toThrow();
    expect(() => settingsFromEnv(env, shutdownDay)).toThrow(/IMAGE_FALLBACK_MODELS: every model configured \(gpt-image-1\.5, gpt-image-1-mini\) is shut down; .*e\.g\. gpt-image-2$/);
  });

  it('names every model tried when the last fallback is gone too, and suggests one neither tried nor shut down', async () => {
    const env = await startTestEnvironment({
      retiredModels: ['gpt-image-2', 'gpt-image-2.6-flare'],
      clock: shutdownDay,
      env: { IMAGE_MODEL: 'gpt-image-2', IMAGE_FALLBACK_MODELS: 'gpt-image-2.6-flare' },
    });
    const error = (await generateBaseNow(run, env.deps).catch((e: unknown) => e)) as Error;
    expect(error.name).toBe('ConfigurationError');
    expect(error.message).toMatch(/gpt-image-2, gpt-image-2\.6-flare do not exist/);
    const suggested = /e\.g\. (\S+)$/.exec(error.message)?.[1];
    expect(suggested).toBeDefined();
    expect(['gpt-image-2', 'gpt-image-2.6-flare', ...RETIRING, 'gpt-image-1']).not.toContain(suggested);
  });
});

describe('what each model takes', () => {
  it('gives avatars of about 1000 px from one 2048x2048 gpt-image-2 grid', async () => {
    const env = await startTestEnvironment({ env: { IMAGE_SIZE: '2048x2048' } });
    const outcome = await runLocally({ input: { persona, images: 4 }, deps: env.deps });
    if (outcome.status !== 'SUCCEEDED') throw new Error(outcome.cause);
    expect(env.backend!.requests.filter((r) => r.route === 'edits').map((r) => r.size)).toEqual(['2048x2048']);
    for (const image of outcome.output.images) {
      const { width = 0, height = 0 } = await sharp(await env.deps.store.getBytes(image.key)).metadata();
      expect(Math.min(width, height)).toBeGreaterThan(900);
      expect(Math.max(width, height)).toBeLessThan(1100);
    }
  });

  it('asks for input_fidelity high on edits only from models that take it', async () => {
    for (const model of ['gpt-image-1.5', 'gpt-image-2']) {
      const env = await startTestEnvironment({ clock: beforeShutdown, env: { IMAGE_MODEL: model } });
      const base = await generateBaseNow(run, env.deps);
      await env.deps.store.put('runs/p.txt', 'scenes', 'text/plain');
      await generateGridNow({ ...run, mode: 'grid', grid: { index: 0, count: 4 }, promptKey: 'runs/p.txt', baseKey: base.baseKey }, env.deps);
      const edit = env.backend!.requests.find((r) => r.route === 'edits')!;
      expect(edit.options.input_fidelity, model).toBe(model === 'gpt-image-1.5' ? 'high' : undefined);
      expect(edit.options).toMatchObject({ moderation: 'auto', output_format: 'png', quality: 'medium' });
      await env.close();
    }
  });

  it('asks the API for webp avatars with the configured compression in separate mode, and stores them as such', async () => {
    const env = await startTestEnvironment({ env: { TILE_FORMAT: 'webp', OUTPUT_COMPRESSION: '70', IMAGE_MODERATION: 'low' } });
    const base = await generateBaseNow(run, env.deps);
    await env.deps.store.put('runs/p.txt', 'scenes', 'text/plain');
    const result = await generateGridNow({ ...run, mode: 'separate', grid: { index: 0, count: 2 }, promptKey: 'runs/p.txt', baseKey: base.baseKey }, env.deps);
    expect(env.backend!.requests.at(-1)!.options).toMatchObject({ output_format: 'webp', output_compression: '70', moderation: 'low' });
    expect(result.imageKeys!.every((k) => k.endsWith('.webp'))).toBe(true);
    expect((await sharp(await env.deps.store.getBytes(result.imageKeys![0]!)).metadata()).format).toBe('webp');
  });

  const invalid: [string, Record<string, string>, RegExp][] = [
    ['a size gpt-image-1.5 does not draw', { IMAGE_MODEL: 'gpt-image-1.5', IMAGE_SIZE: '2048x2048' }, /^IMAGE_SIZE: gpt-image-1\.5 takes only/],
    ['a size off the 16-pixel grid', { IMAGE_SIZE: '1000x1000' }, /^IMAGE_SIZE: .*multiples of 16/],
    ['a size past 3840x2160', { IMAGE_SIZE: '3840x3840' }, /^IMAGE_SIZE: .*at most 3840x2160/],
    ['a ratio past 3:1', { IMAGE_SIZE: '3200x1024' }, /^IMAGE_SIZE: .*3x the short one/],
    ['a quality the model lacks', { IMAGE_QUALITY: 'xhigh' }, /^IMAGE_QUALITY: gpt-image-2 takes quality/],
    ['a fallback that cannot draw the size', { IMAGE_SIZE: '2048x2048', IMAGE_FALLBACK_MODELS: 'gpt-image-1.5' }, /^IMAGE_FALLBACK_MODELS: gpt-image-1\.5 takes only/],
  ];
  for (const [what, settings, message] of invalid) {
    it(`refuses ${what} before any call, naming the setting`, async () => {
      server = await startOfflineBackend();
      const { code, stderr } = await avatars(work, ['run', join(eventsDir, 'persona.json'), '--data', join(work, 'data-invalid'), '--quiet'], {
        OPENAI_API_KEY: 'sk-test',
        OPENAI_BASE_URL: server.baseUrl,
        ...settings,
      });
      expect(code).toBe(2);
      expect(stderr.replace(/^avatars: /, '')).toMatch(message);
      expect(server.requests).toHaveLength(0);
    });
  }

  it('refuses the same combination at cdk synth, naming the context key', () => {
    expect(() => buildApp({ bundle: false, outdir: join(work, 'synth'), context: { imageModel: 'gpt-image-1.5', imageSize: '2048x2048' } })).toThrow(/context imageSize: gpt-image-1\.5 takes only/);
  });

  it('answers a size the model does not draw with a 400 from the offline backend, as the API does', async () => {
    server = await startOfflineBackend({ clock: beforeShutdown });
    const client = new OpenAI({ apiKey: 'sk-test', baseURL: server.baseUrl, maxRetries: 0 });
    const error = await client.images.generate({ model: 'gpt-image-1.5', prompt: 'a selfie', size: '2048x2048' as '1024x1024' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OpenAI.BadRequestError);
    expect((error as InstanceType<typeof OpenAI.BadRequestError>).param).toBe('size');
  });
});

describe('cost estimates', () => {
  it('prices a 1024x1024 medium gpt-image-2 image at about $0.053', () => {
    const usage = { input_tokens: 50, input_tokens_details: { text_tokens: 50, image_tokens: 0 }, output_tokens: 1767 };
    expect(estimateImageCost('gpt-image-2', usage)).toBeCloseTo(0.053, 3);
  });

  it('prices cached image input at the cached rate', () => {
    const fresh = estimateImageCost('gpt-image-2', { input_tokens: 1000, input_tokens_details: { image_tokens: 1000, text_tokens: 0 }, output_tokens: 0 })!;
    const cached = estimateImageCost('gpt-image-2', { input_tokens: 1000, input_tokens_details: { image_tokens: 1000, text_tokens: 0, cached_image_tokens: 1000 }, output_tokens: 0 })!;
    expect(fresh).toBeCloseTo(0.008, 6);
    expect(cached).toBeCloseTo(0.002, 6);
  });

  it('leaves the cost unknown for a model whose prices are not published in the table', () => {
    expect(estimateImageCost('gpt-image-2.6-flare', { input_tokens: 10, output_tokens: 10 })).toBeNull();
  });
});
