import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { buildApp } from '../infra/app.ts';
import { stageNames } from '../lambdas/stages.ts';

// Bundles every stage with esbuild on this machine: no Docker, no network.
const outdir = mkdtempSync(join(tmpdir(), 'avatars-assets-'));
const { app, stack } = buildApp({ outdir });
const assembly = app.synth();
const template = assembly.getStackByName(stack.stackName).template as { Resources: Record<string, { Type: string; Properties: Record<string, any> }> };
afterAll(() => rmSync(outdir, { recursive: true, force: true }));

function assetOf(stage: string): string {
  const fn = Object.values(template.Resources).find((r) => r.Type === 'AWS::Lambda::Function' && r.Properties.Environment?.Variables?.STAGE === stage)!;
  // The code's S3 key is the asset hash; the staged folder is named after it.
  return join(outdir, `asset.${String(fn.Properties.Code.S3Key).replace(/\.zip$/, '')}`);
}

describe('the bundled Lambda assets', () => {
  it('builds a self-contained bundle for every stage', () => {
    for (const stage of stageNames) {
      expect(statSync(join(assetOf(stage), 'index.js')).size).toBeGreaterThan(1000);
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
});
