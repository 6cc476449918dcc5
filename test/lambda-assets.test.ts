import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import sharp from 'sharp';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { buildApp, STACK_NAME } from '../infra/app.ts';
import { BATCH_STATE_MACHINE_NAME, projectRoot } from '../infra/context.ts';
import { FACE_MODELS } from '../lambdas/check-identity/assets.ts';
import { readC2pa } from '../lambdas/publish/c2pa.ts';
import { s3ClientFromEnv } from '../lambdas/shared/s3.ts';
import { issueSigningCertificate } from '../local/certificates.ts';
import { synthesizeWorkflows, workflowFromTemplate } from '../local/definition.ts';
import { startEmbeddedS3 } from '../local/embedded-s3.ts';
import { startOfflineBackend } from '../local/offline-openai.ts';
import { METRICS_NAMESPACE, METRICS_SERVICE } from '../lambdas/shared/metrics.ts';
import { runLocally } from '../local/runner.ts';
import { persona, sameClock, startTestEnvironment } from './support.ts';
import { stageNames } from '../lambdas/stages.ts';

type Template = { Resources: Record<string, { Type: string; Properties: Record<string, any> }> };

// `cdk synth` as a user runs it: esbuild bundles every stage on this machine, no Docker, no network.
const outdir = mkdtempSync(join(tmpdir(), 'avatars-assets-'));
const REGION = 'eu-west-3';
execFileSync(join(projectRoot, 'node_modules', '.bin', 'cdk'), ['synth', '--quiet', '--no-notices', '--output', outdir], {
  cwd: projectRoot,
  stdio: 'pipe',
  env: { ...process.env, AWS_REGION: REGION },
});
const template = JSON.parse(readFileSync(join(outdir, `${STACK_NAME}.template.json`), 'utf8')) as Template;
afterAll(() => rmSync(outdir, { recursive: true, force: true }));

/** The template without what says where code was staged and which construct made what (the CLI adds those, with its version report). */
function withoutAssetKeys(t: Template): unknown {
  const drop = (key: string) => key === 'S3Key' || key.startsWith('aws:asset:') || key === 'aws:cdk:path' || key.startsWith('CDKMetadata');
  return JSON.parse(JSON.stringify(t, (key, value) => (drop(key) ? undefined : key === 'Metadata' && Object.keys(value).every(drop) ? undefined : value)));
}

/** Where two JSON values first differ, for a failure message a person can read. */
function firstDifference(a: unknown, b: unknown, path = ''): string | undefined {
  if (JSON.stringify(a) === JSON.stringify(b)) return undefined;
  if (a && b && typeof a === 'object' && typeof b === 'object') {
    for (const key of new Set([...Object.keys(a), ...Object.keys(b)])) {
      const found = firstDifference((a as Record<string, unknown>)[key], (b as Record<string, unknown>)[key], `${path}/${key}`);
      if (found) return found;
    }
  }
  return `${path}: ${JSON.stringify(a)?.slice(0, 200)} ≠ ${JSON.stringify(b)?.slice(0, 200)}`;
}

function assetOf(stage: string): string {
  const fn = Object.values(template.Resources).find((r) => r.Type === 'AWS::Lambda::Function' && r.Properties.Environment?.Variables?.STAGE === stage)!;
  // The code's S3 key is the asset hash; the staged folder is named after it.
  return join(outdir, `asset.${String(fn.Properties.Code.S3Key).replace(/\.zip$/, '')}`);
}

/** What a bundle run as deployed needs to reach the embedded S3. */
const s3Env = (s3: { endpoint: string; accessKey: string; secretKey: string }) => ({
  PATH: process.env.PATH!,
  S3_ENDPOINT: s3.endpoint,
  S3_ACCESS_KEY: s3.accessKey,
  S3_SECRET_KEY: s3.secretKey,
  S3_BUCKET_NAME: 'avatars',
});

/** Portraits of local/faces/ put in a fresh embedded S3 at these keys, for a bundle to read: `body` gets the bundle's environment. */
async function withPortraitsInS3(portraits: Record<string, string>, body: (env: Record<string, string>) => Promise<void>): Promise<void> {
  const s3Dir = mkdtempSync(join(tmpdir(), 'avatars-asset-s3-'));
  const s3 = await startEmbeddedS3(s3Dir, 'avatars');
  const client = s3ClientFromEnv({ S3_ENDPOINT: s3.endpoint, S3_ACCESS_KEY: s3.accessKey, S3_SECRET_KEY: s3.secretKey });
  try {
    const faces = join(projectRoot, 'local', 'faces');
    await Promise.all(Object.entries(portraits).map(([key, file]) => client.send(new PutObjectCommand({ Bucket: 'avatars', Key: key, Body: readFileSync(join(faces, file)) }))));
    await body(s3Env(s3));
  } finally {
    client.destroy();
    await s3.close();
    rmSync(s3Dir, { recursive: true, force: true });
  }
}

/** A bundle's handler, run in a process of its own as Lambda runs it: what it returned. */
async function handled(dir: string, event: unknown, env: Record<string, string>) {
  const script = `require('./index.js').handler(${JSON.stringify(event)}, { getRemainingTimeInMillis: () => 60000 }).then((r) => console.log(JSON.stringify(r)))`;
  const { stdout } = await promisify(execFile)(process.execPath, ['-e', script], { cwd: dir, env });
  return JSON.parse(stdout.trim().split('\n').at(-1)!);
}

describe('the bundled Lambda assets', () => {
  it('come with the same template that the tests, the local runner and the bench synthesize', () => {
    // The CLI resolves the region from the AWS configuration and hands it to the app, as here.
    process.env.CDK_DEFAULT_REGION = REGION;
    const inProcess = buildApp({ bundle: false, outdir: join(outdir, 'in-process') }).app.synth().getStackByName(STACK_NAME).template as Template;
    delete process.env.CDK_DEFAULT_REGION;
    expect(firstDifference(withoutAssetKeys(inProcess), withoutAssetKeys(template))).toBeUndefined();
  });

  it('are what the local runner runs: the state machines of the template cdk synth writes, unchanged by running them', async () => {
    const env = await startTestEnvironment({ env: { IDENTITY_POLICY: 'off' } });
    expect((await runLocally({ input: { persona, images: 4 }, deps: env.deps })).status).toBe('SUCCEEDED');
    const local = await synthesizeWorkflows();
    expect(local.persona.definition).toEqual(workflowFromTemplate(template, STACK_NAME).definition);
    expect(local.batch.definition).toEqual(workflowFromTemplate(template, BATCH_STATE_MACHINE_NAME).definition);
  });

  it('builds a self-contained bundle for every stage', () => {
    for (const stage of stageNames) {
      expect(statSync(join(assetOf(stage), 'index.js')).size).toBeGreaterThan(1000);
    }
  });

  it('holds in each stage only the clients its core uses', () => {
    // A string each client's code carries, whatever the minifier renames.
    const markers = { s3: 'AmazonS3', openai: 'api.openai.com', secrets: 'secretsmanager', sfn: 'AWSStepFunctions' };
    const uses: Record<string, (keyof typeof markers)[]> = {
      'plan-run': [],
      'split-grid': ['s3'],
      'check-base': ['s3'],
      'check-identity': ['s3'],
      // The C2PA signing certificate's secret.
      publish: ['s3', 'secrets'],
      'record-failure': ['s3'],
      'write-prompt': ['s3', 'openai', 'secrets'],
      'generate-base': ['s3', 'openai', 'secrets'],
      'generate-grid': ['s3', 'openai', 'secrets'],
      'start-from-upload': ['s3', 'sfn'],
      'plan-batch': ['s3', 'sfn'],
      'report-batch': ['s3'],
      'submit-round': ['s3', 'openai', 'secrets'],
      'collect-round': ['s3', 'openai', 'secrets'],
    };
    for (const stage of stageNames) {
      const code = readFileSync(join(assetOf(stage), 'index.js'), 'utf8');
      const found = (Object.keys(markers) as (keyof typeof markers)[]).filter((client) => code.includes(markers[client]));
      expect(found, stage).toEqual(uses[stage]);
    }
  });

  it('ships sharp for linux x64 with split-grid, and the bundle loads it and cuts an image', () => {
    const dir = assetOf('split-grid');
    expect(readdirSync(join(dir, 'node_modules', '@img'))).toEqual(expect.arrayContaining(['sharp-linux-x64', 'sharp-libvips-linux-x64']));
    const script = `
      const bundle = require('./index.js');
      if (typeof bundle.handler !== 'function') throw new Error('no handler');
      const sharp = require('sharp');
      sharp({ create: { width: 64, height: 32, channels: 3, background: '#ff0000' } }).extract({ left: 0, top: 0, width: 32, height: 32 }).png().toBuffer()
        .then((png) => sharp(png).metadata()).then((m) => console.log(JSON.stringify({ width: m.width, resolved: require.resolve('sharp') })));`;
    const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { cwd: dir, env: { PATH: process.env.PATH } }).toString());
    expect(out.width).toBe(32);
    expect(out.resolved.startsWith(dir)).toBe(true);
  });

  it('ships publish with the C2PA library\u2019s WASM, and the bundle publishes signed avatars from S3', async () => {
    const dir = assetOf('publish');
    expect(readdirSync(dir)).toContain('c2pa_bg.wasm');
    const work = mkdtempSync(join(tmpdir(), 'avatars-asset-publish-'));
    const s3 = await startEmbeddedS3(join(work, 's3'), 'avatars');
    const client = s3ClientFromEnv({ S3_ENDPOINT: s3.endpoint, S3_ACCESS_KEY: s3.accessKey, S3_SECRET_KEY: s3.secretKey });
    try {
      const issued = await issueSigningCertificate('Bundle test signer');
      writeFileSync(join(work, 'chain.pem'), issued.certificatePem);
      writeFileSync(join(work, 'key.pem'), issued.privateKeyPem);
      const grid = await sharp({ create: { width: 256, height: 256, channels: 3, background: '#806040' } }).png().toBuffer();
      const tile = await sharp(grid).extract({ left: 0, top: 0, width: 128, height: 128 }).png().toBuffer();
      const put = (key: string, body: Buffer | string) => client.send(new PutObjectCommand({ Bucket: 'avatars', Key: key, Body: body }));
      await Promise.all([put('runs/p/r/grid_0.png', grid), put('runs/p/r/tile.png', tile), put('runs/p/r/prompt.txt', 'a prompt')]);
      const event = {
        personaId: 'p',
        runId: 'r',
        persona: { id: 'p', firstname: 'P', lastname: 'Q', gender: 'female' },
        images: 1,
        mode: 'grid',
        prompt: { promptKey: 'runs/p/r/prompt.txt', provider: 'template', ms: 0 },
        base: { baseKey: 'runs/p/r/base.png', model: 'gpt-image-2', ms: 0, estimatedCostUsd: 0 },
        grids: [{ gridIndex: 0, tiles: [{ key: 'runs/p/r/tile.png', sourceKey: 'runs/p/r/grid_0.png', box: { left: 0, top: 0, width: 128, height: 128 }, bytes: 1 }], generation: { gridIndex: 0, mode: 'grid', count: 1, model: 'gpt-image-2', ms: 0, estimatedCostUsd: 0 }, ms: 0 }],
      };
      const script = `require('./index.js').handler(${JSON.stringify(event)}, { getRemainingTimeInMillis: () => 60000 }).then((r) => console.log(JSON.stringify(r.images[0])))`;
      const env = {
        ...s3Env(s3),
        PUBLIC_BASE_URL: 'https://avatars.example.com',
        C2PA_CERTIFICATE: join(work, 'chain.pem'),
        C2PA_PRIVATE_KEY: join(work, 'key.pem'),
        ...sameClock(),
      };
      const { stdout } = await promisify(execFile)(process.execPath, ['-e', script], { cwd: dir, env });
      const image = JSON.parse(stdout.trim().split('\n').at(-1)!) as { key: string; provenance: { signed: boolean; signer: string } };
      expect(image.provenance).toMatchObject({ signed: true, signer: 'Bundle test signer' });
      const stored = Buffer.from(await (await client.send(new GetObjectCommand({ Bucket: 'avatars', Key: image.key }))).Body!.transformToByteArray());
      expect((await readC2pa({ bytes: stored, format: 'png' }, issued.caPem))?.state).toBe('Trusted');
    } finally {
      client.destroy();
      await s3.close();
      rmSync(work, { recursive: true, force: true });
    }
  });

  it('ships generate-base, whose bundle draws a base and prints its image count and cost as CloudWatch metrics in one namespace', async () => {
    const work = mkdtempSync(join(tmpdir(), 'avatars-asset-base-'));
    const [s3, backend] = await Promise.all([startEmbeddedS3(join(work, 's3'), 'avatars'), startOfflineBackend()]);
    try {
      const event = { personaId: persona.id, runId: 'r', batchId: null, persona, budget: null, imageApi: 'sync' };
      const script = `require('./index.js').handler(${JSON.stringify(event)}, { getRemainingTimeInMillis: () => 60000 }).then((r) => console.log(JSON.stringify({ base: r })))`;
      const env = { ...s3Env(s3), OPENAI_API_KEY: 'sk-test', OPENAI_BASE_URL: backend.baseUrl, ...sameClock() };
      const { stdout } = await promisify(execFile)(process.execPath, ['-e', script], { cwd: assetOf('generate-base'), env });
      const lines = stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, any>);
      expect(lines.at(-1)!.base).toMatchObject({ baseKey: expect.stringMatching(/base\.png$/), model: 'gpt-image-2' });
      // Embedded metric format: what CloudWatch turns into metrics from the function's log.
      const emf = lines.filter((l) => l._aws);
      const named = (name: string) => emf.filter((l) => l._aws.CloudWatchMetrics[0].Metrics.some((m: { Name: string }) => m.Name === name));
      for (const record of emf) expect(record._aws.CloudWatchMetrics[0].Namespace).toBe(METRICS_NAMESPACE);
      const totals = named('ImagesDrawn').find((l) => l._aws.CloudWatchMetrics[0].Dimensions[0].length === 1)!;
      expect(totals).toMatchObject({ service: METRICS_SERVICE, ImagesDrawn: 1, ImageCalls: 1, ImageCostUsd: lines.at(-1)!.base.estimatedCostUsd });
      expect(named('ImageCostUsd').some((l) => l.model === 'gpt-image-2' && l.api === 'sync')).toBe(true);
      // A named error the function lets through is counted by its name.
      const refused = `require('./index.js').handler({ personaId: 'x', runId: 'r', batchId: null, persona: { id: 'x' }, imageApi: 'batch' }, { getRemainingTimeInMillis: () => 60000 }).catch((e) => console.log(JSON.stringify({ error: e.name })))`;
      const failed = (await promisify(execFile)(process.execPath, ['-e', refused], { cwd: assetOf('generate-base'), env })).stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, any>);
      expect(failed).toContainEqual(expect.objectContaining({ error: failed.at(-1)!.error, StageErrors: 1, service: METRICS_SERVICE }));
    } finally {
      await backend.close();
      await s3.close();
      rmSync(work, { recursive: true, force: true });
    }
  });

  it('ships check-identity with its face models and WASM binaries, and the bundle scores faces from S3', async () => {
    const dir = assetOf('check-identity');
    expect(readdirSync(join(dir, 'face-models')).sort()).toEqual(FACE_MODELS.flatMap((m) => [`${m}.bin`, `${m}.json`]).sort());
    expect(readdirSync(join(dir, 'tfjs-wasm')).some((f) => f.endsWith('.wasm'))).toBe(true);
    await withPortraitsInS3({ 'runs/p/r/base.png': 'astronaut.png', 'runs/p/r/t0.png': 'astronaut.png', 'runs/p/r/t1.png': 'grace_hopper.jpg' }, async (env) => {
      const tiles = ['runs/p/r/t0.png', 'runs/p/r/t1.png'].map((key) => ({ key, box: { left: 0, top: 0, width: 512, height: 512 }, bytes: 1 }));
      const event = { personaId: 'p', runId: 'r', baseKey: 'runs/p/r/base.png', split: { gridIndex: 0, tiles, generation: {}, ms: 0 } };
      const { identity } = await handled(dir, event, { ...env, IDENTITY_POLICY: 'flag' });
      expect(identity.verdicts.map((v: { pass: boolean }) => v.pass)).toEqual([true, false]);
    });
  });

  it('ships check-base with the face models, and the bundle refuses a second persona of one person, registered in the bucket’s index', async () => {
    const dir = assetOf('check-base');
    expect(readdirSync(join(dir, 'face-models')).sort()).toEqual(FACE_MODELS.flatMap((m) => [`${m}.bin`, `${m}.json`]).sort());
    await withPortraitsInS3({ 'runs/p1/r/base.png': 'obama1.jpg', 'runs/p2/r/base.png': 'obama2.jpg' }, async (env) => {
      const check = (id: string) =>
        handled(dir, { personaId: id, runId: 'r', persona: { ...persona, id, gender: 'male' }, base: { baseKey: `runs/${id}/r/base.png`, model: 'gpt-image-2', estimatedCostUsd: 0.04, warnings: [], ms: 1 } }, env);
      expect((await check('p1')).check.lookalike.pass).toBe(true);
      const second = await check('p2');
      expect(second.redraw.promptKey).toBe('runs/p2/r/base-redraw-1.txt');
      expect(second.redraws[0].reasons[0]).toMatch(/^lookalike: the person of persona p1/);
    });
  });
});
