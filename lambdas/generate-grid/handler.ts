import { lambdaHandler } from '../shared/stage.ts';
import { generateGrid } from './core.ts';

export const handler = lambdaHandler('generate-grid', generateGrid);
