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
  for (const [key, spec] of Object.entries(SETTINGS)) {
    if (spec.scope !== 'stage' || !(key in settings)) continue;
    const value = settings[key as keyof typeof settings];
    if (value === undefined || key === 'flowiseApiKey') continue;
    const from = spec.env && process.env[spec.env] ? 'environment' : spec.context && context[spec.context] !== undefined ? 'cdk.json' : 'default';
    process.stdout.write(`${(spec.env ?? key).padEnd(22)} ${String(value).padEnd(28)} ${from}\n`);
  }
  for (const warning of checkImageSettings(settings).warnings) process.stdout.write(`⚠ ${warning}\n`);
  return 0;
}
