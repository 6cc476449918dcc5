import { lambdaHandler } from '../shared/stage.ts';
import { generateBase } from './core.ts';

export const handler = lambdaHandler('generate-base', generateBase);
