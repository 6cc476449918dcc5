import { openAiClients } from '../shared/openai.ts';
import { storeClient } from '../shared/s3.ts';
import { lambdaHandler } from '../shared/handler.ts';
import { generateBase } from './core.ts';

export const handler = lambdaHandler('generate-base', generateBase, [storeClient, openAiClients]);
