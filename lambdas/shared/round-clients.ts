import { governorClient } from './governor.ts';
import { openAiClients } from './openai.ts';
import { storeClient } from './s3.ts';

/** The batch round stages' clients: the bucket, OpenAI (files, batches, moderation, prompts), the budget. */
export const roundClients = [storeClient, openAiClients, governorClient];
