import { openAiClients } from '../shared/openai.ts';
import { storeClient } from '../shared/s3.ts';
import { lambdaHandler } from '../shared/handler.ts';
import { writePrompt } from './core.ts';

export const handler = lambdaHandler('write-prompt', writePrompt, [storeClient, openAiClients]);
