import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { s3ClientFromEnv } from '../lambdas/shared/s3.ts';
import type { Deps } from '../lambdas/shared/stage.ts';
import { startEmbeddedS3 } from '../local/embedded-s3.ts';
import { runLocally, type RunOutcome } from '../local/runner.ts';
import { HANG_TIMEOUT_MS } from '../local/environment.ts';
import { parseFaults } from '../local/faults.ts';
import type { Fault } from '../local/offline-openai.ts';
import { avatars as avatarsIn, eventsDir, persona, startTestEnvironment, tempDir } from './support.ts';

const work = tempDir('workflow');
const avatars = (...args: string[]) => avatarsIn(work, args);

/** Keys under `prefix` in the S3 data a CLI run left in `data`, read back through the S3 API. */
async function storedKeys(data: string, prefix: string): Promise<string[]> {
  const server = await startEmbeddedS3(join(data, 's3'), 'avatars');
  const s3 = s3ClientFromEnv({ S3_ENDPOINT: server.endpoint, S3_ACCESS_KEY: server.accessKey, S3_SECRET_KEY: server.secretKey });
  try {
    const listed = await s3.send(new ListObjectsV2Command({ Bucket: 'avatars', Prefix: prefix }));
    return (listed.Contents ?? []).map((o) => o.Key!);
  } finally {
    s3.destroy();
    await server.close();
  }
}

/** True when a tile's outer lines hold no white gutter. */
async function hasNoGutterEdges(file: string): Promise<boolean> {
  const { data, info } = await sharp(file).raw().toBuffer({ resolveWithObject: true });
  const whiteShare = (pixels: number[]) => pixels.filter((p) => Math.min(data[p]!, data[p + 1]!, data[p + 2]!) >= 205).length / pixels.length;
  const at = (x: number, y: number) => (y * info.width + x) * info.channels;
  const xs = [...Array(info.width).keys()];
  const ys = [...Array(info.height).keys()];
  const edges = [xs.map((x) => at(x, 0)), xs.map((x) => at(x, info.height - 1)), ys.map((y) => at(0, y)), ys.map((y) => at(info.width - 1, y))];
  return edges.every((edge) => whiteShare(edge) < 0.5);
}

describe('avatars run, offline end to end', () => {
  for (const images of [4, 8]) {
    it(`publishes ${images} avatars to S3 and saves them, a contact sheet and a gallery to disk`, async () => {
      const out = join(work, `out-${images}`);
      const data = join(work, `data-${images}`);
      const { code, stdout, stderr } = await avatars('run', join(eventsDir, 'persona.json'), '--images', String(images), '--out', out, '--data', data, '--json');
      expect(code, stderr).toBe(0);
      const result = JSON.parse(stdout);
      expect(result.images).toHaveLength(images);
      expect(stderr).toContain('✓ Publish');
      const pngs = readdirSync(out).filter((f) => /^img_\d+\.png$/.test(f));
      expect(pngs).toHaveLength(images);
      for (const file of pngs) {
        const meta = await sharp(join(out, file)).metadata();
        expect(meta.width).toBeGreaterThan(400);
        expect(meta.height).toBeGreaterThan(400);
        expect(await hasNoGutterEdges(join(out, file)), file).toBe(true);
      }
      expect(readdirSync(out)).toEqual(expect.arrayContaining(['contact-sheet.png', 'index.html', 'manifest.json']));
      expect(readFileSync(join(out, 'index.html'), 'utf8')).toContain('img_1.png');
      // Provenance in one line, who signed what on demand.
      expect(readFileSync(join(out, 'index.html'), 'utf8')).toContain(
        '<details><summary>AI-generated, C2PA signed</summary>IPTC XMP; C2PA signed by persona-avatars development; drawn image signed by Offline image generator (test)</details>',
      );
      // The embedded S3 keeps its objects on disk under --data.
      const stored = await storedKeys(data, 'avatars/ada-lovelace/');
      expect(stored.filter((k) => /img_\d+\.png$/.test(k))).toHaveLength(images);
      expect(stored).toContain('avatars/ada-lovelace/manifest.json');
    });
  }

  it('exits non-zero with the error name and the field when the persona is malformed', async () => {
    const file = join(work, 'bad.json');
    writeFileSync(file, JSON.stringify({ ...persona, gender: '' }));
    const { code, stderr } = await avatars('run', file, '--data', join(work, 'data-bad'));
    expect(code).toBe(1);
    expect(stderr).toMatch(/InvalidPersona: persona\.gender: /);
  });

  it('exits non-zero after a policy refusal survives the safer rewrite, leaving a failure record', async () => {
    const data = join(work, 'data-policy');
    const { code, stderr } = await avatars('run', join(eventsDir, 'persona.json'), '--fault', 'policy:always@generations', '--data', data);
    expect(code).toBe(1);
    expect(stderr).toContain('RewriteBasePrompt');
    expect(stderr).toMatch(/failed: ContentPolicyViolation: base image for persona ada-lovelace/);
    expect(await storedKeys(data, 'avatars/ada-lovelace/failures/')).toHaveLength(1);
  });

  it('explains a missing persona file', async () => {
    const { code, stderr } = await avatars('run', 'nope.json');
    expect(code).toBe(2);
    expect(stderr).toContain('cannot read persona file nope.json: no such file');
  });
});

describe('the workflow answers each fault through the real client', () => {

  /** A run against these faults, with the store it wrote to. */
  async function runWith(faults: Fault[], images = 4): Promise<RunOutcome & { store: Deps['store'] }> {
    const { deps } = await startTestEnvironment({ faults, env: { IMAGE_TIMEOUT_MS: '800' } });
    return { ...(await runLocally({ input: { persona, images }, deps })), store: deps.store };
  }
  const retries = (outcome: RunOutcome, state: string) => outcome.events.filter((e) => e.kind === 'retried' && e.state === state).length;
  // Failures of a state by error: under the short timeout a slow machine adds ImageTimeouts of its own, retried as well.
  const failures = (outcome: RunOutcome, state: string, error: string) => outcome.events.filter((e) => e.kind === 'failed' && e.state === state && e.error === error).length;
  const entered = (outcome: RunOutcome, state: string) => outcome.events.some((e) => e.kind === 'entered' && e.state === state);

  it('retries a rate-limited grid and then succeeds', async () => {
    const outcome = await runWith([{ kind: 'rate-limit', times: 2, route: 'edits' }]);
    expect(outcome.status).toBe('SUCCEEDED');
    expect(failures(outcome, 'GenerateGrid', 'RateLimited')).toBe(2);
  });

  it('retries a 5xx from the image API and then succeeds', async () => {
    const outcome = await runWith([{ kind: 'server-error', times: 1, route: 'generations' }]);
    expect(outcome.status).toBe('SUCCEEDED');
    expect(failures(outcome, 'GenerateBase', 'UpstreamError')).toBe(1);
  });

  it('times out a hung image call inside the stage, retries it and succeeds', async () => {
    const outcome = await runWith([{ kind: 'hang', times: 1, route: 'edits' }]);
    expect(outcome.status).toBe('SUCCEEDED');
    expect(outcome.events.find((e) => e.kind === 'failed' && e.state === 'GenerateGrid')?.error).toBe('ImageTimeout');
  });

  it('rewrites a refused grid prompt once and succeeds with the safer prompt', async () => {
    const outcome = await runWith([{ kind: 'policy', times: 1, route: 'edits' }]);
    expect(outcome.status).toBe('SUCCEEDED');
    expect(entered(outcome, 'RewriteGridPrompt')).toBe(true);
    expect(entered(outcome, 'GenerateGridSafer')).toBe(true);
  });

  it('draws a grid again when it came back with the wrong number of panels', async () => {
    const outcome = await runWith([{ kind: 'layout', times: 1, route: 'edits' }]);
    expect(outcome.status).toBe('SUCCEEDED');
    expect(retries(outcome, 'GridAttempt')).toBe(1);
  });

  it('draws a grid again under --fault layout with no target: the fault goes to the grid, not the base', async () => {
    const outcome = await runWith(parseFaults(['layout']));
    expect(outcome.status).toBe('SUCCEEDED');
    expect(retries(outcome, 'GridAttempt')).toBe(1);
  });

  it('gives a hung image call a short wait locally, and says so', async () => {
    const env = await startTestEnvironment({ faults: parseFaults(['hang']), env: { IMAGE_TIMEOUT_MS: undefined } });
    expect(env.deps.imageTimeoutMs).toBe(HANG_TIMEOUT_MS);
    expect(env.notes.join('\n')).toMatch(/--fault hang: image calls give up after 5 s here \(IMAGE_TIMEOUT_MS/);
  });

  it('fails the run named after the cause when rate limits never end, and records it', async () => {
    const outcome = await runWith([{ kind: 'rate-limit', times: Infinity, route: 'generations' }]);
    expect(outcome).toMatchObject({ status: 'FAILED', error: 'RateLimited' });
    const listed = await outcome.store.s3.send(new ListObjectsV2Command({ Bucket: outcome.store.bucket, Prefix: 'avatars/ada-lovelace/failures/' }));
    expect(listed.KeyCount).toBe(1);
  });
});
