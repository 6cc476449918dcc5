import { lambdaHandler } from '../shared/stage.ts';
import { splitGrid } from './core.ts';

export const handler = lambdaHandler('split-grid', splitGrid);
