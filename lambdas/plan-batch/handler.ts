import { storeClient } from '../shared/s3.ts';
import { sfnClient } from '../shared/sfn.ts';
import { lambdaHandler } from '../shared/handler.ts';
import { planBatch } from './core.ts';

export const handler = lambdaHandler('plan-batch', planBatch, [storeClient, sfnClient]);
