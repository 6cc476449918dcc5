import { storeClient } from '../shared/s3.ts';
import { lambdaHandler } from '../shared/handler.ts';
import { splitGrid } from './core.ts';

export const handler = lambdaHandler('split-grid', splitGrid, [storeClient]);
