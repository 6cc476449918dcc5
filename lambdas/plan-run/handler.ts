import { lambdaHandler } from '../shared/handler.ts';
import { planRun } from './core.ts';

export const handler = lambdaHandler('plan-run', planRun);
