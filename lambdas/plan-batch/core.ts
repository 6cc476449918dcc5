/**
 * The first state of a batch: reads its JSON Lines file as it streams, and decides for each line
 * whether it runs, and when. A line that is not a valid persona, a second line with an id already
 * in the batch, and a request some earlier attempt already published are skipped, with why. What
 * runs gets its execution's name (the request's name, or the attempt after its last failure) and
 * its turn: image calls are spread at the account's rate (IMAGES_PER_MINUTE). The turns are a
 * coarse schedule: the account-wide governor (shared/governor.ts) keeps every image call under
 * the limit, whatever else runs and however late the schedule is (README: Batches).
 */
import { ListExecutionsCommand, type ExecutionStatus, type SFNClient } from '@aws-sdk/client-sfn';
import type { Avatar, BatchItem, BatchPlan, ImageApiMode, ReportEntry, SkippedLine } from '../shared/batch.ts';
import { ConfigurationError, ErrorNames } from '../shared/errors.ts';
import { HEADROOM } from '../shared/governor.ts';
import { avatarKeys, batchKeys } from '../shared/keys.ts';
import { BATCH_API_PRICE, estimateImageCallCost } from '../shared/models.ts';
import { gridCounts, type RunRequest } from '../shared/persona.ts';
import { inPool } from '../shared/pool.ts';
import { problemText, readPersonaLines } from '../shared/run-input.ts';
import { attemptName, attemptsBefore, executionName, MAX_ATTEMPTS } from '../shared/run-name.ts';
import type { Settings } from '../shared/settings.ts';
import type { StageDeps } from '../shared/stage.ts';

export interface PlanBatchEvent {
  /** The batch's JSON Lines file: an upload under personas/, or batches/{batchId}/personas.jsonl. */
  personasKey: string;
  /** The batch execution's name. */
  batchId: string;
  /** The batch execution's input: `{ personasKey, budgetUsd?, openAiBatch? }`. */
  input?: { budgetUsd?: unknown; openAiBatch?: unknown };
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

/** A prompt's length for estimates made before it is written. */
const PROMPT_CHARS = 1_200;

/** What a persona's image calls are estimated to cost before any is made (the model table's prices, halved in batch mode); 0 when unpriced. */
export function estimatedCost(request: RunRequest, settings: Settings, apiMode: ImageApiMode): number {
  const images = request.images ?? settings.defaultImages;
  const price = apiMode === 'batch' ? BATCH_API_PRICE : 1;
  const call = (n: number, edit: boolean) =>
    price * (estimateImageCallCost(settings.imageModel, { size: settings.imageSize, quality: settings.imageQuality, n, promptChars: PROMPT_CHARS, edit }) ?? 0);
  return gridCounts(images).reduce((usd, count) => usd + call(request.mode === 'separate' ? count : 1, true), call(1, false));
}

/** Image calls one request makes: the base, then one per grid (or one image per avatar). */
function imageCallsOf(request: RunRequest, defaultImages: number): number {
  const images = request.images ?? defaultImages;
  return 1 + (request.mode === 'separate' ? images : gridCounts(images).length);
}

type Attempt = { run: string } | { published: string; avatars: Avatar[] } | { running: string } | { exhausted: true };

interface RunManifest {
  manifestKey?: string;
  images?: Avatar[];
}

/** Where attempts are looked up: the bucket, and Step Functions when it knows the persona workflow. */
export interface AttemptLookup {
  store: StageDeps<'store'>['store'];
  sfn?: SFNClient;
  /** The persona workflow whose execution names the attempts take. */
  stateMachineArn?: string;
}

/** Statuses of an execution whose name is taken and that published nothing (yet). */
const UNPUBLISHED: ExecutionStatus[] = ['RUNNING', 'PENDING_REDRIVE', 'FAILED', 'TIMED_OUT', 'ABORTED'];

/**
 * The persona workflow's executions that took a name and published nothing: listed a thousand
 * at a time (ListExecutions: 200 calls at once, then 5 a second in us-east-1, "Step Functions
 * service quotas"), not described one by one (DescribeExecution: 300, then 15 a second, so 10,000
 * personas would take 11 minutes). A name missing here and in the bucket was never taken.
 */
async function unpublishedExecutions(lookup: AttemptLookup): Promise<Map<string, ExecutionStatus>> {
  const taken = new Map<string, ExecutionStatus>();
  if (!lookup.sfn || !lookup.stateMachineArn) return taken;
  for (const statusFilter of UNPUBLISHED) {
    let nextToken: string | undefined;
    do {
      const page = await lookup.sfn.send(new ListExecutionsCommand({ stateMachineArn: lookup.stateMachineArn, statusFilter, maxResults: 1000, nextToken }));
      for (const { name, status } of page.executions ?? []) if (name && status) taken.set(name, status);
      nextToken = page.nextToken;
    } while (nextToken);
  }
  return taken;
}

/**
 * A request's attempts, as the bucket and then Step Functions know them: the first that published,
 * else the first name no execution has taken (the name to run under). A name the bucket knows
 * nothing of may still be taken for 90 days by a run that failed without a record (States.Runtime,
 * a throttled RecordFailure): Step Functions would refuse it, so an attempt that ended without
 * succeeding is stepped past, as `avatars start` does.
 */
async function nextAttempt(lookup: AttemptLookup, executions: () => Promise<Map<string, ExecutionStatus>>, personaId: string, name: string): Promise<Attempt> {
  const keys = avatarKeys(personaId);
  for (let n = 1; n <= MAX_ATTEMPTS; n++) {
    const runId = attemptName(name, n);
    const manifestKey = keys.run(runId).manifest;
    const [manifest, failure] = await Promise.all([lookup.store.getJsonIfExists<RunManifest>(manifestKey), lookup.store.getJsonIfExists(keys.failure(runId))]);
    if (manifest) return { published: manifestKey, avatars: (manifest.images ?? []).map(({ key }) => ({ key })) };
    if (failure) continue;
    const status = (await executions()).get(runId);
    if (!status) return { run: runId };
    if (status === 'RUNNING' || status === 'PENDING_REDRIVE') return { running: runId };
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
  lookup: AttemptLookup,
  { untilOneRuns = false } = {},
): Promise<{ toRun: { line: number; request: RunRequest; name: string }[]; skipped: SkippedLine[] }> {
  const skipped: SkippedLine[] = [];
  const candidates: { line: number; request: RunRequest }[] = [];
  const firstLine = new Map<string, number>();
  for await (const parsed of readPersonaLines(lines)) {
    if ('problem' in parsed) {
      skipped.push({ line: parsed.line, status: 'SKIPPED', reason: `not a valid persona: ${problemText(parsed.problem)}` });
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
  // Listed once, and only if the bucket leaves some name unsettled.
  let listed: Promise<Map<string, ExecutionStatus>> | undefined;
  const executions = () => (listed ??= unpublishedExecutions(lookup));
  const chunk = untilOneRuns ? LOOKUP_CONCURRENCY : candidates.length;
  for (let from = 0; from < candidates.length && !(untilOneRuns && toRun.length > 0); from += chunk) {
    const some = candidates.slice(from, from + chunk);
    const attempts = await inPool(some, LOOKUP_CONCURRENCY, ({ request }) => nextAttempt(lookup, executions, request.persona.id, executionName(request)));
    some.forEach(({ line, request }, i) => {
      const attempt = attempts[i]!;
      const personaId = request.persona.id;
      if ('published' in attempt) {
        skipped.push({ line, personaId, status: 'SKIPPED', reason: 'already published with the same request', manifestKey: attempt.published, avatars: attempt.avatars });
      } else if ('running' in attempt) {
        skipped.push({ line, personaId, status: 'SKIPPED', reason: `running already as execution ${attempt.running} (an upload, avatars start or another batch started it); its avatars are published when it ends` });
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

/** How the batch draws: its input's `openAiBatch`, else IMAGE_API_MODE. */
function apiModeOf(event: PlanBatchEvent, fallback: ImageApiMode): ImageApiMode {
  const given = event.input?.openAiBatch;
  if (given === undefined || given === null) return fallback;
  if (typeof given !== 'boolean') throw new ConfigurationError(`batch ${event.batchId}: openAiBatch must be true or false, got ${JSON.stringify(given)}`);
  return given ? 'batch' : 'sync';
}

/** The batch's budget: its input's `budgetUsd`, else the deployment's default. */
function batchBudget(event: PlanBatchEvent, fallback: number | undefined): number | undefined {
  const given = event.input?.budgetUsd;
  if (given === undefined || given === null) return fallback;
  if (typeof given !== 'number' || !Number.isFinite(given) || given <= 0) {
    throw new ConfigurationError(`batch ${event.batchId}: budgetUsd must be a positive number of US dollars, got ${JSON.stringify(given)}`);
  }
  return given;
}

export async function planBatch(event: PlanBatchEvent, deps: StageDeps<'store' | 'sfn' | 'clock'>): Promise<BatchPlan> {
  const keys = batchKeys(event.batchId);
  const lookup = { store: deps.store, sfn: deps.sfn, stateMachineArn: deps.settings.stateMachineArn };
  const { toRun, skipped } = await triageLines(deps.store.lines(event.personasKey), lookup);
  const { imagesPerMinute, defaultImages } = deps.settings;
  const budgetUsd = batchBudget(event, deps.settings.batchBudgetUsd);
  const apiMode = apiModeOf(event, deps.settings.imageApiMode);
  const items: BatchItem[] = [];
  // Personas the budget cannot pay for, in line order: refused before anything is paid.
  const refused: ReportEntry[] = [];
  let committedUsd = 0;
  let imageCalls = 0;
  const start = deps.clock.now().getTime();
  for (const { line, request, name } of toRun) {
    if (budgetUsd !== undefined) {
      const usd = estimatedCost(request, deps.settings, apiMode);
      if (committedUsd + usd > budgetUsd) {
        refused.push({
          line,
          personaId: request.persona.id,
          name,
          status: 'FAILED',
          error: ErrorNames.BudgetExhausted,
          cause: `not run, nothing paid: its image calls are estimated at $${usd.toFixed(4)} and the batch budget of $${budgetUsd.toFixed(2)} has $${Math.max(0, budgetUsd - committedUsd).toFixed(4)} left for it after the personas before it; run the batch again with a larger budget (avatars batch --budget-usd, or budgetUsd in its input)`,
        });
        continue;
      }
      committedUsd += usd;
    }
    // Each persona's turn comes once the image calls of those before it fit in the limit; in
    // batch mode its images are drawn before the Map starts, outside the limit.
    // At the governor's pace, a little under the limit: a plan at the limit itself would fall behind it.
    const notBefore = new Date(apiMode === 'batch' ? start : start + Math.round((imageCalls * 60_000 * HEADROOM) / imagesPerMinute)).toISOString();
    const input = {
      ...request,
      batchId: event.batchId,
      ...(apiMode === 'batch' ? { imageApi: apiMode } : {}),
      ...(budgetUsd === undefined ? {} : { budget: { batchId: event.batchId, usd: budgetUsd } }),
    };
    items.push({ personaId: request.persona.id, line, name, input, notBefore, ...(apiMode === 'batch' ? { earlier: attemptsBefore(executionName(request), name) } : {}) });
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
    refused: refused.length,
    imagesPerMinute,
    apiMode,
    ...(budgetUsd !== undefined ? { budgetUsd } : {}),
    imageCalls,
    lastTurn: items.at(-1)?.notBefore ?? new Date(start).toISOString(),
    concurrency: Math.max(1, Math.min(items.length, MAX_CHILD_WORKFLOWS, Math.ceil(((imagesPerMinute * items.length) / Math.max(1, imageCalls)) * PERSONA_MINUTES))),
  };
  await deps.store.putJson(keys.plan, { ...plan, skippedLines: skipped, refusedLines: refused });
  deps.metrics.record('PersonasPlanned', items.length);
  deps.metrics.record('PersonasSkipped', skipped.length);
  deps.logger.info('batch planned', { batchId: event.batchId, toRun: items.length, skipped: skipped.length, imageCalls, imagesPerMinute });
  return plan;
}
