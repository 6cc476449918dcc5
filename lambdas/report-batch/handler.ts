import { storeClient } from '../shared/s3.ts';
import { lambdaHandler } from '../shared/handler.ts';
import { reportBatch } from './core.ts';

export const handler = lambdaHandler('report-batch', reportBatch, [storeClient]);
