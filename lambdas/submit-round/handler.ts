import { roundClients } from '../shared/round-clients.ts';
import { lambdaHandler } from '../shared/stage.ts';
import { submitRound } from './core.ts';

export const handler = lambdaHandler('submit-round', submitRound, roundClients);
