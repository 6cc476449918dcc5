import { basename } from 'node:path';
import type { BatchBudget } from '../shared/governor.ts';
import type { TurnLater } from '../shared/image-provider.ts';
import type { TokenUsage } from '../shared/models.ts';
import { runKeys } from '../shared/keys.ts';
import { drawnInBatch, type Drawn } from '../shared/rounds.ts';
import type { Persona } from '../shared/persona.ts';
import { basePrompt } from '../shared/prompts.ts';
import type { StageDeps } from '../shared/stage.ts';

export interface GenerateBaseEvent {
  personaId: string;
  runId: string;
  persona: Persona;
  /** A prompt to use instead of the one built from the bio: the safer rewrite after a refusal. */
  promptKey?: string;
  /** The batch budget that pays for it, if any. */
  budget?: BatchBudget | null;
  /** `batch`: OpenAI's Batch API drew it already (a batch in batch mode); no image endpoint is called. */
  imageApi?: 'sync' | 'batch' | null;
}

/** What one image call made, as every image stage reports it for the manifest. */
export interface Generation {
  model: string;
  usage?: TokenUsage;
  estimatedCostUsd: number | null;
  warnings: string[];
  ms: number;
  /** Drawn through OpenAI's Batch API, at batch price, by this OpenAI batch. */
  api?: 'batch';
  openAiBatchId?: string;
}

/** A call's Generation when OpenAI's Batch API drew it. */
export function batchGeneration(drawn: Drawn, started: number): Generation {
  return { model: drawn.model, ...(drawn.usage ? { usage: drawn.usage } : {}), estimatedCostUsd: drawn.estimatedCostUsd, warnings: [], ms: Date.now() - started, api: 'batch', openAiBatchId: drawn.batchId };
}

export interface BaseResult extends Generation {
  baseKey: string;
}

export async function generateBase(event: GenerateBaseEvent, deps: StageDeps<'store' | 'images' | 'imageTimeoutMs'>): Promise<BaseResult | TurnLater> {
  const started = Date.now();
  const keys = runKeys(event.personaId, event.runId);
  const what = `base image for persona ${event.personaId}`;
  if (event.imageApi === 'batch') {
    const drawn = await drawnInBatch(deps.store, event.personaId, event.runId, 'base', what);
    return { baseKey: drawn.keys[0]!, ...batchGeneration(drawn, started) };
  }
  // Its turn first, before anything is read, checked or reserved: a stage that comes back for it does that once.
  const callKey = `${event.runId}/base${event.promptKey ? `/${basename(event.promptKey)}` : ''}`;
  const later = await deps.images.turn({ what, callKey, n: 1 });
  if (later) return later;
  let prompt: string;
  if (event.promptKey) {
    prompt = await deps.store.getText(event.promptKey);
  } else {
    prompt = basePrompt(event.persona);
    // Kept so a refusal can be rewritten from what was actually sent.
    await deps.store.put(keys.basePrompt, prompt, 'text/plain; charset=utf-8');
  }
  if (deps.settings.moderationCheck === 'on') await deps.images.checkPrompt({ what, prompt, timeoutMs: deps.imageTimeoutMs });
  // PNG: the base is the reference of every edit, so it stays lossless.
  const result = await deps.images.generate({ what, prompt, n: 1, format: 'png', timeoutMs: deps.imageTimeoutMs, budget: event.budget ?? null, callKey });
  await deps.store.put(keys.base, result.images[0]!, 'image/png');
  const { model, usage, estimatedCostUsd, warnings } = result;
  return { baseKey: keys.base, model, ...(usage ? { usage } : {}), estimatedCostUsd, warnings, ms: Date.now() - started };
}
