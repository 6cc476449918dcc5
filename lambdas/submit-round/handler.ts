import { roundClients } from '../shared/round-clients.ts';
import { lambdaHandler } from '../shared/handler.ts';
import { submitRound } from './core.ts';

export const handler = lambdaHandler('submit-round', submitRound, roundClients);
