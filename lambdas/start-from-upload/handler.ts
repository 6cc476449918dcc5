import { lambdaHandler } from '../shared/stage.ts';
import { startFromUpload } from './core.ts';

export const handler = lambdaHandler('start-from-upload', startFromUpload);
