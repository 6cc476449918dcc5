/**
 * The upload trigger: persona files put under personas/ start runs. Each persona is validated
 * before anything is spent, and started under a name derived from its id and content, so a
 * notification S3 delivers twice starts one execution; a JSON Lines file starts one batch, named
 * from its content, that runs them all at the account's image rate. What cannot start gets a report under
 * rejected/ naming the file, line and field; the upload itself is never touched.
 */
import { ConfigurationError } from '../shared/errors.ts';
import { batchKeys, Prefixes, rejectedKey } from '../shared/keys.ts';
import type { BatchReport } from '../shared/batch.ts';
import type { RunRequest } from '../shared/persona.ts';
import { idFromFileName, parsePersonaFile, personaFileKind, readPersonaLines, type Problem } from '../shared/run-input.ts';
import { batchName, contentHash, executionName } from '../shared/run-name.ts';
import { startOnce, type Settled } from '../shared/sfn.ts';
import { inPool } from '../shared/pool.ts';
import { isMissingObject } from '../shared/store.ts';
import type { StageDeps } from '../shared/stage.ts';

type TriggerDeps = StageDeps<'store' | 'sfn'>;

/** An S3 event notification, as S3 (or the embedded S3 server) delivers it. */
export interface S3Notification {
  Records?: { eventName?: string; s3: { bucket: { name: string }; object: { key: string } } }[];
}

export interface UploadOutcome {
  key: string;
  /** New executions: a first attempt, or another after a failed one. */
  started: { personaId: string; name: string; executionArn: string; attempt: number }[];
  /** Persona content that already had its execution (a repeated delivery or upload). */
  alreadyStarted: { personaId: string; name: string }[];
  rejected: Problem[];
  reportKey?: string;
  /** A JSON Lines upload: its batch, new or already running. */
  batch?: { name: string; executionArn: string; existing: boolean; attempt: number; personas: number };
}

/** Starts at once per upload: a large JSON Lines file stays well inside the function's time. */
const START_CONCURRENCY = 8;

function uploadedKeys(event: S3Notification, deps: TriggerDeps): string[] {
  return (event.Records ?? [])
    .filter((r) => {
      if (r.s3.bucket.name === deps.store.bucket) return true;
      deps.logger.warn('notification for another bucket ignored', { bucket: r.s3.bucket.name });
      return false;
    })
    .filter((r) => !r.eventName || r.eventName.startsWith('ObjectCreated'))
    // Keys arrive URL-encoded, with spaces as '+'.
    .map((r) => decodeURIComponent(r.s3.object.key.replace(/\+/g, ' ')))
    .filter((key) => key.startsWith(Prefixes.personas));
}

async function startRun(deps: TriggerDeps, stateMachineArn: string, request: RunRequest, outcome: UploadOutcome): Promise<void> {
  const name = executionName(request);
  const personaId = request.persona.id;
  // A taken name means this persona content was started before (Step Functions keeps names for
  // 90 days): a second delivery of the same notification ends here.
  const { executionArn, existing, attempt } = await startOnce(deps.sfn, stateMachineArn, name, request);
  const started = executionArn.split(':').at(-1)!;
  if (existing) outcome.alreadyStarted.push({ personaId, name: started });
  else outcome.started.push({ personaId, name: started, executionArn, attempt });
}

async function startEach(deps: TriggerDeps, key: string, outcome: UploadOutcome): Promise<void> {
  const stateMachineArn = deps.settings.stateMachineArn;
  if (!stateMachineArn) throw new ConfigurationError('STATE_MACHINE_ARN is not set: the upload trigger does not know which workflow to start');
  const text = await deps.store.getText(key);
  const { requests, problems } = personaFileKind(key)
    ? parsePersonaFile(key, text)
    : { requests: [], problems: [{ field: '(file)', message: 'not a persona file: name it .json (one persona) or .jsonl (one per line)' }] };
  outcome.rejected.push(...problems);
  await inPool(requests, START_CONCURRENCY, (request) => startRun(deps, stateMachineArn, request, outcome));
}

/** A batch that ran to its end with every persona published or skipped stands; any other is run again. */
function batchSettled(store: TriggerDeps['store']): Settled {
  return async (status, name) => {
    if (status === 'RUNNING' || status === 'PENDING_REDRIVE') return true;
    if (status !== 'SUCCEEDED') return false;
    const report = await store.getJsonIfExists<Pick<BatchReport, 'counts'>>(batchKeys(name).report);
    return report?.counts.FAILED === 0;
  };
}

/** Starts the batch `name` of the JSON Lines file at `personasKey`, unless it is running or done. */
export async function startBatch(deps: Pick<TriggerDeps, 'store' | 'sfn'>, batchArn: string, name: string, personasKey: string, options: { budgetUsd?: number; openAiBatch?: boolean } = {}) {
  return startOnce(deps.sfn, batchArn, name, { personasKey, ...options }, batchSettled(deps.store));
}

/** Problems listed per upload; past this many only their number is kept, so any file fits. */
const MAX_PROBLEMS = 1000;

/**
 * A JSON Lines upload: every line checked as it streams (bad ones reported by line number), then
 * one batch started for the valid ones, which the batch workflow reads from the same file.
 */
async function startBatchFromUpload(deps: TriggerDeps, batchArn: string, key: string, outcome: UploadOutcome): Promise<void> {
  const hash = contentHash();
  let valid = 0;
  let more = 0;
  const lines = async function* () {
    for await (const line of deps.store.lines(key)) {
      hash.add(line);
      yield line;
    }
  };
  for await (const parsed of readPersonaLines(lines())) {
    if ('request' in parsed) valid++;
    else if (outcome.rejected.length < MAX_PROBLEMS) outcome.rejected.push(parsed.problem);
    else more++;
  }
  if (more > 0) outcome.rejected.push({ field: '(file)', message: `${more} more lines are not valid personas` });
  if (valid === 0) {
    if (outcome.rejected.length === 0) outcome.rejected.push({ field: '(file)', message: 'no personas in the file: write one persona per line' });
    return;
  }
  const { executionArn, existing, attempt } = await startBatch(deps, batchArn, batchName(idFromFileName(key), hash.hex()), key);
  outcome.batch = { name: executionArn.split(':').at(-1)!, executionArn, existing, attempt, personas: valid };
}

async function handleUpload(deps: TriggerDeps, key: string): Promise<UploadOutcome | undefined> {
  const outcome: UploadOutcome = { key, started: [], alreadyStarted: [], rejected: [] };
  const batchArn = deps.settings.batchStateMachineArn;
  try {
    if (batchArn && personaFileKind(key) === 'jsonl') await startBatchFromUpload(deps, batchArn, key, outcome);
    else await startEach(deps, key, outcome);
  } catch (error) {
    // Deleted before this delivery reached us: nothing to start.
    if (!isMissingObject(error)) throw error;
    deps.logger.warn('uploaded persona file is gone', { key });
    return undefined;
  }
  const problems = outcome.rejected;
  const reportKey = rejectedKey(key);
  if (problems.length === 0) {
    // A corrected upload: the report about its earlier version no longer applies.
    await deps.store.delete(reportKey);
    return outcome;
  }
  outcome.reportKey = reportKey;
  await deps.store.putJson(reportKey, {
    key,
    rejectedAt: new Date().toISOString(),
    problems,
    started: [...outcome.started, ...outcome.alreadyStarted].map((s) => s.personaId),
    ...(outcome.batch ? { batch: outcome.batch.name, batchPersonas: outcome.batch.personas } : {}),
    fix: 'correct what is named here and upload the file again; personas that already started do not start twice',
  });
  deps.logger.warn('upload has invalid personas', { key, reportKey, problems });
  return outcome;
}

export async function startFromUpload(event: S3Notification, deps: TriggerDeps): Promise<UploadOutcome[]> {
  const outcomes: UploadOutcome[] = [];
  for (const key of uploadedKeys(event, deps)) {
    const outcome = await handleUpload(deps, key);
    if (outcome) outcomes.push(outcome);
  }
  return outcomes;
}
