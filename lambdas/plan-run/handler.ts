import { lambdaHandler } from '../shared/stage.ts';
import { planRun } from './core.ts';

export const handler = lambdaHandler('plan-run', planRun);
