/**
 * Batch mode, a round's second half: asks OpenAI whether the round's batches are done; while any
 * runs, says how long to wait (Step Functions waits, 1.5x longer each time). Once all are done it
 * reads their output and error files a line at a time: each image is checked and stored under its
 * run's keys and its reserved cost settled from its usage at batch price; a failed line or an
 * unusable image is drawn again next round, a refused prompt from a safer rewrite; what a batch
 * that failed, expired or was cancelled never drew ends its persona failed, with that cause,
 * keeping what was drawn. Then says whether another round is due or the personas run.
 */
import type OpenAI from 'openai';
import { ConfigurationError, ErrorNames } from '../shared/errors.ts';
import { imageProblem } from '../shared/image-check.ts';
import { formatOf } from '../shared/image-provider.ts';
import { contentTypes } from '../shared/keys.ts';
import { moderationCodes } from '../shared/openai.ts';
import { BATCH_API_PRICE, estimateImageCost, parseSize, type TokenUsage } from '../shared/models.ts';
import { failedForQueueLimit, FINISHED, fileLines, type BatchOutputLine } from '../shared/openai-batch.ts';
import { inPool } from '../shared/pool.ts';
import type { Reservation } from '../shared/governor.ts';
import { drawnKeys, loadRounds, MAX_ROUNDS, MAX_TRIES, readyCalls, roundsSpent, saveDrawnRecord, saveRounds, type CallState, type PersonaDraws, type RoundStatus } from '../shared/rounds.ts';
import type { StageDeps } from '../shared/stage.ts';
import type { RoundEvent } from '../shared/rounds.ts';

type CollectDeps = StageDeps<'store' | 'text' | 'governor' | 'imageTimeoutMs' | 'deadline'>;

/** The longest wait between two looks at a round. */
const MAX_WAIT_SECONDS = 900;
const WRITE_CONCURRENCY = 16;
const STORE_CONCURRENCY = 8;

interface ImagesBody {
  data?: { b64_json?: string }[];
  usage?: TokenUsage;
  error?: { code?: string; message?: string };
}

type Sent = { persona: PersonaDraws; call: CallState };

/** Stores a line's images where the run's workflow takes them from; a problem with them when they are unusable. */
async function store(deps: CollectDeps, { persona, call }: Sent, body: ImagesBody, model: string, batchId: string): Promise<string | undefined> {
  const images = (body.data ?? []).map((d) => Buffer.from(d.b64_json ?? '', 'base64'));
  if (images.length < call.count) return `${images.length} image(s) where ${call.count} were asked`;
  for (const image of images) {
    const problem = imageProblem(image, parseSize(deps.settings.imageSize));
    if (problem) return problem;
  }
  const format = formatOf(images[0]!) ?? 'png';
  const at = drawnKeys(persona, call.id, images.length, format);
  await Promise.all(images.map((image, i) => deps.store.put(at[i]!, image, contentTypes[format])));
  const sync = estimateImageCost(model, body.usage);
  const estimatedCostUsd = sync === null ? null : Math.round(sync * BATCH_API_PRICE * 1e6) / 1e6;
  call.drawn = { keys: at, format, model, ...(body.usage ? { usage: body.usage } : {}), estimatedCostUsd, batchId };
  return undefined;
}

export async function collectRound(event: RoundEvent, deps: CollectDeps): Promise<RoundStatus> {
  const { plan } = event;
  const round = event.round!;
  const api: OpenAI | undefined = deps.text;
  if (!api) throw new ConfigurationError(`batch ${plan.batchId}: OpenAI's Batch API needs OPENAI_API_KEY (and OPENAI_BASE_URL for a compatible server)`);
  const batches = await Promise.all(round.batchIds.map((id) => api.batches.retrieve(id, { timeout: deps.imageTimeoutMs })));
  if (batches.some((b) => !FINISHED.has(b.status))) {
    return { ...round, status: 'pending', waitSeconds: Math.min(MAX_WAIT_SECONDS, Math.ceil(round.waitSeconds * 1.5)) };
  }
  const state = (await loadRounds(deps.store, plan.batchId))!;
  const sent = new Map<string, Sent>();
  for (const persona of state.personas) for (const call of persona.calls) if (call.pending) sent.set(call.pending.customId, { persona, call });
  const touched = new Set<PersonaDraws>();
  // Settled once the state is saved: a retried collect finds nothing pending and settles nothing twice.
  const settlements: [Reservation, number][] = [];

  const answer = async (line: BatchOutputLine, batchId: string) => {
    const entry = sent.get(line.custom_id);
    // What an expired batch never ran ends as its batch did (below), not as a failed line.
    if (!entry || line.error?.code === 'batch_expired') return;
    sent.delete(line.custom_id);
    touched.add(entry.persona);
    const { call } = entry;
    const { reservation, model } = call.pending!;
    delete call.pending;
    const body = (line.response?.body ?? {}) as ImagesBody;
    const status = line.response?.status_code ?? 0;
    if (status === 200) {
      const problem = await store(deps, entry, body, model, batchId);
      // Paid for either way: an unusable answer is drawn again next round.
      settlements.push([reservation, call.drawn?.estimatedCostUsd ?? (estimateImageCost(model, body.usage) ?? 0) * BATCH_API_PRICE]);
      if (call.drawn) {
        const by = { model, api: 'batch' };
        deps.metrics.record('ImagesDrawn', call.drawn.keys.length, by);
        deps.metrics.record('ImageCostUsd', call.drawn.estimatedCostUsd ?? 0, by);
        state.costUsd += call.drawn.estimatedCostUsd ?? 0;
        state.syncCostUsd += (call.drawn.estimatedCostUsd ?? 0) / BATCH_API_PRICE;
      } else {
        call.lastError = { error: ErrorNames.UpstreamError, cause: `OpenAI batch ${batchId} sent an unusable image: ${problem}` };
      }
      return;
    }
    // Refused or failed lines are not charged.
    settlements.push([reservation, 0]);
    const error = body.error ?? line.error ?? {};
    const cause = `OpenAI batch ${batchId}, line ${line.custom_id}: ${status || 'no answer'} ${error.code ?? ''} ${error.message ?? ''}`.replace(/\s+/g, ' ').trim();
    if (moderationCodes.has(String(error.code))) {
      if (call.safer) entry.persona.failed = { error: ErrorNames.ContentPolicyViolation, cause: `${cause}; the safer rewrite was refused too` };
      else {
        call.safer = true;
        // The refusal does not count as a try: the rewrite gets its own.
        call.tries--;
        call.lastError = { error: ErrorNames.ContentPolicyViolation, cause };
      }
      return;
    }
    call.lastError = { error: ErrorNames.UpstreamError, cause };
  };

  // A round too big for one invocation is collected in parts: past the deadline, what was stored
  // is saved and settled, and the next invocation goes on from there (lines done have nothing pending).
  let answered = 0;
  let stopped = false;
  reading: for (const batch of batches) {
    for (const fileId of [batch.output_file_id, batch.error_file_id]) {
      if (!fileId) continue;
      // A few images stored at once: a round of thousands fits in the Lambda's time.
      const storing = new Set<Promise<void>>();
      for await (const line of fileLines(api, fileId, deps.imageTimeoutMs)) {
        if (!sent.has(line.custom_id)) continue;
        if (answered > 0 && Date.now() >= deps.deadline) {
          stopped = true;
          await Promise.all(storing);
          break reading;
        }
        answered++;
        const one = answer(line, batch.id).finally(() => storing.delete(one));
        storing.add(one);
        if (storing.size >= STORE_CONCURRENCY) await Promise.race(storing);
      }
      await Promise.all(storing);
    }
  }
  if (stopped) {
    await saveRounds(deps.store, state);
    for (const [reservation, usd] of settlements) await deps.governor.settle(reservation, usd);
    deps.logger.info('OpenAI batch round collected in part', { batchId: plan.batchId, round: round.n, answered });
    return { ...round, status: 'pending', waitSeconds: 0 };
  }
  // Batches OpenAI's queue limit turned away ran nothing and cost nothing: their lines go again,
  // in batches half as large, once the batches ahead in the queue have finished.
  const queueLimited = batches.filter(failedForQueueLimit);
  if (queueLimited.length > 0) {
    state.queueLimitedRounds = (state.queueLimitedRounds ?? 0) + 1;
    const smallest = Math.min(...queueLimited.map((b) => b.request_counts?.total ?? 1));
    state.maxLinesPerBatch = Math.max(1, Math.min(state.maxLinesPerBatch ?? Infinity, Math.floor(smallest / 2)));
    for (const [customId, entry] of sent) {
      const batch = queueLimited.find((b) => entry.call.pending!.batchIds?.includes(b.id));
      if (!batch) continue;
      sent.delete(customId);
      settlements.push([entry.call.pending!.reservation, 0]);
      delete entry.call.pending;
      touched.add(entry.persona);
      // Not drawn: not a try.
      entry.call.tries--;
      entry.call.lastError = { error: ErrorNames.RateLimited, cause: `OpenAI batch ${batch.id} failed for the Batch API's queue limit: ${batch.errors?.data?.[0]?.message ?? ''}`.trim() };
    }
  }
  // Lines with no answer: a batch that ended early keeps what it drew and fails the rest's personas.
  for (const [customId, entry] of sent) {
    const batch = batches.find((b) => entry.call.pending!.batchIds?.includes(b.id)) ?? batches.find((b) => b.status !== 'completed') ?? batches[0]!;
    settlements.push([entry.call.pending!.reservation, 0]);
    delete entry.call.pending;
    touched.add(entry.persona);
    const counts = batch.request_counts;
    const cause = `OpenAI batch ${batch.id} ended ${batch.status} before drawing it (${counts?.completed ?? 0} of ${counts?.total ?? '?'} requests done); run the batch file again: what was drawn is kept and not paid again`;
    if (batch.status === 'completed') entry.call.lastError = { error: ErrorNames.UpstreamError, cause: `OpenAI batch ${batch.id} answered nothing for line ${customId}` };
    else entry.persona.failed = { error: ErrorNames.NotDrawnInBatch, cause };
  }
  for (const persona of touched) {
    const spent = persona.calls.find((c) => !c.drawn && !c.pending && c.tries >= MAX_TRIES);
    if (spent && !persona.failed) persona.failed = { error: spent.lastError?.error ?? ErrorNames.UpstreamError, cause: `drawn ${MAX_TRIES} times in OpenAI batches without a usable image: ${spent.lastError?.cause ?? ''}` };
  }
  const more = roundsSpent(state) < MAX_ROUNDS && readyCalls(state).length > 0;
  // Rounds that will not come leave what they would have drawn to the persona's failure.
  if (!more) {
    for (const persona of state.personas) {
      const missing = persona.calls.find((c) => !c.drawn);
      if (missing && !persona.failed) persona.failed = { error: missing.lastError?.error ?? ErrorNames.NotDrawnInBatch, cause: missing.lastError?.cause ?? `${missing.id} was not drawn in ${state.rounds.length} rounds` };
    }
  }
  await inPool(more ? [...touched] : state.personas, WRITE_CONCURRENCY, (persona) => saveDrawnRecord(deps.store, persona));
  await saveRounds(deps.store, state);
  for (const [reservation, usd] of settlements) await deps.governor.settle(reservation, usd);
  if (settlements.length > 0) deps.metrics.record('SpentTodayUsd', await deps.governor.spentToday());
  deps.logger.info('OpenAI batch round collected', { batchId: plan.batchId, round: round.n, statuses: batches.map((b) => b.status), costUsd: state.costUsd });
  return { ...round, status: 'collected', next: more ? 'submit' : 'run' };
}
