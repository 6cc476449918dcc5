import { gridCounts, parseRunRequest, type GenerationMode, type Persona } from '../shared/persona.ts';
import type { BatchBudget } from '../shared/governor.ts';
import type { StageDeps } from '../shared/stage.ts';

export interface PlanRunEvent {
  /** The execution input: `{ persona, images?, mode? }`. */
  input: unknown;
  /** The execution name; becomes the run id in every key. */
  runId: string;
}

export interface GridPlan {
  index: number;
  /** How many images this grid contributes (the last grid may publish fewer than 4). */
  count: number;
}

export interface RunPlan {
  personaId: string;
  runId: string;
  persona: Persona;
  images: number;
  mode: GenerationMode;
  grids: GridPlan[];
  /** The batch budget its image calls are paid from, if a batch runs it. */
  budget: BatchBudget | null;
  /** `batch`: its images were drawn by OpenAI's Batch API before it started. */
  imageApi: 'sync' | 'batch';
  /** The batch that runs it, if one does: every stage's log lines name it. */
  batchId: string | null;
}

/** Execution names may hold characters that are awkward in keys; keep a safe, recognisable id. */
export function safeRunId(name: string): string {
  const cleaned = name.replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 80);
  return cleaned || 'run';
}

/** Validates the execution input and splits the request into grids of four. */
export async function planRun(event: PlanRunEvent, deps: StageDeps): Promise<RunPlan> {
  const request = parseRunRequest(event.input);
  const images = request.images ?? deps.settings.defaultImages;
  const grids: GridPlan[] = gridCounts(images).map((count, index) => ({ index, count }));
  return {
    personaId: request.persona.id,
    runId: safeRunId(event.runId),
    persona: request.persona,
    images,
    mode: request.mode,
    grids,
    budget: request.budget ?? null,
    imageApi: request.imageApi ?? 'sync',
    batchId: request.batchId ?? null,
  };
}
