/**
 * Batch mode, a round's first half: every image call that is ready (bases, then the grids of drawn
 * bases, then what must be drawn again) becomes a line of an OpenAI batch. Prompts are written and
 * checked before the round that uses them; each line's cost is reserved against the budget, at
 * batch price, before it is sent. What earlier attempts of a persona drew is taken over, never
 * paid again. Returns at once: Step Functions waits for the batch, not a Lambda.
 */
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { mkdtemp, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type OpenAI from 'openai';
import { toFile } from 'openai';
import { basePrompt, gridPrompt, separatePrompt } from '../shared/prompts.ts';
import type { BatchItem, BatchPlan } from '../shared/batch.ts';
import { writePrompt } from '../write-prompt/core.ts';
import { AvatarError, ConfigurationError, ErrorNames } from '../shared/errors.ts';
import { avatarKeys, batchKeys, contentTypes, runKeys } from '../shared/keys.ts';
import { attemptName, attemptsBefore, executionName, MAX_ATTEMPTS } from '../shared/run-name.ts';
import { BATCH_API_PRICE, estimateImageCallCost, modelChain } from '../shared/models.ts';
import { imageCallOptions } from '../shared/openai.ts';
import { batchesMadeOf, FILE_UPLOADS_PER_MINUTE, pacer, roundFileWriter, submitFile, type BatchRequestLine, type RoundFile } from '../shared/openai-batch.ts';
import { inPool } from '../shared/pool.ts';
import {
  loadRounds,
  MAX_REDRAW_ROUNDS,
  MAX_ROUNDS,
  roundsSpent,
  MAX_TRIES,
  personaDraws,
  readyCalls,
  saveDrawnRecord,
  saveRounds,
  drawnKeys,
  type CallState,
  type Drawn,
  type DrawnRecord,
  type PersonaDraws,
  type RoundEvent,
  type RoundsState,
  type RoundStatus,
} from '../shared/rounds.ts';
import { leaseName } from '../shared/governor.ts';
import type { StageDeps } from '../shared/stage.ts';

export type RoundDeps = StageDeps<'store' | 'text' | 'images' | 'governor' | 'fetch' | 'textTimeoutMs' | 'imageTimeoutMs' | 'deadline'>;

/** Time kept, after preparing lines stops, to write the round's files to the bucket and send them. */
const SENDING_MS = 4 * 60_000;

/** How long a round's reservations hold without being collected: OpenAI's completion window, and two hours of polls. */
const ROUND_LEASE_S = 26 * 3600;

/** Personas prepared at once (prompts written, references read). */
const CONCURRENCY = 16;

/** The batch's personas as PlanBatch wrote them, by line. */
async function itemsOf(deps: RoundDeps, plan: BatchPlan): Promise<Map<number, BatchItem>> {
  const items = new Map<number, BatchItem>();
  for await (const text of deps.store.lines(batchKeys(plan.batchId).items)) {
    if (!text.trim()) continue;
    const item = JSON.parse(text) as BatchItem;
    items.set(item.line, item);
  }
  return items;
}

/** A drawn call's images copied from another run of the persona into its current one. */
async function moveDrawn(deps: RoundDeps, persona: PersonaDraws, call: CallState, drawn: Drawn): Promise<void> {
  const moved = drawnKeys(persona, call.id, drawn.keys.length, drawn.format);
  await Promise.all(drawn.keys.map(async (from, i) => deps.store.put(moved[i]!, await deps.store.getBytes(from), contentTypes[drawn.format])));
  call.drawn = { ...drawn, keys: moved };
}

/** An earlier attempt's drawn images, copied into this run: a persona's base or grids are paid once. */
async function takeOver(deps: RoundDeps, item: BatchItem, persona: PersonaDraws): Promise<void> {
  for (const earlier of item.earlier ?? []) {
    const record = await deps.store.getJsonIfExists<DrawnRecord>(runKeys(item.personaId, earlier).drawnInBatch);
    for (const call of persona.calls) {
      const drawn = record?.calls[call.id];
      if (drawn && !call.drawn) await moveDrawn(deps, persona, call, drawn);
    }
  }
}

/**
 * After the personas ran: those whose run did not publish because the identity check refused a
 * grid go on under their next attempt, keeping their base and other grids; the refused grids are
 * drawn again in this round. One whose base check-base refused has the base drawn again from the
 * prompt it wrote, and then its grids. Returns their items, for the personas' workflows to run again.
 */
async function redrawRefused(deps: RoundDeps, state: RoundsState, items: Map<number, BatchItem>): Promise<BatchItem[]> {
  if (state.redraws >= MAX_REDRAW_ROUNDS) return [];
  const again: BatchItem[] = [];
  await inPool(state.personas, CONCURRENCY, async (persona) => {
    if (persona.failed || (await deps.store.getJsonIfExists(avatarKeys(persona.personaId).run(persona.runId).manifest))) return;
    const keys = runKeys(persona.personaId, persona.runId);
    const [base, ...grids] = persona.calls;
    const baseRefusal = await deps.store.getJsonIfExists<{ reason: string; prompt: string; redraws: unknown[] }>(keys.baseRefused);
    const refusals = await Promise.all(grids.map((_, index) => deps.store.getJsonIfExists<{ reason: string }>(keys.identityMismatch(index))));
    // A refused base takes its grids with it: they were drawn from it.
    const refused = baseRefusal && base!.tries < MAX_TRIES ? persona.calls : grids.filter((call, index) => refusals[index] && call.tries < MAX_TRIES);
    const item = items.get(persona.line)!;
    const first = executionName(item.input);
    const attempt = attemptsBefore(first, persona.runId).length + 1;
    if (refused.length === 0 || attempt >= MAX_ATTEMPTS) return;
    const previous = persona.runId;
    persona.runId = attemptName(first, attempt + 1);
    for (const call of persona.calls) {
      const index = grids.indexOf(call);
      if (refused.includes(call)) {
        delete call.drawn;
        call.lastError = baseRefusal ? { error: ErrorNames.NotDrawnInBatch, cause: baseRefusal.reason } : { error: ErrorNames.IdentityMismatch, cause: refusals[index]!.reason };
      } else if (call.drawn) await moveDrawn(deps, persona, call, call.drawn);
    }
    if (baseRefusal) {
      base!.prompt = baseRefusal.prompt;
      await deps.store.putJson(runKeys(persona.personaId, persona.runId).baseRedraws, baseRefusal.redraws);
    }
    again.push({ ...item, name: persona.runId, earlier: [...(item.earlier ?? []), previous] });
  });
  if (again.length > 0) state.redraws++;
  return again.sort((a, b) => a.line - b.line);
}

/** The prompt a call is drawn from: the base's from the bio, a grid's from the written scenes; a safer rewrite after a refusal. */
async function promptFor(deps: RoundDeps, item: BatchItem, persona: PersonaDraws, call: CallState): Promise<string> {
  const keys = runKeys(persona.personaId, persona.runId);
  const target = call.id === 'base' ? 'base' : 'grid';
  const event = { personaId: persona.personaId, runId: persona.runId, persona: item.input.persona };
  const written = async (key: string, write: () => Promise<{ promptKey: string }>) => (await deps.store.getTextIfExists(key)) ?? deps.store.getText((await write()).promptKey);
  const scenes = (text: string) => (target === 'base' ? text : persona.mode === 'separate' ? separatePrompt(text) : gridPrompt(text));
  if (call.safer) return scenes(await written(keys.saferPrompt(target), () => writePrompt({ ...event, rewrite: { target, reason: call.lastError?.cause ?? '' } }, deps)));
  if (target === 'base') {
    const prompt = call.prompt ?? basePrompt(item.input.persona);
    // Kept so a refusal can be rewritten from what was actually sent.
    await deps.store.put(keys.basePrompt, prompt, 'text/plain; charset=utf-8');
    return prompt;
  }
  // Written once per run: the persona's workflow reads this same prompt back for its manifest.
  return scenes(await written(keys.prompt, () => writePrompt(event, deps)));
}

/** A call's line, its prompt checked and its cost reserved; undefined when it cannot be sent (the persona then fails). */
async function lineFor(
  deps: RoundDeps,
  item: BatchItem,
  persona: PersonaDraws,
  call: CallState,
  model: string,
  reference: () => Promise<Record<string, string>>,
  round: number,
  lease: string,
): Promise<BatchRequestLine | undefined> {
  const what = `${call.id === 'base' ? 'base image' : call.id.replace('-', ' ')} for persona ${item.personaId}`;
  const edit = call.id !== 'base';
  try {
    let prompt = await promptFor(deps, item, persona, call);
    if (deps.settings.moderationCheck === 'on') {
      try {
        await deps.images.checkPrompt({ what, prompt, timeoutMs: deps.imageTimeoutMs });
      } catch (error) {
        if ((error as Error).name !== ErrorNames.ContentPolicyViolation || call.safer) throw error;
        // Refused before anything is paid: rewritten once, as in sync mode.
        call.safer = true;
        call.lastError = { error: (error as Error).name, cause: (error as Error).message };
        prompt = await promptFor(deps, item, persona, call);
        await deps.images.checkPrompt({ what, prompt, timeoutMs: deps.imageTimeoutMs });
      }
    }
    const format = edit && persona.mode === 'separate' ? deps.settings.tileFormat : 'png';
    const estimate = estimateImageCallCost(model, { size: deps.settings.imageSize, quality: deps.settings.imageQuality, n: call.count, promptChars: prompt.length, edit });
    const reservation = await deps.governor.reserve({ what, model, images: call.count, estimatedUsd: estimate === null ? null : estimate * BATCH_API_PRICE, budget: item.input.budget ?? null, lease });
    const body: Record<string, unknown> = { model, prompt, n: call.count, ...imageCallOptions(deps.settings, model, format, edit) };
    if (edit) body.images = [await reference().catch(async (error: unknown) => {
      // No line, nothing paid: what was reserved for it goes back.
      await deps.governor.settle(reservation, 0);
      throw error;
    })];
    call.tries++;
    const customId = `${item.line}:${call.id}:${call.tries}:r${round}`;
    call.pending = { customId, reservation, model };
    return { custom_id: customId, method: 'POST', url: edit ? '/v1/images/edits' : '/v1/images/generations', body };
  } catch (error) {
    if (!(error instanceof AvatarError) || error.name === ErrorNames.ConfigurationError) throw error;
    // A refusal ends the persona here, before anything is paid; a passing failure (the moderation
    // or text endpoint down) leaves the call for the next round.
    if (PASSING.has(error.name)) call.lastError = { error: error.name, cause: error.message };
    else persona.failed = { error: error.name, cause: error.message };
    return undefined;
  }
}

const PASSING = new Set<string>([ErrorNames.UpstreamError, ErrorNames.RateLimited, ErrorNames.ImageTimeout]);

/**
 * Data URLs a round's lines may carry in all under OPENAI_BATCH_IMAGE_INPUT=auto: its files are
 * written to the Lambda's /tmp, 512 MB unless configured otherwise (Lambda Developer Guide,
 * "Configure ephemeral storage"); a base of 1.5-3 MB is 2-4 MB as a data URL, in each of its grids' lines.
 */
const DATA_URL_BYTES_PER_ROUND = 100 * 2 ** 20;

/**
 * The reference of a persona's edits: its base, in the line (a data URL) or uploaded (a file id);
 * made once a round. `inline` is what data URLs may still take of the round under `auto`.
 */
export async function referenceOf(deps: RoundDeps, api: OpenAI, persona: PersonaDraws, upload: () => Promise<void>, inline: { bytesLeft: number }): Promise<Record<string, string>> {
  const base = persona.calls[0]!.drawn!;
  const bytes = await deps.store.getBytes(base.keys[0]!);
  const mode = deps.settings.openAiBatchImageInput;
  const dataUrl = `data:image/${base.format};base64,${bytes.toString('base64')}`;
  // Each of its grids not drawn yet carries it in its own line.
  const carried = dataUrl.length * persona.calls.filter((c) => c.id !== 'base' && !c.drawn).length;
  if (mode === 'data-url' || (mode === 'auto' && carried <= inline.bytesLeft)) {
    inline.bytesLeft -= carried;
    return { image_url: dataUrl };
  }
  // Thousands of bases, one upload each: paced under the Files API's own limit.
  await upload();
  const file = await api.files.create({ file: await toFile(bytes, `base.${base.format}`, { type: `image/${base.format}` }), purpose: 'vision' }, { timeout: deps.imageTimeoutMs });
  return { file_id: file.id };
}

export async function submitRound(event: RoundEvent, deps: RoundDeps): Promise<RoundStatus> {
  const { plan } = event;
  const api = deps.text;
  if (!api) throw new ConfigurationError(`batch ${plan.batchId}: OpenAI's Batch API needs OPENAI_API_KEY (and OPENAI_BASE_URL for a compatible server)`);
  const items = await itemsOf(deps, plan);
  let state = await loadRounds(deps.store, plan.batchId);
  // A round this stage prepared and then died submitting (a timeout): finished from its checkpoint.
  if (state?.submitting) {
    const dir = await mkdtemp(join(tmpdir(), 'round-'));
    try {
      return await submitPrepared(deps, api, state, dir, true);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
  const failedBefore = new Set(state?.personas.filter((p) => p.failed).map((p) => p.line));
  if (!state) {
    state = { batchId: plan.batchId, rounds: [], redraws: 0, maps: [], personas: [...items.values()].map((item) => personaDraws(item, deps.settings.defaultImages)), costUsd: 0, syncCostUsd: 0 };
    await inPool(state.personas, CONCURRENCY, (persona) => takeOver(deps, items.get(persona.line)!, persona));
  }
  let next: BatchPlan | undefined;
  if (event.map) {
    // The report reads every Map's results; a redraw's Map writes beside the first.
    if (event.map.ResultWriterDetails) state.maps.push(event.map.ResultWriterDetails.Key);
    const again = await redrawRefused(deps, state, items);
    if (again.length === 0) {
      await saveRounds(deps.store, state);
      return { n: state.rounds.length, batchIds: [], status: 'nothing', waitSeconds: 0 };
    }
    const keys = batchKeys(plan.batchId);
    const itemsKey = `${keys.root}/items-redraw-${state.redraws}.jsonl`;
    await deps.store.put(itemsKey, again.map((item) => `${JSON.stringify(item)}\n`).join(''), 'application/x-ndjson');
    next = { ...plan, itemsKey, resultsPrefix: `${keys.results}/redraw-${state.redraws}`, toRun: again.length, concurrency: Math.min(plan.concurrency, again.length) };
  }
  const n = state.rounds.length + 1;
  const ready = roundsSpent(state) >= MAX_ROUNDS ? [] : readyCalls(state);
  const model = modelChain(deps.settings)[0]!;
  // A persona's grids share one reference: its base read (and uploaded) once.
  const references = new Map<PersonaDraws, Promise<Record<string, string>>>();
  const upload = pacer(FILE_UPLOADS_PER_MINUTE);
  const inline = { bytesLeft: DATA_URL_BYTES_PER_ROUND };
  const referenceFor = (persona: PersonaDraws) => references.get(persona) ?? references.set(persona, referenceOf(deps, api, persona, upload, inline)).get(persona)!;
  const dir = await mkdtemp(join(tmpdir(), 'round-'));
  try {
    // Each line to a file in /tmp as it is built: a round of thousands never whole in memory.
    const writer = roundFileWriter(dir, state.maxLinesPerBatch);
    // The round's lines share a lease (one per round keeps the budget's items small), out of the
    // caps on its own if the batch never collects them: OpenAI's 24 hours, and the polls after.
    const lease = leaseName(`${plan.batchId}-r${n}`, Math.floor(Date.now() / 1000) + ROUND_LEASE_S);
    let broken: unknown;
    // Thousands of prompts may take longer than one invocation: past its time, what is prepared
    // goes in this round and the rest, untouched, in the next.
    let started = 0;
    let cut = false;
    const built = await inPool(ready, CONCURRENCY, async ({ persona, call }, index) => {
      if (started > 0 && Date.now() >= deps.deadline - SENDING_MS) cut = true;
      if (!cut) started++;
      const line =
        broken !== undefined || persona.failed || cut
          ? undefined
          : await lineFor(deps, items.get(persona.line)!, persona, call, model, () => referenceFor(persona), n, lease).catch((error: unknown) => void (broken ??= error));
      await writer.add(index, line ?? undefined);
      return line && { persona, call };
    });
    const files = await writer.files();
    const entries = built.filter((e) => !!e);
    if (broken !== undefined) {
      // The round cannot be sent: every line it reserved gives its money back before it fails.
      for (const { call } of entries) await unsend(deps, call);
      throw broken;
    }
    // Nothing could be sent for a passing cause: Step Functions tries the round again, with backoff.
    const passing = ready.find(({ persona, call }) => !persona.failed && call.lastError && PASSING.has(call.lastError.error) && !call.pending);
    if (entries.length === 0 && passing) throw Object.assign(new Error(passing.call.lastError!.cause), { name: passing.call.lastError!.error });
    // A persona refused in this round (its budget, its prompt) sends none of its lines.
    const dropped = new Set<string>();
    for (const { call } of entries.filter((e) => e.persona.failed)) {
      dropped.add(call.pending!.customId);
      await unsend(deps, call);
    }
    // The checkpoint: the round's files in the bucket, its lines' reservations in the state.
    for (const file of files) {
      if (dropped.size > 0) await keepOnly(join(dir, `${file.key}.jsonl`), file, dropped);
      if (file.customIds.length > 0) await deps.store.putFile(batchKeys(plan.batchId).roundFile(n, file.key), join(dir, `${file.key}.jsonl`), 'application/x-ndjson');
    }
    if (cut) state.partialRounds = (state.partialRounds ?? 0) + 1;
    state.submitting = { n, startedAt: Math.floor(Date.now() / 1000), files: files.filter((f) => f.customIds.length > 0), failedBefore: [...failedBefore], ...(next ? { plan: next } : {}) };
    await saveRounds(deps.store, state);
    return await submitPrepared(deps, api, state, dir, false);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** A line not sent: what it reserved given back, drawn again next round (or its persona fails). */
async function unsend(deps: RoundDeps, call: CallState, why?: { error: string; cause: string }): Promise<void> {
  await deps.governor.settle(call.pending!.reservation, 0);
  delete call.pending;
  if (why) call.lastError = why;
}

/** Rewrites a round file without the lines of personas refused while it was written. */
async function keepOnly(path: string, file: RoundFile, dropped: Set<string>): Promise<void> {
  if (!file.customIds.some((id) => dropped.has(id))) return;
  const kept = createWriteStream(`${path}.kept`);
  for await (const text of createInterface({ input: createReadStream(path), crlfDelay: Infinity })) {
    if (text && !dropped.has((JSON.parse(text) as BatchRequestLine).custom_id)) kept.write(`${text}\n`);
  }
  await new Promise((resolve, reject) => kept.end(resolve).on('error', reject));
  await rename(`${path}.kept`, path);
  file.customIds = file.customIds.filter((id) => !dropped.has(id));
}

/**
 * Submits the prepared round's files not yet made into OpenAI batches, saving the state after
 * each: run again after a timeout, it finds the batches a dead run made (by their metadata)
 * instead of making them twice, and reserves nothing again.
 */
async function submitPrepared(deps: RoundDeps, api: OpenAI, state: RoundsState, dir: string, resumed: boolean): Promise<RoundStatus> {
  const round = state.submitting!;
  const calls = new Map(state.personas.flatMap((p) => p.calls.filter((c) => c.pending).map((c) => [c.pending!.customId, c] as const)));
  let failure: Error | undefined;
  for (const file of round.files) {
    if (file.batchIds || file.failed) continue;
    const metadata = { persona_avatars_batch: state.batchId, round: String(round.n), file: file.key };
    // Only a run after one that died can find batches it did not save.
    let ids = resumed ? await batchesMadeOf(api, metadata, round.startedAt, deps.imageTimeoutMs) : [];
    if (ids.length === 0) {
      const path = join(dir, `${file.key}.jsonl`);
      // A run that died left the file in the bucket; this one may be in another container.
      if (!existsSync(path)) await deps.store.getFile(batchKeys(state.batchId).roundFile(round.n, file.key), path);
      try {
        ids = await submitFile(api, file.endpoint, path, metadata, deps.imageTimeoutMs);
      } catch (error) {
        // No answer is not "not made": a batch created before the answer was lost is adopted.
        ids = await batchesMadeOf(api, metadata, round.startedAt, deps.imageTimeoutMs).catch(() => []);
        if (ids.length === 0) {
          // Not sent, not paid: drawn again next round, or the stage is retried when nothing went.
          failure = error as Error;
          file.failed = { error: failure.name, cause: failure.message };
          for (const id of file.customIds) await unsend(deps, calls.get(id)!, file.failed);
        }
      }
    }
    if (ids.length > 0) {
      file.batchIds = ids;
      for (const id of file.customIds) calls.get(id)!.pending!.batchIds = ids;
    }
    await saveRounds(deps.store, state);
  }
  const batchIds = round.files.flatMap((f) => f.batchIds ?? []);
  delete state.submitting;
  if (batchIds.length > 0) state.rounds.push({ n: round.n, batchIds });
  const failedBefore = new Set(round.failedBefore);
  // Personas refused in this round: their runs read why.
  await inPool(state.personas.filter((p) => p.failed && !failedBefore.has(p.line)), CONCURRENCY, (persona) => saveDrawnRecord(deps.store, persona));
  await saveRounds(deps.store, state);
  await Promise.all(round.files.map((file) => deps.store.delete(batchKeys(state.batchId).roundFile(round.n, file.key))));
  if (batchIds.length === 0 && failure) throw failure;
  deps.logger.info('OpenAI batch round submitted', { batchId: state.batchId, round: round.n, lines: round.files.reduce((n, f) => n + f.customIds.length, 0), openAiBatches: batchIds });
  if (batchIds.length === 0) return { n: round.n - 1, batchIds: [], status: 'nothing', waitSeconds: 0 };
  return { n: round.n, batchIds, status: 'submitted', waitSeconds: deps.settings.openAiBatchPollSeconds, ...(round.plan ? { plan: round.plan } : {}) };
}
