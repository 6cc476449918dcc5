import { storeClient } from '../shared/s3.ts';
import { sfnClient } from '../shared/sfn.ts';
import { lambdaHandler } from '../shared/handler.ts';
import { startFromUpload } from './core.ts';

export const handler = lambdaHandler('start-from-upload', startFromUpload, [storeClient, sfnClient]);
