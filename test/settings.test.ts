import { cpSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { projectRoot } from '../infra/context.ts';
import { settingsFromEnv, settingsTable } from '../lambdas/shared/settings.ts';
import { avatars, eventsDir, tempDir } from './support.ts';

const work = tempDir('settings');

describe('one configuration for every path', () => {
  it('shows in README the configuration table the settings schema generates', () => {
    const readme = readFileSync(join(projectRoot, 'README.md'), 'utf8');
    const between = /<!-- settings:begin -->\n([\s\S]*?)\n<!-- settings:end -->/.exec(readme)?.[1];
    expect(between).toBe(settingsTable());
  });

  it('names the variable and the value when a setting is malformed', () => {
    expect(() => settingsFromEnv({ DEFAULT_IMAGES: 'many' })).toThrow(/^DEFAULT_IMAGES: .*got "many"$/);
    expect(() => settingsFromEnv({ TILE_FORMAT: 'gif' })).toThrow(/^TILE_FORMAT: /);
    expect(() => settingsFromEnv({ FLOWISE_URL: 'http://127.0.0.1:3000' })).toThrow(/FLOWISE_URL and FLOWISE_CHATFLOW_ID go together/);
  });

  it('makes as many avatars locally as the images context in cdk.json says', async () => {
    // A copy of the project whose cdk.json asks for 8 images, run as a user would run it.
    const copy = join(work, 'project');
    for (const dir of ['infra', 'lambdas', 'local', 'events']) cpSync(join(projectRoot, dir), join(copy, dir), { recursive: true });
    for (const file of ['package.json', 'package-lock.json', 'tsconfig.json']) cpSync(join(projectRoot, file), join(copy, file));
    symlinkSync(join(projectRoot, 'node_modules'), join(copy, 'node_modules'));
    const cdkJson = JSON.parse(readFileSync(join(projectRoot, 'cdk.json'), 'utf8'));
    writeFileSync(join(copy, 'cdk.json'), JSON.stringify({ ...cdkJson, context: { ...cdkJson.context, images: 8 } }));
    const { code, stdout, stderr } = await avatars(copy, ['run', join(eventsDir, 'persona.json'), '--json', '--quiet', '--out', join(work, 'out')], {}, join(copy, 'local', 'cli.mjs'));
    expect(code, stderr).toBe(0);
    expect(JSON.parse(stdout).images).toHaveLength(8);
  });
});
