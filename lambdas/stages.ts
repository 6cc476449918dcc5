import { checkBase } from './check-base/core.ts';
import { checkIdentity } from './check-identity/core.ts';
import { collectRound } from './collect-round/core.ts';
import { generateBase } from './generate-base/core.ts';
import { generateGrid } from './generate-grid/core.ts';
import { planBatch } from './plan-batch/core.ts';
import { planRun } from './plan-run/core.ts';
import { publish } from './publish/core.ts';
import { recordFailure } from './record-failure/core.ts';
import { reportBatch } from './report-batch/core.ts';
import { splitGrid } from './split-grid/core.ts';
import { startFromUpload } from './start-from-upload/core.ts';
import { submitRound } from './submit-round/core.ts';
import { writePrompt } from './write-prompt/core.ts';

/**
 * Every stage's core by name. The name is the folder of its handler, the Lambda's STAGE
 * variable, and what the local runner and `avatars invoke` call.
 */
export const stages = {
  'plan-run': planRun,
  'write-prompt': writePrompt,
  'generate-base': generateBase,
  'check-base': checkBase,
  'generate-grid': generateGrid,
  'split-grid': splitGrid,
  'check-identity': checkIdentity,
  publish,
  'record-failure': recordFailure,
  'start-from-upload': startFromUpload,
  'plan-batch': planBatch,
  'report-batch': reportBatch,
  'submit-round': submitRound,
  'collect-round': collectRound,
} satisfies Record<string, (event: never, deps: never) => Promise<unknown>>;

export type StageName = keyof typeof stages;

export const stageNames = Object.keys(stages) as StageName[];
