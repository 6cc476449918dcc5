import { NotDrawnInBatch } from '../shared/errors.ts';
import { faceIndexOf, type Nearest } from '../shared/face-index.ts';
import { avatarKeys, runKeys } from '../shared/keys.ts';
import type { Persona } from '../shared/persona.ts';
import { describedLook, type AgeRange } from '../shared/persona-look.ts';
import { redrawBasePrompt } from '../shared/prompts.ts';
import type { StageDeps } from '../shared/stage.ts';
import type { BaseResult } from '../generate-base/core.ts';
import { subjectOf } from '../check-identity/faces.ts';

/** Redraws of a base its checks refused, at most; then it is published, flagged. */
export const BASE_REDRAWS = 2;

export type BaseCheckKind = 'lookalike' | 'gender' | 'age';

/** One redraw: which attempt, and what the base before it missed. */
export interface BaseRedraw {
  attempt: number;
  misses: BaseCheckKind[];
  reasons: string[];
  /** What the refused base cost: it counts in the run's usage like the base kept. */
  refused: Pick<BaseResult, 'model' | 'usage' | 'estimatedCostUsd' | 'api' | 'openAiBatchId'>;
}

export interface BaseCheck {
  policy: 'redraw' | 'flag' | 'off';
  /** What the face model read in the base; null when it found no face (nothing could be checked). */
  face: { gender: 'male' | 'female' | 'unknown'; genderConfidence: number; age: number } | null;
  gender: { asked: 'male' | 'female' | null; pass: boolean; reason: string };
  age: { asked: AgeRange | null; pass: boolean; reason: string };
  lookalike: { threshold: number; nearest: (Nearest['face'] & { similarity: number }) | null; pass: boolean; reason: string };
  redraws: BaseRedraw[];
  /** Published although a check failed (LOOKALIKE_POLICY=flag, or its redraws spent). */
  flagged: boolean;
}

export interface CheckBaseEvent {
  personaId: string;
  runId: string;
  batchId?: string | null;
  persona: Persona;
  /** The base as drawn (by generate-base, first or again). */
  base: BaseResult;
  /** This run's earlier check of its base, when it asked for a redraw: the redraws so far. */
  checked?: { redraws?: BaseRedraw[] } | null;
  imageApi?: 'sync' | 'batch' | null;
}

export type CheckedBase = BaseResult & { check: BaseCheck };
export type BaseRedrawAsked = { redraw: { promptKey: string; attempt: number }; redraws: BaseRedraw[] };

const round = (n: number) => Math.round(n * 1000) / 1000;

/**
 * The base's checks, before any grid is paid for: is it another persona's person (the face index
 * of every accepted base, in flight or published), and does it clearly miss the gender or age the
 * persona states? A miss is drawn again with a prompt that moves away from it (LOOKALIKE_POLICY=
 * redraw, twice at most), or published with its verdicts (flag). An accepted base joins the index.
 */
export async function checkBase(event: CheckBaseEvent, deps: StageDeps<'store' | 'faces' | 'clock'>): Promise<CheckedBase | BaseRedrawAsked> {
  const { lookalikePolicy: policy, lookalikeThreshold: threshold, genderConfidence, ageToleranceYears: tolerance } = deps.settings;
  const keys = runKeys(event.personaId, event.runId);
  // In batch mode each redraw is the run's next attempt: its history comes with it, in the run's folder.
  const redraws = event.checked?.redraws?.length ? event.checked.redraws : event.imageApi === 'batch' ? ((await deps.store.getJsonIfExists<BaseRedraw[]>(keys.baseRedraws)) ?? []) : [];
  const asked = describedLook(event.persona);
  const check: BaseCheck = {
    policy,
    face: null,
    gender: { asked: asked.gender ?? null, pass: true, reason: asked.gender ? 'not checked' : 'nothing to check: the persona names no male or female gender' },
    age: { asked: asked.age ?? null, pass: true, reason: asked.age ? 'not checked' : 'nothing to check: the bios state no age' },
    lookalike: { threshold, nearest: null, pass: true, reason: 'not checked' },
    redraws,
    flagged: false,
  };
  if (policy === 'off') return { ...event.base, check: { ...check, lookalike: { ...check.lookalike, reason: 'not checked (LOOKALIKE_POLICY=off)' } } };

  const subject = subjectOf(await deps.faces.facesIn(await deps.store.getBytes(event.base.baseKey)));
  if (!subject) {
    const none = 'not checked: no face found in the base';
    return { ...event.base, check: { ...check, gender: { ...check.gender, reason: none }, age: { ...check.age, reason: none }, lookalike: { ...check.lookalike, reason: none } } };
  }
  check.face = { gender: subject.gender, genderConfidence: round(subject.genderScore), age: Math.round(subject.age) };
  const read = `read as ${subject.gender} (${check.face.genderConfidence})`;
  if (asked.gender) {
    const miss = subject.gender !== 'unknown' && subject.gender !== asked.gender && subject.genderScore >= genderConfidence;
    check.gender = { asked: asked.gender, pass: !miss, reason: miss ? `${read}, not ${asked.gender} (sure from ${genderConfidence})` : `${read}: no clear miss of ${asked.gender}` };
  }
  if (asked.age) {
    const { min, max, cue } = asked.age;
    const miss = subject.age < min - tolerance || subject.age > max + tolerance;
    const looks = `looks ${check.face.age}`;
    check.age = { asked: asked.age, pass: !miss, reason: miss ? `${looks}, far from ${min}-${max} ("${cue}", ±${tolerance})` : `${looks}: within ${min}-${max} ±${tolerance}` };
  }

  const index = faceIndexOf(deps.store);
  const lookalike = (nearest: Nearest | undefined, at: string) => {
    const alike = nearest !== undefined && nearest.similarity >= threshold;
    check.lookalike = {
      threshold,
      nearest: nearest ? { ...nearest.face, similarity: nearest.similarity } : null,
      pass: !alike,
      reason: !nearest
        ? 'no other persona in the index'
        : alike
          ? `the person of persona ${nearest.face.personaId} (${nearest.similarity} ≥ ${threshold}${at})`
          : `a different person from every other persona (nearest ${nearest.face.personaId}: ${nearest.similarity} < ${threshold})`,
    };
  };
  await index.refresh();
  const mine = index.registeredBy(event.personaId, event.runId);
  if (mine) check.lookalike = { threshold, nearest: null, pass: true, reason: `in the index already (entry ${mine.seq}): this run's check, run again` };
  else lookalike(index.nearest(subject.embedding, event.personaId), '');

  const redrawn = () => askRedraw(event, deps, check, redraws);
  const canRedraw = policy === 'redraw' && redraws.length < BASE_REDRAWS;
  const passes = () => check.gender.pass && check.age.pass && check.lookalike.pass;
  if (!mine && !passes() && canRedraw) return redrawn();

  const face = { personaId: event.personaId, runId: event.runId, ...(event.batchId ? { batchId: event.batchId } : {}), manifestKey: avatarKeys(event.personaId).run(event.runId).manifest, at: deps.clock.now().toISOString() };
  // A base that failed a check and is published anyway still takes its place: no later persona may look like it.
  const registration = await index.register(face, subject.embedding, passes() ? threshold : Infinity);
  if ('collided' in registration) {
    // Another persona's like face was registered first, at the same moment.
    lookalike(registration.collided, ', registered first');
    if (canRedraw) return redrawn();
    await index.register(face, subject.embedding, Infinity);
  }
  check.flagged = !passes();
  if (check.flagged) {
    const why = policy === 'flag' ? 'LOOKALIKE_POLICY=flag' : `after ${BASE_REDRAWS} redraws`;
    deps.logger.warn('base published flagged', { personaId: event.personaId, why, misses: misses(check) });
  }
  return { ...event.base, check };
}

function misses(check: BaseCheck): BaseCheckKind[] {
  return (['lookalike', 'gender', 'age'] as const).filter((k) => !check[k].pass);
}

/**
 * Writes the redraw's prompt, away from what the base missed, and asks the workflow to draw it; in
 * batch mode, marks the base for the batch's next OpenAI round instead (NotDrawnInBatch).
 */
async function askRedraw(event: CheckBaseEvent, deps: StageDeps<'store'>, check: BaseCheck, redraws: BaseRedraw[]): Promise<BaseRedrawAsked> {
  const attempt = redraws.length + 1;
  const missed = misses(check);
  const fixes = [
    ...(check.gender.pass ? [] : [`They are clearly and unmistakably ${check.gender.asked === 'female' ? 'a woman' : 'a man'}.`]),
    ...(check.age.pass || !check.age.asked ? [] : [`They clearly look ${check.age.asked.min} to ${check.age.asked.max} years old.`]),
  ];
  const prompt = redrawBasePrompt(event.persona, attempt, fixes);
  for (const kind of missed) deps.metrics.record('BaseRedraws', 1, { reason: kind });
  const reasons = missed.map((k) => `${k}: ${check[k].reason}`);
  deps.logger.info('base drawn again', { personaId: event.personaId, attempt, reasons });
  const { model, usage, estimatedCostUsd, api, openAiBatchId } = event.base;
  const history = [...redraws, { attempt, misses: missed, reasons, refused: { model, ...(usage ? { usage } : {}), estimatedCostUsd, ...(api ? { api, openAiBatchId } : {}) } }];
  const keys = runKeys(event.personaId, event.runId);
  if (event.imageApi === 'batch') {
    await deps.store.putJson(keys.baseRefused, { reason: reasons.join('; '), prompt, redraws: history });
    throw new NotDrawnInBatch(
      `base of persona ${event.personaId}: ${reasons.join('; ')}; in batch mode the base (and its grids) is drawn again in the batch's next OpenAI batch round (twice at most), under the run's next attempt`,
    );
  }
  const promptKey = keys.baseRedrawPrompt(attempt);
  await deps.store.put(promptKey, prompt, 'text/plain; charset=utf-8');
  return { redraw: { promptKey, attempt }, redraws: history };
}
