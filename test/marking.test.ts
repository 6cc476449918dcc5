import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import ExifReader from 'exifreader';
import sharp from 'sharp';
import { describe, expect, it, onTestFinished } from 'vitest';
import { manifestActions, readC2pa } from '../lambdas/publish/c2pa.ts';
import { marked, TRAINED_ALGORITHMIC_MEDIA } from '../lambdas/publish/marking.ts';
import type { BatchReport } from '../lambdas/shared/batch.ts';
import { s3ClientFromEnv } from '../lambdas/shared/s3.ts';
import { ObjectStore } from '../lambdas/shared/store.ts';
import { DEV_SIGNER_NAME } from '../local/certificates.ts';
import { startEmbeddedS3 } from '../local/embedded-s3.ts';
import { startOfflineBackend } from '../local/offline-openai.ts';
import { runLocally } from '../local/runner.ts';
import { readWithCaiWebSdk } from './c2pa-web.ts';
import { avatars, eventsDir, holdsC2paWhereExpected, persona, startTestEnvironment, team, tempDir, withOnePixelByteChanged } from './support.ts';

/** What a reader that is not ours finds in the file's XMP. */
const xmpOf = (file: Buffer) => (ExifReader.load(file, { expanded: true }) as { xmp?: Record<string, { value: string }> }).xmp ?? {};

const work = tempDir('marking-cli');

describe('avatars marked as AI-generated', () => {
  for (const format of ['png', 'webp', 'jpeg'] as const) {
    for (const alpha of [false, true]) {
      it(`writes IPTC's digital source type, the model and the credit into a ${format}${alpha ? ' with alpha' : ''}, its pixels untouched`, async () => {
        const image = await sharp({ create: { width: 96, height: 120, channels: alpha ? 4 : 3, background: { r: 180, g: 120, b: 90, alpha: 0.6 } } })
          .toFormat(format, format === 'webp' && alpha ? { lossless: true } : {})
          .toBuffer();
        const file = marked(image, format, { width: 96, height: 120 }, { model: 'gpt-image-2', credit: 'Avatars & <co>' });
        expect(xmpOf(file)).toMatchObject({ DigitalSourceType: { value: TRAINED_ALGORITHMIC_MEDIA }, AISystemUsed: { value: 'gpt-image-2' }, Credit: { value: 'Avatars & <co>' } });
        const [before, after] = await Promise.all([image, file].map((f) => sharp(f).raw().toBuffer({ resolveWithObject: true })));
        expect(after!.info).toEqual(before!.info);
        expect(after!.data.equals(before!.data)).toBe(true);
      });
    }
  }

  for (const format of ['png', 'webp', 'jpeg'] as const) {
    it(`marks every published ${format} avatar with XMP and a signed C2PA manifest whose parent is the backend's signed grid, and the manifest says so`, async () => {
      const env = await startTestEnvironment({ env: { TILE_FORMAT: format, AVATAR_CREDIT: 'Example Corp synthetic personas' } });
      const outcome = await runLocally({ input: { persona, images: 4 }, deps: env.deps });
      if (outcome.status !== 'SUCCEEDED') throw new Error(outcome.cause);
      for (const image of outcome.output.images) {
        const file = await env.deps.store.getBytes(image.key);
        expect(xmpOf(file), image.key).toMatchObject({
          DigitalSourceType: { value: TRAINED_ALGORITHMIC_MEDIA },
          AISystemUsed: { value: image.model },
          Credit: { value: 'Example Corp synthetic personas' },
        });
        expect(holdsC2paWhereExpected(file, format), image.key).toBe(true);
        const c2pa = await readC2pa({ bytes: file, format }, env.trustAnchorsPem);
        expect(c2pa, `${image.key} ${c2pa?.failures}`).toMatchObject({ state: 'Trusted', manifest: { signature_info: { common_name: DEV_SIGNER_NAME }, ingredients: [{ relationship: 'parentOf', title: 'grid_0.png' }] } });
        // Opened from the grid, cut out of it, and scaled where its panel was larger than the run's avatar size.
        const [opened, cropped, ...resized] = manifestActions(c2pa!.manifest);
        expect(opened).toEqual({ action: 'c2pa.opened', digitalSourceType: TRAINED_ALGORITHMIC_MEDIA, softwareAgent: { name: 'gpt-image-2' }, parameters: expect.anything() });
        expect(cropped).toEqual({ action: 'c2pa.cropped' });
        expect([[], [{ action: 'c2pa.resized' }]]).toContainEqual(resized);
        // The grid's own manifest, as the backend signed it, is kept inside.
        expect(c2pa!.parent).toMatchObject({ signature_info: { common_name: 'Offline image generator (test)' } });
        expect(manifestActions(c2pa!.parent!)).toEqual([expect.objectContaining({ action: 'c2pa.created', digitalSourceType: TRAINED_ALGORITHMIC_MEDIA })]);
        expect((await readC2pa({ bytes: withOnePixelByteChanged(file, format), format }, env.trustAnchorsPem))?.state, image.key).toBe('Invalid');
        // As the public's readers see it: valid, only its development signer untrusted.
        expect(await readWithCaiWebSdk(file, `image/${format}`), image.key).toEqual({ state: 'Valid', failures: ['signingCredential.untrusted'], signer: DEV_SIGNER_NAME });
      }
      const manifest = JSON.parse(await env.deps.store.getText(outcome.output.manifestKey));
      expect(manifest.warnings).toEqual([]);
      for (const image of manifest.images) {
        expect(image.provenance).toEqual({
          digitalSourceType: TRAINED_ALGORITHMIC_MEDIA,
          marking: 'xmp+c2pa',
          signed: true,
          signer: DEV_SIGNER_NAME,
          parent: { key: expect.stringMatching(/^runs\/ada-lovelace\/.+\/grid_0\.png$/), signedBy: 'Offline image generator (test)' },
          aiSystemUsed: 'gpt-image-2',
        });
      }
    });
  }

  it('names each image the model drew as the parent of its avatar in separate mode, signed by the backend, not cropped from a grid', async () => {
    const env = await startTestEnvironment({ env: { IDENTITY_POLICY: 'off' } });
    const outcome = await runLocally({ input: { persona, images: 2, mode: 'separate' }, deps: env.deps });
    if (outcome.status !== 'SUCCEEDED') throw new Error(outcome.cause);
    for (const image of outcome.output.images) {
      expect(image.provenance.parent).toEqual({ key: expect.stringMatching(/^runs\/ada-lovelace\/.+/), signedBy: 'Offline image generator (test)' });
      const c2pa = await readC2pa({ bytes: await env.deps.store.getBytes(image.key), format: 'png' }, env.trustAnchorsPem);
      expect(c2pa).toMatchObject({ state: 'Trusted', parent: { signature_info: { common_name: 'Offline image generator (test)' } } });
      expect(manifestActions(c2pa!.manifest).map((a) => a.action)).not.toContain('c2pa.cropped');
    }
  });

  it('publishes avatars marked with XMP only when no certificate signs them, and the manifest warns they are not signed', async () => {
    const env = await startTestEnvironment();
    const deps = { ...env.deps, signing: { current: async () => ({ signer: undefined, unsignedBecause: 'the C2PA signing secret arn:example does not exist' }) } };
    const outcome = await runLocally({ input: { persona, images: 4 }, deps });
    if (outcome.status !== 'SUCCEEDED') throw new Error(outcome.cause);
    const warning = 'avatars are not signed (C2PA): the C2PA signing secret arn:example does not exist; they carry the IPTC marking only (README: Marking)';
    expect(outcome.output.warnings).toEqual([warning]);
    for (const image of outcome.output.images) {
      const file = await env.deps.store.getBytes(image.key);
      expect(xmpOf(file)).toMatchObject({ DigitalSourceType: { value: TRAINED_ALGORITHMIC_MEDIA } });
      expect(await readC2pa({ bytes: file, format: 'png' })).toBeUndefined();
      expect(image.provenance).toMatchObject({ marking: 'xmp', signed: false });
    }
    expect(JSON.parse(await env.deps.store.getText(outcome.output.manifestKey)).warnings).toEqual([warning]);
  });
});

describe('avatars run and avatars batch against a server whose images carry no provenance', () => {
  it('publish every avatar with XMP and a signed C2PA manifest naming the drawn image as parent, in webp and jpeg', async () => {
    const backend = await startOfflineBackend({ c2pa: false });
    onTestFinished(backend.close);
    const cwd = work;
    writeFileSync(join(cwd, 'team.jsonl'), `${team(2).join('\n')}\n`);
    const env = { OPENAI_API_KEY: 'sk-test', OPENAI_BASE_URL: backend.baseUrl, PROMPT_PROVIDER: 'template', IMAGES_PER_MINUTE: '100000' };
    const [run, batch] = await Promise.all([
      avatars(cwd, ['run', join(eventsDir, 'persona.json'), '--json', '--quiet', '--out', 'run-out', '--data', 'run-data'], { ...env, TILE_FORMAT: 'webp' }),
      avatars(cwd, ['batch', 'team.jsonl', '--json', '--data', 'batch-data'], { ...env, TILE_FORMAT: 'jpeg' }),
    ]);
    expect(run.code, run.stderr).toBe(0);
    expect(batch.code, batch.stderr).toBe(0);
    const check = async (file: Buffer, format: 'webp' | 'jpeg', devCa: string) => {
      expect(xmpOf(file)).toMatchObject({ DigitalSourceType: { value: TRAINED_ALGORITHMIC_MEDIA } });
      expect(holdsC2paWhereExpected(file, format)).toBe(true);
      const c2pa = await readC2pa({ bytes: file, format }, devCa);
      expect(c2pa, String(c2pa?.failures)).toMatchObject({ state: 'Trusted', manifest: { ingredients: [{ relationship: 'parentOf' }] } });
      expect(manifestActions(c2pa!.manifest)[0]).toMatchObject({ action: 'c2pa.opened', digitalSourceType: TRAINED_ALGORITHMIC_MEDIA });
      // The drawn image had no manifest to keep.
      expect(c2pa!.parent).toBeUndefined();
      expect((await readC2pa({ bytes: withOnePixelByteChanged(file, format), format }, devCa))?.state).toBe('Invalid');
    };

    const ran = JSON.parse(run.stdout) as { outDir: string; files: string[]; images: { provenance: Record<string, unknown> }[] };
    expect(ran.files.filter((f) => f.endsWith('.webp'))).toHaveLength(4);
    for (const file of ran.files.filter((f) => f.endsWith('.webp'))) await check(readFileSync(join(ran.outDir, file)), 'webp', readFileSync(join(cwd, 'run-data', 'c2pa', 'dev-ca.pem'), 'utf8'));
    for (const image of ran.images) expect(image.provenance).toMatchObject({ marking: 'xmp+c2pa', signed: true, signer: DEV_SIGNER_NAME, parent: { key: expect.any(String) } });
    for (const image of ran.images) expect(image.provenance.parent).not.toHaveProperty('signedBy');
    // What a user checks them with: avatars verify trusts the development CA under --data.
    const tampered = join(cwd, 'tampered.webp');
    writeFileSync(tampered, withOnePixelByteChanged(readFileSync(join(ran.outDir, 'img_1.webp')), 'webp'));
    const verified = await avatars(cwd, ['verify', join(ran.outDir, 'img_1.webp'), join(ran.outDir, 'img_2.webp'), tampered, '--data', 'run-data']);
    expect(verified.code).toBe(1);
    expect(verified.stdout).toContain(`✓ ${join(ran.outDir, 'img_1.webp')}: C2PA Trusted here only (the local development CA), signed by ${DEV_SIGNER_NAME}; c2pa.opened`);
    expect(verified.stdout).toMatch(/^✗ .*tampered\.webp: C2PA Invalid, .*; [a-zA-Z.]+mismatch/m);

    const report = JSON.parse(batch.stdout) as BatchReport;
    expect(report.counts).toMatchObject({ total: 2, SUCCEEDED: 2 });
    const s3 = await startEmbeddedS3(join(cwd, 'batch-data', 's3'), 'avatars');
    onTestFinished(s3.close);
    const store = new ObjectStore(s3ClientFromEnv({ S3_ENDPOINT: s3.endpoint, S3_ACCESS_KEY: s3.accessKey, S3_SECRET_KEY: s3.secretKey }), 'avatars');
    onTestFinished(() => store.s3.destroy());
    const keys = report.personas.flatMap((p) => p.avatars!.map((a) => a.key));
    expect(keys).toHaveLength(8);
    for (const key of keys) await check(await store.getBytes(key), 'jpeg', readFileSync(join(cwd, 'batch-data', 'c2pa', 'dev-ca.pem'), 'utf8'));
  }, 120_000);
});
