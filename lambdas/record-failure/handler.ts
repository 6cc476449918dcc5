import { storeClient } from '../shared/s3.ts';
import { lambdaHandler } from '../shared/handler.ts';
import { recordFailure } from './core.ts';

export const handler = lambdaHandler('record-failure', recordFailure, [storeClient]);
