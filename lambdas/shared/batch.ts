/**
 * A batch's own types, in one place: what PlanBatch plans (BatchPlan, one BatchItem per persona
 * that runs, the lines it skips), what the Map answers, and what ReportBatch reports. The batch
 * stages and the rounds import them from here, not from one another.
 */
import type { LookSummary } from './persona-look.ts';
import type { RunRequest } from './persona.ts';
import type { Settings } from './settings.ts';

export type ImageApiMode = Settings['imageApiMode'];

/** One persona the batch runs: a line of items.jsonl, read by the Distributed Map. */
export interface BatchItem {
  personaId: string;
  line: number;
  /** The per-persona execution's name. */
  name: string;
  input: RunRequest;
  /** Batch mode: the names of the request's earlier attempts, whose drawn images it takes over. */
  earlier?: string[];
  /** Its turn (ISO 8601): the child execution starts no earlier. */
  notBefore: string;
}

export interface SkippedLine {
  line: number;
  personaId?: string;
  status: 'SKIPPED';
  reason: string;
  /** For a request already published: that run's manifest and avatars. */
  manifestKey?: string;
  avatars?: Avatar[];
}

/** A published avatar, as a report lists it: its URL made when the report is. */
export interface Avatar {
  key: string;
  url?: string;
}

export interface BatchPlan {
  batchId: string;
  personasKey: string;
  itemsKey: string;
  planKey: string;
  /** Where the Map Run writes its results. */
  resultsPrefix: string;
  toRun: number;
  skipped: number;
  /** Personas the batch's budget could not pay for: reported failed with BudgetExhausted, nothing paid. */
  refused: number;
  imagesPerMinute: number;
  /** `batch`: the image calls go through OpenAI's Batch API in rounds, at half the price. */
  apiMode: ImageApiMode;
  /** What the batch's image calls may spend, in USD; none when undefined. */
  budgetUsd?: number;
  /** Image calls the batch is planned to make (a redrawn grid adds one). */
  imageCalls: number;
  /** When the last persona's turn comes. */
  lastTurn: string;
  /** Child workflows at once: enough that only the turns pace the batch. */
  concurrency: number;
}

/** What the Distributed Map answers when its results were written to S3. */
export interface MapRunResults {
  MapRunArn: string;
  ResultWriterDetails: { Bucket: string; Key: string };
}

export type PersonaStatus = 'SUCCEEDED' | 'FAILED' | 'SKIPPED';

export interface ReportEntry {
  line: number;
  personaId?: string;
  status: PersonaStatus;
  /** The persona's execution. */
  name?: string;
  manifestKey?: string;
  avatars?: Avatar[];
  error?: string;
  cause?: string;
  /** Why it was skipped. */
  reason?: string;
  /** What the base's checks found (published personas whose base was checked). */
  look?: LookSummary;
}

/** A batch's people at a glance: who was asked for, who the face model saw, and how alike they came out. */
export interface Diversity {
  /** Published personas whose base was checked. */
  checked: number;
  gender: { asked: Record<string, number>; read: Record<string, number>; misses: number };
  /** Apparent ages read, by decade (`20s`), and how many bios stated an age. */
  age: { asked: number; read: Record<string, number>; misses: number };
  lookalikes: { redrawn: number; keptFlagged: number };
  /** The two most alike personas (one of them this batch's; the other may be any persona published before). */
  nearestPair: { personaId: string; otherPersonaId: string; similarity: number } | null;
}

export interface BatchReport {
  batchId: string;
  personasKey: string;
  finishedAt: string;
  counts: Record<PersonaStatus, number> & { total: number };
  diversity?: Diversity;
  /** Batch mode: the OpenAI batches of its rounds, what their images cost, and what sync mode would have. */
  openAiBatch?: { rounds: number; batches: string[]; costUsd: number; syncCostUsd: number };
  personas: ReportEntry[];
}

export interface BatchSummary {
  batchId: string;
  reportKey: string;
  indexKey: string;
  counts: BatchReport['counts'];
}
