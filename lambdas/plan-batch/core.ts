/**
 * The first state of a batch: reads its JSON Lines file as it streams, and decides for each line
 * whether it runs, and when. A line that is not a valid persona, a second line with an id already
 * in the batch, and a request some earlier attempt already published are skipped, with why. What
 * runs gets its execution's name (the request's name, or the attempt after its last failure) and
 * its turn: image calls are spread at the account's rate (IMAGES_PER_MINUTE), so the batch needs
 * no shared counter between its Lambdas and never outruns the limit (README: Batches).
 */
import { avatarKeys, batchKeys } from '../shared/keys.ts';
import { IMAGES_PER_GRID, type RunRequest } from '../shared/persona.ts';
import { inPool } from '../shared/pool.ts';
import { readPersonaLines } from '../shared/run-input.ts';
import { attemptName, executionName, MAX_ATTEMPTS } from '../shared/run-name.ts';
import type { StageDeps } from '../shared/stage.ts';

export interface PlanBatchEvent {
  /** The batch's JSON Lines file: an upload under personas/, or batches/{batchId}/personas.jsonl. */
  personasKey: string;
  /** The batch execution's name. */
  batchId: string;
}

/** One persona the batch runs: a line of items.jsonl, read by the Distributed Map. */
export interface BatchItem {
  personaId: string;
  line: number;
  /** The per-persona execution's name. */
  name: string;
  input: RunRequest;
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
  imagesPerMinute: number;
  /** Image calls the batch is planned to make (a redrawn grid adds one). */
  imageCalls: number;
  /** When the last persona's turn comes. */
  lastTurn: string;
  /** Child workflows at once: enough that only the turns pace the batch. */
  concurrency: number;
}

/**
 * Minutes a persona's run may take. Child workflows waiting for their turn hold a place too, so
 * with places for this many minutes of persona starts the rate limit stays the only brake.
 */
const PERSONA_MINUTES = 20;
/** The most child workflows a Distributed Map runs at once. */
const MAX_CHILD_WORKFLOWS = 10_000;

/** Stored reads at once while looking up earlier attempts. */
const LOOKUP_CONCURRENCY = 16;

/** Image calls one request makes: the base, then one per grid (or one image per avatar). */
function imageCallsOf(request: RunRequest, defaultImages: number): number {
  const images = request.images ?? defaultImages;
  return 1 + (request.mode === 'separate' ? images : Math.ceil(images / IMAGES_PER_GRID));
}

type Attempt = { run: string } | { published: string; avatars: Avatar[] } | { exhausted: true };

interface RunManifest {
  images?: Avatar[];
}

/**
 * What the bucket says of a request's attempts: the first that published, else the first that
 * has neither published nor failed (the name to run under).
 */
async function nextAttempt(deps: Pick<StageDeps<'store'>, 'store'>, personaId: string, name: string): Promise<Attempt> {
  const keys = avatarKeys(personaId);
  for (let n = 1; n <= MAX_ATTEMPTS; n++) {
    const runId = attemptName(name, n);
    const manifestKey = keys.run(runId).manifest;
    const [manifest, failure] = await Promise.all([deps.store.getJsonIfExists<RunManifest>(manifestKey), deps.store.getJsonIfExists(keys.failure(runId))]);
    if (manifest) return { published: manifestKey, avatars: (manifest.images ?? []).map(({ key }) => ({ key })) };
    if (!failure) return { run: runId };
  }
  return { exhausted: true };
}

/**
 * A batch's lines sorted out against the bucket: what runs under which name, what is skipped and
 * why. Writes nothing. With `untilOneRuns`, the bucket is asked a chunk at a time and the answer
 * stops at the first chunk with a persona to run: enough to tell whether a batch has anything to do.
 */
export async function triageLines(
  lines: AsyncIterable<string> | Iterable<string>,
  deps: Pick<StageDeps<'store'>, 'store'>,
  { untilOneRuns = false } = {},
): Promise<{ toRun: { line: number; request: RunRequest; name: string }[]; skipped: SkippedLine[] }> {
  const skipped: SkippedLine[] = [];
  const candidates: { line: number; request: RunRequest }[] = [];
  const firstLine = new Map<string, number>();
  for await (const parsed of readPersonaLines(lines)) {
    if ('problem' in parsed) {
      skipped.push({ line: parsed.line, status: 'SKIPPED', reason: `not a valid persona: ${parsed.problem.field}: ${parsed.problem.message}` });
      continue;
    }
    const id = parsed.request.persona.id;
    const first = firstLine.get(id);
    if (first !== undefined) {
      skipped.push({ line: parsed.line, personaId: id, status: 'SKIPPED', reason: `duplicate id: line ${first} has persona ${id} already, and only that line runs` });
      continue;
    }
    firstLine.set(id, parsed.line);
    candidates.push(parsed);
  }

  const toRun: { line: number; request: RunRequest; name: string }[] = [];
  const chunk = untilOneRuns ? LOOKUP_CONCURRENCY : candidates.length;
  for (let from = 0; from < candidates.length && !(untilOneRuns && toRun.length > 0); from += chunk) {
    const some = candidates.slice(from, from + chunk);
    const attempts = await inPool(some, LOOKUP_CONCURRENCY, ({ request }) => nextAttempt(deps, request.persona.id, executionName(request)));
    some.forEach(({ line, request }, i) => {
      const attempt = attempts[i]!;
      const personaId = request.persona.id;
      if ('published' in attempt) {
        skipped.push({ line, personaId, status: 'SKIPPED', reason: 'already published with the same request', manifestKey: attempt.published, avatars: attempt.avatars });
      } else if ('exhausted' in attempt) {
        skipped.push({ line, personaId, status: 'SKIPPED', reason: `${MAX_ATTEMPTS} attempts of this request have failed: fix the cause their failure records name, then change the request (or start it with avatars start --name)` });
      } else {
        toRun.push({ line, request, name: attempt.run });
      }
    });
  }
  skipped.sort((a, b) => a.line - b.line);
  return { toRun, skipped };
}

export async function planBatch(event: PlanBatchEvent, deps: StageDeps<'store'>): Promise<BatchPlan> {
  const keys = batchKeys(event.batchId);
  const { toRun, skipped } = await triageLines(deps.store.lines(event.personasKey), deps);
  const { imagesPerMinute, defaultImages } = deps.settings;
  const items: BatchItem[] = [];
  let imageCalls = 0;
  const start = Date.now();
  for (const { line, request, name } of toRun) {
    // Each persona's turn comes once the image calls of those before it fit in the limit.
    const notBefore = new Date(start + Math.round((imageCalls * 60_000) / imagesPerMinute)).toISOString();
    items.push({ personaId: request.persona.id, line, name, input: request, notBefore });
    imageCalls += imageCallsOf(request, defaultImages);
  }

  // Nothing to run writes no items file: the batch goes straight to its report.
  if (items.length > 0) await deps.store.put(keys.items, items.map((item) => `${JSON.stringify(item)}\n`).join(''), 'application/x-ndjson');
  const plan: BatchPlan = {
    batchId: event.batchId,
    personasKey: event.personasKey,
    itemsKey: keys.items,
    planKey: keys.plan,
    resultsPrefix: keys.results,
    toRun: items.length,
    skipped: skipped.length,
    imagesPerMinute,
    imageCalls,
    lastTurn: items.at(-1)?.notBefore ?? new Date(start).toISOString(),
    concurrency: Math.max(1, Math.min(items.length, MAX_CHILD_WORKFLOWS, Math.ceil(((imagesPerMinute * items.length) / Math.max(1, imageCalls)) * PERSONA_MINUTES))),
  };
  await deps.store.putJson(keys.plan, { ...plan, skippedLines: skipped });
  deps.logger.info('batch planned', { batchId: event.batchId, toRun: items.length, skipped: skipped.length, imageCalls, imagesPerMinute });
  return plan;
}
