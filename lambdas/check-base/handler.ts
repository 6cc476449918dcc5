import { storeClient } from '../shared/s3.ts';
import { lambdaHandler } from '../shared/handler.ts';
import { faceFinder } from '../check-identity/faces.ts';
import { checkBase } from './core.ts';

export const handler = lambdaHandler('check-base', checkBase, [storeClient, faceFinder]);
