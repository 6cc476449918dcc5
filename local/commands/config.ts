import { projectContext } from '../../infra/context.ts';
import { checkImageSettings } from '../../lambdas/shared/models.ts';
import { SETTINGS, settingsFromEnv, settingsTable } from '../../lambdas/shared/settings.ts';
import { localVariables } from '../environment.ts';

/** The settings a local run would use and where each came from; or README's table. */
export async function configCommand(flags: { markdown?: boolean }): Promise<number> {
  if (flags.markdown) {
    process.stdout.write(`${settingsTable()}\n`);
    return 0;
  }
  const settings = settingsFromEnv(localVariables());
  const context = projectContext();
  const rows: [string, string, string][] = [];
  for (const [key, spec] of Object.entries(SETTINGS)) {
    if (spec.scope !== 'stage' || !(key in settings)) continue;
    const value = settings[key as keyof typeof settings];
    if (value === undefined || key === 'flowiseApiKey') continue;
    const from = spec.env && process.env[spec.env] ? 'environment' : spec.context && context[spec.context] !== undefined ? 'cdk.json' : 'default';
    rows.push([spec.env ?? key, String(value), from]);
  }
  // Columns as wide as their widest entry, so every value lines up.
  const widths = [0, 1].map((column) => Math.max(...rows.map((row) => row[column]!.length)));
  for (const [name, value, from] of rows) process.stdout.write(`${name.padEnd(widths[0]!)}  ${value.padEnd(widths[1]!)}  ${from}\n`);
  for (const warning of checkImageSettings(settings).warnings) process.stdout.write(`⚠ ${warning}\n`);
  return 0;
}
