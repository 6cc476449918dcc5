import { storeClient } from '../shared/s3.ts';
import { lambdaHandler } from '../shared/handler.ts';
import { checkIdentity } from './core.ts';
import { faceFinder } from './faces.ts';

export const handler = lambdaHandler('check-identity', checkIdentity, [storeClient, faceFinder]);
