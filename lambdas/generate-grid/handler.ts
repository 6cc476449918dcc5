import { openAiClients } from '../shared/openai.ts';
import { storeClient } from '../shared/s3.ts';
import { lambdaHandler } from '../shared/handler.ts';
import { generateGrid } from './core.ts';

export const handler = lambdaHandler('generate-grid', generateGrid, [storeClient, openAiClients]);
