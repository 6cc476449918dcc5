/**
 * The last state of a batch: one entry per line of its file, from the plan (what was skipped and
 * why) and the Map Run's results as Step Functions' ResultWriter stored them, written as
 * batches/{batchId}/report.json and a contact sheet, index.html. A persona the Map never ran
 * (the batch stopped, say) is reported failed, never left out. Both files are streamed to S3 a
 * persona at a time, URLs made as each is written: memory holds the batch's keys, not its report.
 */
import { Readable } from 'node:stream';
import { Upload } from '@aws-sdk/lib-storage';
import { batchKeys } from '../shared/keys.ts';
import { loadRounds } from '../shared/rounds.ts';
import type { BatchItem, BatchPlan, BatchReport, BatchSummary, Diversity, MapRunResults, PersonaStatus, ReportEntry, SkippedLine } from '../shared/batch.ts';
import type { LookSummary } from '../shared/persona-look.ts';
import type { ObjectStore } from '../shared/store.ts';
import type { StageDeps } from '../shared/stage.ts';
import { objectUrl } from '../shared/urls.ts';
import { contactSheetChunks } from './contact-sheet.ts';

export interface ReportBatchEvent {
  plan: BatchPlan;
  /** Absent when nothing was left to run; the Map's own error when it could not read its items or write its results. */
  map?: Partial<MapRunResults> & { Error?: string; Cause?: string };
}

/** What each child workflow of the Map returns (infra/batch-workflow.ts). */
interface ItemOutcome {
  personaId: string;
  line: number;
  name: string;
  outcome:
    | { status: 'SUCCEEDED'; manifestKey: string; images: string[]; look?: LookSummary | null }
    | { status: 'FAILED'; error: string; cause: string };
}

/** One child workflow execution as ResultWriter lists it (Transformation NONE). */
interface ChildResult {
  Input?: string;
  Output?: string;
  Status?: string;
  Error?: string;
  Cause?: string;
}

interface ResultManifest {
  ResultFiles: Partial<Record<'SUCCEEDED' | 'FAILED' | 'PENDING', { Key: string }[]>>;
}

/**
 * A persona execution that failed reaches the batch as States.TaskFailed, its cause the
 * execution's description: the persona's own error and cause are inside.
 */
function personaFailure(error: string, cause: string): { error: string; cause: string } {
  try {
    const described = JSON.parse(cause) as Record<string, unknown>;
    const inner = { error: described.Error ?? described.error, cause: described.Cause ?? described.cause };
    if (typeof inner.error === 'string') return { error: inner.error, cause: typeof inner.cause === 'string' ? inner.cause : '' };
    // Timed out or stopped: no error of its own, only its status.
    const status = described.Status ?? described.status;
    if (typeof status === 'string') return { error: `Execution${status.charAt(0)}${status.slice(1).toLowerCase().replace(/_(\w)/g, (_, c: string) => c.toUpperCase())}`, cause: `the persona's execution ${String(described.ExecutionArn ?? '')} ended ${status}` };
  } catch {
    // A cause of the task's own (a timeout, a refused start): it stands as it is.
  }
  return { error, cause };
}

/** Avatar keys as two strings: what they share, and the rest of each, a line each. */
interface PackedKeys {
  prefix: string;
  rest: string;
}

/**
 * A report entry as it is held until written, its avatars' keys packed: 10,000 personas of 40
 * avatars are 400,000 keys, a few MiB packed, not the hundred or so as strings of their own.
 */
type HeldEntry = Omit<ReportEntry, 'avatars'> & { keys?: PackedKeys };

function pack(keys: string[]): PackedKeys {
  let shared = keys[0] ?? '';
  for (const key of keys) while (!key.startsWith(shared)) shared = shared.slice(0, -1);
  return { prefix: shared, rest: keys.map((key) => key.slice(shared.length)).join('\n') };
}

// No key is empty: an empty prefix and rest are no keys at all.
const unpack = ({ prefix, rest }: PackedKeys): string[] => (prefix === '' && rest === '' ? [] : rest.split('\n').map((tail) => prefix + tail));

function held({ avatars, ...entry }: ReportEntry): HeldEntry {
  return avatars ? { ...entry, keys: pack(avatars.map(({ key }) => key)) } : entry;
}

function entryOf(result: ItemOutcome): HeldEntry {
  const base = { line: result.line, personaId: result.personaId, name: result.name };
  const o = result.outcome;
  if (o.status === 'SUCCEEDED') return { ...base, status: 'SUCCEEDED', manifestKey: o.manifestKey, keys: pack(o.images), ...(o.look ? { look: o.look } : {}) };
  return { ...base, status: 'FAILED', ...personaFailure(o.error, o.cause) };
}

/**
 * The Map's results, read a line at a time (ResultWriter writes JSON Lines): memory holds one
 * result, and the compact entries kept for the report. A line is a succeeded child's output
 * (COMPACT), or a child with its metadata (a failed one, or results written without WriterConfig:
 * a JSON array on one line).
 */
async function mapResults(deps: StageDeps<'store'>, manifestKey: string): Promise<Map<number, HeldEntry>> {
  const entries = new Map<number, HeldEntry>();
  const manifest = JSON.parse(await deps.store.getText(manifestKey)) as ResultManifest;
  for (const file of [...(manifest.ResultFiles.SUCCEEDED ?? []), ...(manifest.ResultFiles.FAILED ?? [])]) {
    for await (const text of deps.store.lines(file.Key)) {
      if (!text.trim()) continue;
      const parsed = JSON.parse(text) as ItemOutcome | ChildResult | ChildResult[];
      for (const record of Array.isArray(parsed) ? parsed : [parsed]) addResult(entries, record);
    }
  }
  return entries;
}

function addResult(entries: Map<number, HeldEntry>, record: ItemOutcome | ChildResult): void {
  if ('outcome' in record) {
    entries.set(record.line, entryOf(record));
    return;
  }
  if (record.Status === 'SUCCEEDED' && record.Output) {
    const outcome = JSON.parse(record.Output) as ItemOutcome;
    entries.set(outcome.line, entryOf(outcome));
    return;
  }
  // The child workflow itself failed (the batch's own machinery, not the persona's run).
  const item = JSON.parse(record.Input ?? '{}') as Partial<BatchItem>;
  if (item.line !== undefined) entries.set(item.line, { line: item.line, personaId: item.personaId, name: item.name, status: 'FAILED', error: record.Error ?? 'States.Runtime', cause: record.Cause ?? '' });
}

export async function reportBatch(event: ReportBatchEvent, deps: StageDeps<'store'>): Promise<BatchSummary> {
  const { plan } = event;
  const keys = batchKeys(plan.batchId);
  const written = event.map?.ResultWriterDetails;
  const rounds = plan.apiMode === 'batch' ? await loadRounds(deps.store, plan.batchId) : undefined;
  // Batch mode may run personas again (a redraw): later results stand over earlier ones.
  const results = new Map<number, HeldEntry>();
  for (const key of [...(rounds?.maps ?? []), ...(written ? [written.Key] : [])]) for (const [line, entry] of await mapResults(deps, key)) results.set(line, entry);
  const mapError = event.map?.Error;
  const notRun = mapError
    ? { error: mapError, cause: `the batch's Map failed before this persona's result was written (${mapError}: ${event.map?.Cause ?? ''}); run the batch again: what was published is not run again` }
    : { error: 'NotRun', cause: 'the batch ended before this persona ran; run the batch again to run it' };
  const personas: HeldEntry[] = [];
  // Every persona the batch planned: a redraw's plan names only those it ran again.
  for await (const line of plan.toRun > 0 ? deps.store.lines(keys.items) : []) {
    if (!line.trim()) continue;
    const item = JSON.parse(line) as BatchItem;
    personas.push(
      results.get(item.line) ?? { line: item.line, personaId: item.personaId, name: item.name, status: 'FAILED', ...notRun },
    );
  }
  const { skippedLines, refusedLines = [] } = JSON.parse(await deps.store.getText(plan.planKey)) as { skippedLines: SkippedLine[]; refusedLines?: ReportEntry[] };
  personas.push(...skippedLines.map(held), ...refusedLines.map(held));
  personas.sort((a, b) => a.line - b.line);
  const count = (status: PersonaStatus) => personas.filter((p) => p.status === status).length;
  const head: Omit<BatchReport, 'personas'> = {
    batchId: plan.batchId,
    personasKey: plan.personasKey,
    finishedAt: new Date().toISOString(),
    counts: { total: personas.length, SUCCEEDED: count('SUCCEEDED'), FAILED: count('FAILED'), SKIPPED: count('SKIPPED') },
    diversity: diversityOf(personas),
    ...(rounds
      ? { openAiBatch: { rounds: rounds.rounds.length, batches: rounds.rounds.flatMap((r) => r.batchIds), costUsd: round6(rounds.costUsd), syncCostUsd: round6(rounds.syncCostUsd) } }
      : {}),
  };
  // URLs made as each persona is written, as publish makes them: presigned ones live a week at most.
  async function* withUrls(): AsyncGenerator<ReportEntry> {
    for (const { keys, ...p } of personas) yield keys ? { ...p, avatars: await Promise.all(unpack(keys).map(async (key) => ({ key, url: await objectUrl(deps, key) }))) } : p;
  }
  await putStreamed(deps.store, keys.report, reportJson(head, withUrls()), 'application/json');
  await putStreamed(deps.store, keys.index, contactSheetChunks(head, withUrls()), 'text/html; charset=utf-8');
  deps.metrics.record('PersonasSucceeded', head.counts.SUCCEEDED);
  deps.metrics.record('PersonasFailed', head.counts.FAILED);
  deps.logger.info('batch reported', { batchId: plan.batchId, ...head.counts });
  return { batchId: plan.batchId, reportKey: keys.report, indexKey: keys.index, counts: head.counts };
}

const tally = (counts: Record<string, number>, key: string) => {
  counts[key] = (counts[key] ?? 0) + 1;
};

/** The batch's diversity, from each published persona's look. */
export function diversityOf(personas: Iterable<{ personaId?: string; look?: LookSummary }>): Diversity {
  const d: Diversity = { checked: 0, gender: { asked: {}, read: {}, misses: 0 }, age: { asked: 0, read: {}, misses: 0 }, lookalikes: { redrawn: 0, keptFlagged: 0 }, nearestPair: null };
  for (const { personaId, look } of personas) {
    if (!look) continue;
    d.checked++;
    tally(d.gender.asked, look.asked.gender ?? 'not stated');
    if (look.asked.age) d.age.asked++;
    if (look.read) {
      tally(d.gender.read, look.read.gender);
      tally(d.age.read, `${Math.floor(look.read.age / 10) * 10}s`);
    }
    if (look.misses.includes('gender')) d.gender.misses++;
    if (look.misses.includes('age')) d.age.misses++;
    if (look.redrawn.includes('lookalike')) d.lookalikes.redrawn++;
    if (look.misses.includes('lookalike')) d.lookalikes.keptFlagged++;
    if (look.nearest && personaId && (!d.nearestPair || look.nearest.similarity > d.nearestPair.similarity)) {
      d.nearestPair = { personaId, otherPersonaId: look.nearest.personaId, similarity: look.nearest.similarity };
    }
  }
  return d;
}

const round6 = (usd: number) => Math.round(usd * 1e6) / 1e6;

/** A BatchReport's JSON, a persona a line, as it is written. */
async function* reportJson(head: Omit<BatchReport, 'personas'>, personas: AsyncIterable<ReportEntry>): AsyncGenerator<string> {
  yield `${JSON.stringify(head, null, 2).slice(0, -2)},\n  "personas": [`;
  let first = true;
  for await (const p of personas) {
    yield `${first ? '' : ','}\n    ${JSON.stringify(p)}`;
    first = false;
  }
  yield `${first ? '' : '\n  '}]\n}\n`;
}

/**
 * Writes what `chunks` yields as it comes (a multipart upload once past one part), never all of it
 * at once; one part in flight, one file at a time: the report is written in seconds either way.
 */
async function putStreamed(store: ObjectStore, key: string, chunks: AsyncIterable<string>, contentType: string): Promise<void> {
  await new Upload({ client: store.s3, queueSize: 1, params: { Bucket: store.bucket, Key: key, Body: Readable.from(chunks), ContentType: contentType } }).done();
}
