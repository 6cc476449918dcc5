import { lambdaHandler } from '../shared/stage.ts';
import { writePrompt } from './core.ts';

export const handler = lambdaHandler('write-prompt', writePrompt);
