import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { projectRoot } from '../infra/context.ts';
import { stageNames } from '../lambdas/stages.ts';
import { FAULT_KINDS, FAULT_SYNTAX } from '../local/faults.ts';
import { composeGrid, drawAvatar, gridLayout, lookFor, random, seedOf } from '../local/avatar-art.ts';
import { avatars as avatarsIn, eventsDir, tempDir } from './support.ts';

const work = tempDir('cli');
const avatars = (...args: string[]) => avatarsIn(work, args);

async function gridFile(name: string, width: number, height: number): Promise<string> {
  const rnd = random(seedOf(name));
  const look = lookFor(name);
  const cells = gridLayout(width, height, 2, 2, rnd);
  const pictures = await Promise.all(cells.map((c, i) => drawAvatar(look, c.width, c.height, i)));
  const file = join(work, `${name}.png`);
  writeFileSync(file, await composeGrid(width, height, cells, pictures, rnd));
  return file;
}

describe('avatars split', () => {
  it('splits the grids avatars run --keep-grids saved, as the README shows', async () => {
    const out = join(work, 'kept');
    const run = await avatars('run', join(eventsDir, 'persona.json'), '--images', '8', '--keep-grids', '--quiet', '--out', out, '--data', join(work, 'data-kept'));
    expect(run.code, run.stderr).toBe(0);
    expect(readdirSync(join(out, 'grids')).sort()).toEqual(['grid_0.png', 'grid_1.png']);
    const split = await avatars('split', join(out, 'grids', 'grid_0.png'), join(out, 'grids', 'grid_1.png'), '--out', join(work, 'kept-tiles'));
    expect(split.code, split.stderr).toBe(0);
    expect(readdirSync(join(work, 'kept-tiles', 'grid_1')).sort()).toEqual(['img_0.png', 'img_1.png', 'img_2.png', 'img_3.png']);
  });

  it('splits many grids in one go into DIR/<grid name>/img_<i>.png, row-major, each the size of its cell', async () => {
    const files = [await gridFile('square', 1024, 1024), await gridFile('wide', 1536, 1024)];
    const out = join(work, 'tiles');
    const { code, stdout, stderr } = await avatars('split', ...files, '--out', out);
    expect(code, stderr).toBe(0);
    for (const name of ['square', 'wide']) {
      expect(readdirSync(join(out, name)).sort()).toEqual(['img_0.png', 'img_1.png', 'img_2.png', 'img_3.png']);
      const printed = stdout.split('\n').find((l) => l.includes(`${name}.png:`))!;
      const boxes = [...printed.matchAll(/img_(\d) (\d+)x(\d+)\+(\d+)\+(\d+)/g)].map((m) => m.slice(1).map(Number));
      expect(boxes).toHaveLength(4);
      // Row-major: left column first in each row, top row first.
      expect(boxes[0]![3]).toBeLessThan(boxes[1]![3]!);
      expect(boxes[0]![4]).toBeLessThan(boxes[2]![4]!);
      for (const [i, width, height] of boxes) {
        const meta = await sharp(join(out, name, `img_${i}.png`)).metadata();
        expect([meta.width, meta.height]).toEqual([width, height]);
      }
    }
  });

  it('names a missing file and a grid of the wrong layout, splits the rest, and exits 1', async () => {
    const good = await gridFile('good', 1024, 1024);
    const rnd = random(seedOf('three'));
    const three = join(work, 'three.png');
    const cells = gridLayout(1536, 1024, 1, 3, rnd, 30);
    writeFileSync(three, await composeGrid(1536, 1024, cells, await Promise.all(cells.map((c, i) => drawAvatar(lookFor('x'), c.width, c.height, i))), rnd));
    const out = join(work, 'mixed');
    const { code, stderr } = await avatars('split', join(work, 'missing.png'), three, good, '--out', out);
    expect(code).toBe(1);
    expect(stderr).toContain('missing.png: no such file');
    expect(stderr).toMatch(/three\.png: GridLayoutMismatch: .* is not a 2x2 grid/);
    expect(readdirSync(out)).toEqual(['good']);
  });
});

describe('avatars invoke', () => {
  it('replays the stage fixtures in order on one run, from the plan to the published avatars', async () => {
    const data = join(work, 'invoke');
    let published = '';
    for (const stage of ['plan-run', 'write-prompt', 'generate-base', 'generate-grid', 'split-grid', 'check-identity', 'publish']) {
      const { code, stdout, stderr } = await avatars('invoke', stage, '--event', join(eventsDir, `${stage}.json`), '--data', data);
      expect(code, `${stage}: ${stderr}`).toBe(0);
      published = stdout;
    }
    const result = JSON.parse(published);
    expect(result.images.map((i: { key: string }) => i.key)).toEqual([1, 2, 3, 4].map((n) => `avatars/ada-lovelace/runs/${result.runId}/img_${n}.png`));
  });

  it('has a fixture for every stage, and replays the batch\u2019s two in order', async () => {
    for (const stage of stageNames) expect(existsSync(join(eventsDir, stage === 'start-from-upload' ? 's3-persona-uploaded.json' : `${stage}.json`)), stage).toBe(true);
    const data = join(work, 'invoke-batch');
    const planned = await avatars('invoke', 'plan-batch', '--event', join(eventsDir, 'plan-batch.json'), '--put', `batches/example-batch/personas.jsonl=${join(eventsDir, 'team.jsonl')}`, '--data', data);
    expect(planned.code, planned.stderr).toBe(0);
    expect(JSON.parse(planned.stdout)).toMatchObject({ batchId: 'example-batch', toRun: 6 });
    const reported = await avatars('invoke', 'report-batch', '--event', join(eventsDir, 'report-batch.json'), '--data', data);
    expect(reported.code, reported.stderr).toBe(0);
    expect(JSON.parse(reported.stdout)).toMatchObject({ reportKey: 'batches/example-batch/report.json', counts: { total: 6, FAILED: 6 } });
  });

  it('reports the named error of a failing stage and exits 1', async () => {
    const { code, stderr } = await avatars('invoke', 'generate-base', '--event', join(eventsDir, 'generate-base.json'), '--data', join(work, 'invoke-fail'), '--fault', 'policy:always');
    expect(code).toBe(1);
    expect(stderr).toMatch(/✗ generate-base failed: ContentPolicyViolation: base image for persona ada-lovelace/);
  });

  it('names the stages it knows when given another', async () => {
    const { code, stderr } = await avatars('invoke', 'resize', '--event', join(eventsDir, 'plan-run.json'));
    expect(code).toBe(2);
    expect(stderr).toContain('unknown stage "resize": one of plan-run, write-prompt');
  });
});

describe('avatars --help', () => {
  it('explains every command', async () => {
    const commands = ['run', 'invoke', 'start', 'status', 'dev', 'split'];
    const [top, ...helps] = await Promise.all([avatars('--help'), ...commands.map((command) => avatars(command, '--help'))]);
    expect(top!.code).toBe(0);
    commands.forEach((command, i) => {
      expect(top!.stdout, command).toMatch(new RegExp(`^\\s+${command} `, 'm'));
      expect(helps[i]!.code, command).toBe(0);
      expect(helps[i]!.stdout, command).toContain(`Usage: avatars ${command}`);
    });
  });
});

describe('offline backend faults', () => {
  it('are listed alike by README and --help: every kind, the calls it hits, the targets', async () => {
    const readme = readFileSync(join(projectRoot, 'README.md'), 'utf8').replace(/\s+/g, ' ');
    const { stdout } = await avatars('run', '--help');
    expect(readme).toContain(`--fault ${FAULT_SYNTAX}`);
    expect(stdout).toContain(FAULT_SYNTAX);
    for (const [kind, { routes }] of Object.entries(FAULT_KINDS)) {
      expect(readme, kind).toContain(`\`${kind}\` (${routes.join(', ')}`);
      expect(stdout, kind).toContain(`${kind} (@${routes.join('|')})`);
    }
  });

  it('refuses an unknown fault in one line with the kinds to use, exit 2, no stack trace', async () => {
    const { code, stderr } = await avatars('run', join(eventsDir, 'persona.json'), '--fault', 'lag', '--data', join(work, 'data-fault'));
    expect(code).toBe(2);
    expect(stderr.trim().split('\n')).toEqual([expect.stringMatching(/^avatars: unknown fault "lag": use KIND.*KIND one of rate-limit, .*impostor, expire$/)]);
  });
});

