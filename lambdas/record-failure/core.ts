import { causeMessage } from '../shared/errors.ts';
import { avatarKeys } from '../shared/keys.ts';
import { PERSONA_ID_PATTERN } from '../shared/persona.ts';
import { safeRunId } from '../plan-run/core.ts';
import type { StageDeps } from '../shared/stage.ts';
import { personaIdOf } from '../shared/stage.ts';

export interface RecordFailureEvent {
  /**
   * The execution input, as given: the persona may be what was wrong. A string when it comes from
   * the execution's status event (a run that timed out or was stopped).
   */
  input: unknown;
  runId: string;
  /** What a Catch put in the state: `{ Error, Cause }`. */
  error: { Error: string; Cause?: string };
}

export interface FailureRecord {
  error: string;
  cause: string;
  failureKey: string;
  /** A record was there already (the workflow's own, before its status event): it is kept. */
  alreadyRecorded?: boolean;
}

function parseOrKeep(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** Persona ids that cannot be trusted in a key are filed under this one. */
export const UNKNOWN_PERSONA = '_invalid';

/**
 * Writes why the run failed next to where its images would have gone, so no failure is silent.
 * Once per run: a failed run is recorded by its workflow's Catch and again from its status event,
 * and the first record, the one with the stage's own error, is the one kept.
 */
export async function recordFailure(event: RecordFailureEvent, deps: StageDeps<'store'>): Promise<FailureRecord> {
  const input = typeof event.input === 'string' ? parseOrKeep(event.input) : event.input;
  // An execution input names its persona, or is the persona itself.
  const id = personaIdOf({ input }) ?? personaIdOf({ persona: input });
  const personaId = id && PERSONA_ID_PATTERN.test(id) ? id : UNKNOWN_PERSONA;
  const failureKey = avatarKeys(personaId).failure(safeRunId(event.runId));
  const cause = causeMessage(event.error.Cause);
  const record = {
    personaId: id ?? null,
    runId: event.runId,
    failedAt: new Date().toISOString(),
    error: event.error.Error,
    cause,
    retry: 'fix what the cause names, then upload the persona again or run `avatars start` with it: a failed run is started again as a new attempt',
  };
  const written = await deps.store.putNew(failureKey, `${JSON.stringify(record, null, 2)}\n`, 'application/json');
  return { error: event.error.Error, cause, failureKey, ...(written ? {} : { alreadyRecorded: true }) };
}
