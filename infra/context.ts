import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const projectRoot = join(dirname(fileURLToPath(import.meta.url)), '..');

/** The stack, and the state machine named after it (the console lists it as PersonaAvatars). */
export const STACK_NAME = 'PersonaAvatars';
/** The batch state machine: many personas, each a child execution of the one above. */
export const BATCH_STATE_MACHINE_NAME = `${STACK_NAME}-Batch`;

/**
 * The context in cdk.json. `cdk synth` hands it to the app itself; every other path (tests, the
 * local runner, the bench) reads it here, so all of them synthesize the same template.
 */
export function projectContext(root = projectRoot): Record<string, unknown> {
  const cdkJson = JSON.parse(readFileSync(join(root, 'cdk.json'), 'utf8')) as { context?: Record<string, unknown> };
  return cdkJson.context ?? {};
}
