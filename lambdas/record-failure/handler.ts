import { lambdaHandler } from '../shared/stage.ts';
import { recordFailure } from './core.ts';

export const handler = lambdaHandler('record-failure', recordFailure);
