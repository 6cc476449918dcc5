import { basename } from 'node:path';
import type { BatchBudget } from '../shared/governor.ts';
import type { TurnLater } from '../shared/image-provider.ts';
import { contentTypes, runKeys } from '../shared/keys.ts';
import type { GenerationMode } from '../shared/persona.ts';
import { gridPrompt, separatePrompt } from '../shared/prompts.ts';
import type { StageDeps } from '../shared/stage.ts';
import { batchGeneration, type Generation } from '../generate-base/core.ts';
import { drawnInBatch, gridCallId } from '../shared/rounds.ts';
import type { GridPlan } from '../plan-run/core.ts';

export interface GenerateGridEvent {
  personaId: string;
  runId: string;
  mode: GenerationMode;
  grid: GridPlan;
  promptKey: string;
  baseKey: string;
  /** The batch budget that pays for it, if any. */
  budget?: BatchBudget | null;
  /** `batch`: OpenAI's Batch API drew it already; no image endpoint is called. */
  imageApi?: 'sync' | 'batch' | null;
}

export interface GridResult extends Generation {
  gridIndex: number;
  mode: GenerationMode;
  count: number;
  /** Grid mode: the 2x2 grid to split. */
  gridKey?: string;
  /** Separate mode: the images themselves, already one per file. */
  imageKeys?: string[];
}

/** Image-to-image from the base selfie: a 2x2 grid, or `count` separate images. */
export async function generateGrid(event: GenerateGridEvent, deps: StageDeps<'store' | 'images' | 'imageTimeoutMs'>): Promise<GridResult | TurnLater> {
  const started = Date.now();
  const keys = runKeys(event.personaId, event.runId);
  const separate = event.mode === 'separate';
  const grid = { gridIndex: event.grid.index, mode: event.mode, count: event.grid.count };
  if (event.imageApi === 'batch') {
    const drawn = await drawnInBatch(deps.store, event.personaId, event.runId, gridCallId(event.grid.index), `grid ${event.grid.index} for persona ${event.personaId}`);
    return { ...grid, ...batchGeneration(drawn, started), ...(separate ? { imageKeys: drawn.keys } : { gridKey: drawn.keys[0]! }) };
  }
  const what = `grid ${event.grid.index} for persona ${event.personaId}`;
  const n = separate ? event.grid.count : 1;
  // Its turn first, before anything is read, checked or reserved: a stage that comes back for it does that once.
  const callKey = `${event.runId}/grid-${event.grid.index}/${basename(event.promptKey)}`;
  const later = await deps.images.turn({ what, callKey, n });
  if (later) return later;
  const [reference, scenes] = await Promise.all([deps.store.getBytes(event.baseKey), deps.store.getText(event.promptKey)]);
  const prompt = separate ? separatePrompt(scenes) : gridPrompt(scenes);
  if (deps.settings.moderationCheck === 'on') await deps.images.checkPrompt({ what, prompt, timeoutMs: deps.imageTimeoutMs });
  const result = await deps.images.edit({
    what,
    reference,
    prompt,
    n,
    callKey,
    // A grid is cut up, so it comes lossless; separate images are avatars as they are.
    format: separate ? deps.settings.tileFormat : 'png',
    timeoutMs: deps.imageTimeoutMs,
    budget: event.budget ?? null,
  });
  const { model, usage, estimatedCostUsd, warnings } = result;
  const common = { ...grid, model, ...(usage ? { usage } : {}), estimatedCostUsd, warnings };
  if (separate) {
    const imageKeys = result.images.map((_, i) => keys.tile(event.grid.index, i, result.format));
    await Promise.all(result.images.map((image, i) => deps.store.put(imageKeys[i]!, image, contentTypes[result.format])));
    return { ...common, imageKeys, ms: Date.now() - started };
  }
  const gridKey = keys.grid(event.grid.index);
  await deps.store.put(gridKey, result.images[0]!, 'image/png');
  return { ...common, gridKey, ms: Date.now() - started };
}
