import { storeClient } from '../shared/s3.ts';
import { lambdaHandler } from '../shared/handler.ts';
import { publish } from './core.ts';
import { signingClient } from './signer.ts';

export const handler = lambdaHandler('publish', publish, [storeClient, signingClient]);
