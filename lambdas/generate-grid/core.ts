import { editImage, type ImageUsage } from '../shared/images.ts';
import { runKeys } from '../shared/keys.ts';
import type { GenerationMode } from '../shared/persona.ts';
import type { StageDeps } from '../shared/stage.ts';
import type { GridPlan } from '../plan-run/core.ts';

export interface GenerateGridEvent {
  personaId: string;
  runId: string;
  mode: GenerationMode;
  grid: GridPlan;
  promptKey: string;
  baseKey: string;
}

export interface GridResult {
  gridIndex: number;
  mode: GenerationMode;
  count: number;
  /** Grid mode: the 2x2 grid to split. */
  gridKey?: string;
  /** Separate mode: the images themselves, already one per file. */
  imageKeys?: string[];
  model: string;
  usage?: ImageUsage;
  ms: number;
}

export const GRID_ROWS = 2;
export const GRID_COLS = 2;

export function gridPrompt(scenes: string): string {
  return [
    `One image divided into a ${GRID_ROWS}x${GRID_COLS} grid of four equal panels separated by thin white gutters.`,
    'Every panel shows the same person as the reference photo: same face, hair and build.',
    'Each panel is a different photo:',
    scenes,
  ].join(' ');
}

export function separatePrompt(scenes: string): string {
  return `A photo of the same person as the reference photo (same face, hair and build). ${scenes}`;
}

/** Image-to-image from the base selfie: a 2x2 grid, or `count` separate images. */
export async function generateGrid(event: GenerateGridEvent, deps: StageDeps): Promise<GridResult> {
  const started = Date.now();
  const keys = runKeys(event.personaId, event.runId);
  const [base, scenes] = await Promise.all([deps.store.getBytes(event.baseKey), deps.store.getText(event.promptKey)]);
  const what = `grid ${event.grid.index} for persona ${event.personaId}`;
  const common = { gridIndex: event.grid.index, mode: event.mode, count: event.grid.count };
  if (event.mode === 'separate') {
    const result = await editImage(deps, what, base, separatePrompt(scenes), event.grid.count);
    const imageKeys = result.images.map((_, i) => keys.tile(event.grid.index, i));
    await Promise.all(result.images.map((image, i) => deps.store.put(imageKeys[i]!, image, 'image/png')));
    return { ...common, imageKeys, model: result.model, ...(result.usage ? { usage: result.usage } : {}), ms: Date.now() - started };
  }
  const result = await editImage(deps, what, base, gridPrompt(scenes), 1);
  const gridKey = keys.grid(event.grid.index);
  await deps.store.put(gridKey, result.images[0]!, 'image/png');
  return { ...common, gridKey, model: result.model, ...(result.usage ? { usage: result.usage } : {}), ms: Date.now() - started };
}
