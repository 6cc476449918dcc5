/**
 * Batch mode's rounds: what every persona's image calls came to across OpenAI batches. The base of
 * every persona is drawn in one round, then the grids (edits of each base), then what must be drawn
 * again (failed lines, unusable answers, refused prompts rewritten safer), each call at most
 * MAX_TRIES times. The state lives in the batch's folder (one object, written by the round stages
 * only); what each run got is also written beside the run (`openai-batch.json`), where its
 * persona's workflow takes its images from instead of calling the image API.
 */
import type { BatchItem, BatchPlan, MapRunResults } from './batch.ts';
import type { RoundFile } from './openai-batch.ts';
import { NotDrawnInBatch } from './errors.ts';
import { batchKeys, runKeys, type TileFormat } from './keys.ts';
import type { Reservation } from './governor.ts';
import type { TokenUsage } from './models.ts';
import { gridCounts, type GenerationMode } from './persona.ts';
import type { ObjectStore } from './store.ts';

/** A call is sent once, then drawn again at most twice. */
export const MAX_TRIES = 3;
/** Bases, grids, and what is drawn again: a bound, whatever happens. */
export const MAX_ROUNDS = 6;
/** Rounds for grids the identity check refused, after the personas ran. */
export const MAX_REDRAW_ROUNDS = 2;
/** Rounds OpenAI's queue limit turned away (nothing drawn, nothing paid): they do not count above, up to this many. */
export const MAX_QUEUE_LIMITED_ROUNDS = 30;

/** Rounds cut short by SubmitRound's time (more to prepare than one invocation can): they do not count either, up to this many. */
export const MAX_PARTIAL_ROUNDS = 100;

/** Rounds that count against MAX_ROUNDS: those neither the queue limit turned away nor SubmitRound's time cut short. */
export const roundsSpent = (state: RoundsState) =>
  state.rounds.length - Math.min(state.queueLimitedRounds ?? 0, MAX_QUEUE_LIMITED_ROUNDS) - Math.min(state.partialRounds ?? 0, MAX_PARTIAL_ROUNDS);

/** What an image call drew, where it is kept, and what it cost at batch price. */
export interface Drawn {
  keys: string[];
  format: TileFormat;
  model: string;
  usage?: TokenUsage;
  estimatedCostUsd: number | null;
  /** The OpenAI batch that drew it. */
  batchId: string;
}

export interface Failure {
  error: string;
  cause: string;
}

export interface CallState {
  /** `base`, or `grid-{index}`. */
  id: string;
  /** Images it draws: 1, or a separate-mode grid's count. */
  count: number;
  tries: number;
  /** Its prompt was refused: it is drawn from a safer rewrite. */
  safer?: boolean;
  /** A base drawn again after check-base refused it: drawn from this prompt, away from what it missed. */
  prompt?: string;
  /** Sent in the current round, not answered yet; `batchIds`: the OpenAI batches its file went to. */
  pending?: { customId: string; reservation: Reservation; model: string; batchIds?: string[] };
  drawn?: Drawn;
  lastError?: Failure;
}

export interface PersonaDraws {
  line: number;
  personaId: string;
  runId: string;
  mode: GenerationMode;
  calls: CallState[];
  /** Set when it cannot be drawn in this batch: its workflow fails with this, nothing else is paid. */
  failed?: Failure;
}

export interface RoundsState {
  batchId: string;
  rounds: { n: number; batchIds: string[] }[];
  /** Rounds for refused grids so far. */
  redraws: number;
  /** The results of the Maps before the last (a redraw runs its personas again): the report reads them all. */
  maps: string[];
  personas: PersonaDraws[];
  /** Rounds in which OpenAI's queue limit failed a batch, and the most lines a batch then holds. */
  queueLimitedRounds?: number;
  /** Rounds SubmitRound sent before all that was ready was prepared: the rest goes in the next. */
  partialRounds?: number;
  maxLinesPerBatch?: number;
  /** What the batches' answers cost, at batch price, and what the same would cost synchronously. */
  costUsd: number;
  syncCostUsd: number;
  /**
   * A round prepared and not yet all submitted: its lines reserved, its files in the bucket, the
   * batches made of each so far. A SubmitRound that died (a timeout) is run again from here.
   */
  submitting?: {
    n: number;
    /** Epoch seconds: batches made before it are not this round's. */
    startedAt: number;
    files: RoundFile[];
    /** Personas that had failed before the round, and a redraw round's plan. */
    failedBefore: number[];
    plan?: BatchPlan;
  };
}

/** What a run's workflow reads instead of calling the image API. */
export interface DrawnRecord {
  calls: Record<string, Drawn>;
  failures: Record<string, Failure>;
}

/** What the round stages are given: the plan, the round so far, and after the personas ran, their Map's results. */
export interface RoundEvent {
  plan: BatchPlan;
  /** The round so far: absent before the first. */
  round?: RoundStatus;
  /** Set after the personas ran: what their Map wrote. Their refused grids are drawn again. */
  map?: Partial<MapRunResults>;
}

/** What the round stages return: the batch state machine's next step is read from it. */
export interface RoundStatus {
  n: number;
  batchIds: string[];
  /** submitted: wait, then collect; pending: wait again; collected: `next` says; nothing: run the personas. */
  status: 'submitted' | 'pending' | 'collected' | 'nothing';
  waitSeconds: number;
  next?: 'submit' | 'run';
  /** A redraw round's plan: the personas that run again, under their next attempts. */
  plan?: BatchPlan;
}

const GRID_CALL = 'grid-';
export const gridCallId = (index: number) => `${GRID_CALL}${index}`;

/** Where a call's images are kept in a run: the base, a grid, or a separate-mode grid's images. */
export function drawnKeys(persona: PersonaDraws, callId: string, images: number, format: TileFormat): string[] {
  const keys = runKeys(persona.personaId, persona.runId);
  if (callId === 'base') return [keys.base];
  const index = Number(callId.slice(GRID_CALL.length));
  return persona.mode === 'separate' ? Array.from({ length: images }, (_, i) => keys.tile(index, i, format)) : [keys.grid(index)];
}

/** A persona's calls from its request: the base, then one per grid of four (or per separate image set). */
export function personaDraws(item: BatchItem, defaultImages: number): PersonaDraws {
  const images = item.input.images ?? defaultImages;
  const calls: CallState[] = [
    { id: 'base', count: 1, tries: 0 },
    ...gridCounts(images).map((count, index) => ({ id: gridCallId(index), count: item.input.mode === 'separate' ? count : 1, tries: 0 })),
  ];
  return { line: item.line, personaId: item.personaId, runId: item.name, mode: item.input.mode, calls };
}

/** Calls to send in the next round: a base not drawn yet, or a grid whose base is drawn. */
export function readyCalls(state: RoundsState): { persona: PersonaDraws; call: CallState }[] {
  const ready: { persona: PersonaDraws; call: CallState }[] = [];
  for (const persona of state.personas) {
    if (persona.failed) continue;
    const baseDrawn = !!persona.calls[0]!.drawn;
    for (const call of persona.calls) {
      if (call.drawn || call.pending || call.tries >= MAX_TRIES) continue;
      if (call.id !== 'base' && !baseDrawn) continue;
      ready.push({ persona, call });
    }
  }
  return ready;
}

export const loadRounds = (store: ObjectStore, batchId: string) => store.getJsonIfExists<RoundsState>(batchKeys(batchId).rounds);
export const saveRounds = (store: ObjectStore, state: RoundsState) => store.putJson(batchKeys(state.batchId).rounds, state);

/** The run's record of what was drawn for it, for its workflow's image stages. */
export function drawnRecordOf(persona: PersonaDraws): DrawnRecord {
  const record: DrawnRecord = { calls: {}, failures: {} };
  for (const call of persona.calls) {
    if (call.drawn) record.calls[call.id] = call.drawn;
    else if (persona.failed) record.failures[call.id] = persona.failed;
  }
  return record;
}

export const saveDrawnRecord = (store: ObjectStore, persona: PersonaDraws) => store.putJson(runKeys(persona.personaId, persona.runId).drawnInBatch, drawnRecordOf(persona));

/**
 * What OpenAI's Batch API drew for a call of this run, for its image stage to use instead of calling
 * the API; NotDrawnInBatch with the round's cause when it drew nothing usable.
 */
export async function drawnInBatch(store: ObjectStore, personaId: string, runId: string, callId: string, what: string): Promise<Drawn> {
  const record = await store.getJsonIfExists<DrawnRecord>(runKeys(personaId, runId).drawnInBatch);
  const drawn = record?.calls[callId];
  if (drawn) return drawn;
  const failure = record?.failures[callId];
  throw new NotDrawnInBatch(
    `${what}: not drawn by OpenAI's Batch API (${failure ? `${failure.error}: ${failure.cause}` : 'no round drew it'}); ` +
      'in batch mode nothing is drawn synchronously: run the batch file again, and only what is missing is drawn, at batch price',
  );
}
