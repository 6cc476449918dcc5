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

  it('says it found no grid in a single avatar instead of cutting it, and exits 1', async () => {
    const single = join(work, 'single.png');
    writeFileSync(single, await drawAvatar(lookFor('single'), 1024, 1024, 0));
    const { code, stderr } = await avatars('split', single, '--out', join(work, 'single-tiles'));
    expect(code).toBe(1);
    expect(stderr).toMatch(/single\.png: GridLayoutMismatch: .*found no grid, no gutters between panels/);
    expect(existsSync(join(work, 'single-tiles', 'single'))).toBe(false);
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
    // Batch mode's rounds, each its own process: the offline Batch API keeps its batches in --data, as OpenAI keeps them.
    const submitted = await avatars('invoke', 'submit-round', '--event', join(eventsDir, 'submit-round.json'), '--data', data);
    expect(submitted.code, submitted.stderr).toBe(0);
    expect(JSON.parse(submitted.stdout)).toMatchObject({ n: 1, batchIds: JSON.parse(readFileSync(join(eventsDir, 'collect-round.json'), 'utf8')).round.batchIds, status: 'submitted' });
    const collected = await avatars('invoke', 'collect-round', '--event', join(eventsDir, 'collect-round.json'), '--data', data);
    expect(collected.code, collected.stderr).toBe(0);
    expect(JSON.parse(collected.stdout)).toMatchObject({ n: 1, status: 'collected', next: 'submit' });
  });

  it('names the object a stage could not read', async () => {
    const { code, stderr } = await avatars('invoke', 'report-batch', '--event', join(eventsDir, 'report-batch.json'), '--data', join(work, 'invoke-nothing'));
    expect(code).toBe(1);
    expect(stderr).toContain('s3://avatars/batches/example-batch/');
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
    expect(stderr.trim().split('\n')).toEqual([expect.stringMatching(/^avatars: unknown fault "lag": use KIND.*KIND one of rate-limit, .*impostor, lookalike, wrong-gender, expire$/)]);
  });
});


describe('a command used as README shows it', () => {
  it('exits 2 on an option typo, saying what in one line with a hint, not the whole help', async () => {
    const { code, stderr } = await avatars('run', join(eventsDir, 'persona.json'), '--imgs', '8');
    expect(code).toBe(2);
    expect(stderr.trim().split('\n')).toEqual(["avatars: unknown option '--imgs'", '(Did you mean --images?)', '(avatars run --help shows its usage)']);
  });

  it('leaves only the new avatars in an --out folder an earlier run with more images used, and what else is there', async () => {
    const out = join(work, 'again');
    const data = join(work, 'data-again');
    expect((await avatars('run', join(eventsDir, 'persona.json'), '--images', '8', '--quiet', '--keep-grids', '--out', out, '--data', data)).code).toBe(0);
    writeFileSync(join(out, 'notes.txt'), 'mine');
    const second = await avatars('run', join(eventsDir, 'persona.json'), '--images', '4', '--quiet', '--out', out, '--data', data);
    expect(second.code, second.stderr).toBe(0);
    expect(readdirSync(out).sort()).toEqual(['contact-sheet.png', 'img_1.png', 'img_2.png', 'img_3.png', 'img_4.png', 'index.html', 'manifest.json', 'notes.txt']);
  });

  it('prints each fault as it fires: two 429s asked of the edits, two shown', async () => {
    const { code, stderr } = await avatars('run', join(eventsDir, 'persona.json'), '--fault', 'rate-limit:2@edits', '--out', join(work, 'faulted'), '--data', join(work, 'data-faulted'));
    expect(code, stderr).toBe(0);
    expect(stderr.split('\n').filter((l) => l.startsWith('⚡'))).toEqual(['⚡ fault rate-limit@edits (1 of 2): 429 with retry-after: 1', '⚡ fault rate-limit@edits (2 of 2): 429 with retry-after: 1']);
  });

  it('refuses a fault sent where it can do nothing, exit 2', async () => {
    const { code, stderr } = await avatars('run', join(eventsDir, 'persona.json'), '--fault', 'layout@generations', '--data', join(work, 'data-nofault'));
    expect(code).toBe(2);
    expect(stderr.trim()).toBe('avatars: fault "layout@generations": layout can hit edits, not generations');
  });

  it('sends a .json persona given to avatars batch to avatars run, exit 2', async () => {
    const { code, stderr } = await avatars('batch', join(eventsDir, 'persona.json'), '--data', join(work, 'data-json'));
    expect(code).toBe(2);
    expect(stderr.trim()).toBe(`avatars: ${join(eventsDir, 'persona.json')} is a .json file, one persona: avatars run ${join(eventsDir, 'persona.json')} runs it; avatars batch takes a .jsonl file, one persona per line`);
  });

  it('sends a .jsonl file given to avatars run to avatars batch, exit 2', async () => {
    const { code, stderr } = await avatars('run', join(eventsDir, 'team.jsonl'), '--data', join(work, 'data-jsonl'));
    expect(code).toBe(2);
    expect(stderr).toContain(`avatars batch ${join(eventsDir, 'team.jsonl')} runs them all as a batch`);
  });

  it('names a persona\u2019s wrong field once', async () => {
    const file = join(work, 'no-gender.json');
    const { gender: _gender, ...persona } = JSON.parse(readFileSync(join(eventsDir, 'persona.json'), 'utf8'));
    writeFileSync(file, JSON.stringify(persona));
    const { code, stderr } = await avatars('run', file, '--data', join(work, 'data-gender'));
    expect(code).toBe(1);
    expect(stderr.trim()).toBe(`✗ ${file}: InvalidPersona: persona.gender: required`);
  });

  it('saves each batch run\u2019s report in a folder of its own, whatever its --data', async () => {
    writeFileSync(join(work, 'duo.jsonl'), `${JSON.stringify({ persona: { ...JSON.parse(readFileSync(join(eventsDir, 'persona.json'), 'utf8')), id: 'duo-1' } })}\n`);
    const runs = [];
    for (const data of ['data-duo-a', 'data-duo-b']) runs.push(await avatars('batch', 'duo.jsonl', '--json', '--data', data));
    const folders = runs.map((r) => (JSON.parse(r.stdout) as { outDir: string }).outDir);
    expect(new Set(folders).size).toBe(2);
    for (const folder of folders) expect(readdirSync(folder)).toEqual(expect.arrayContaining(['report.json', 'index.html']));
  });

  it('marks a flagged avatar in the gallery itself, its provenance one line with details on demand', async () => {
    const out = join(work, 'flagged');
    const { code, stderr } = await avatarsIn(work, ['run', join(eventsDir, 'persona.json'), '--fault', 'impostor', '--quiet', '--out', out, '--data', join(work, 'data-flagged')], { IDENTITY_POLICY: 'flag' });
    expect(code, stderr).toBe(0);
    const html = readFileSync(join(out, 'index.html'), 'utf8');
    expect(html.match(/<figure class="flagged">/g)).toHaveLength(1);
    expect(html).toContain('⚑ flagged: another person?');
    expect(html.match(/<details><summary>AI-generated, C2PA signed<\/summary>/g)).toHaveLength(4);
  });
});
