import { roundClients } from '../shared/round-clients.ts';
import { lambdaHandler } from '../shared/handler.ts';
import { collectRound } from './core.ts';

export const handler = lambdaHandler('collect-round', collectRound, roundClients);
