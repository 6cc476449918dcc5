/**
 * The upload trigger: persona files put under personas/ start runs. Each persona is validated
 * before anything is spent, and started under a name derived from its id and content, so a
 * notification S3 delivers twice starts one execution. What cannot start gets a report under
 * rejected/ naming the file, line and field; the upload itself is never touched.
 */
import { createHash } from 'node:crypto';
import { ConfigurationError } from '../shared/errors.ts';
import { Prefixes, rejectedKey } from '../shared/keys.ts';
import type { RunRequest } from '../shared/persona.ts';
import { parsePersonaFile, personaFileKind, type Problem } from '../shared/run-input.ts';
import { startOnce } from '../shared/sfn.ts';
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
}

/** Step Functions allows 80 characters; these are also safe in keys, logs and URLs. */
export const EXECUTION_NAME_PATTERN = /^[A-Za-z0-9_-]{1,80}$/;
const HASH_LENGTH = 16;
/** Room for an attempt's suffix ("-9") within the 80 characters Step Functions allows. */
const ATTEMPT_SUFFIX = 2;

/** Starts at once per upload: a large JSON Lines file stays well inside the function's time. */
const START_CONCURRENCY = 8;

/** JSON with sorted keys: the same persona hashes the same whatever order its fields came in. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value).filter(([, v]) => v !== undefined);
    return `{${entries
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`)
      .join(',')}}`;
  }
  return JSON.stringify(value);
}

/**
 * `{personaId}-{hash of the request}`: the same request always gets the same, valid name. The
 * request is hashed as asked (no deployment default filled in), so every way of starting it agrees.
 */
export function executionName(request: RunRequest): string {
  const hash = createHash('sha256').update(canonical(request)).digest('hex').slice(0, HASH_LENGTH);
  const id = request.persona.id.replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 80 - HASH_LENGTH - 1 - ATTEMPT_SUFFIX);
  return `${id}-${hash}`;
}

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

async function startAll(deps: TriggerDeps, stateMachineArn: string, requests: RunRequest[], outcome: UploadOutcome): Promise<void> {
  const queue = [...requests];
  const worker = async () => {
    for (let request = queue.shift(); request; request = queue.shift()) await startRun(deps, stateMachineArn, request, outcome);
  };
  await Promise.all(Array.from({ length: Math.min(START_CONCURRENCY, queue.length) }, worker));
}

async function handleUpload(deps: TriggerDeps, stateMachineArn: string, key: string): Promise<UploadOutcome | undefined> {
  let text: string;
  try {
    text = await deps.store.getText(key);
  } catch (error) {
    // Deleted before this delivery reached us: nothing to start.
    if (!isMissingObject(error)) throw error;
    deps.logger.warn('uploaded persona file is gone', { key });
    return undefined;
  }
  const { requests, problems } = personaFileKind(key)
    ? parsePersonaFile(key, text)
    : { requests: [], problems: [{ field: '(file)', message: 'not a persona file: name it .json (one persona) or .jsonl (one per line)' }] };
  const outcome: UploadOutcome = { key, started: [], alreadyStarted: [], rejected: problems };
  await startAll(deps, stateMachineArn, requests, outcome);
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
    fix: 'correct what is named here and upload the file again; personas that already started do not start twice',
  });
  deps.logger.warn('upload has invalid personas', { key, reportKey, problems });
  return outcome;
}

export async function startFromUpload(event: S3Notification, deps: TriggerDeps): Promise<UploadOutcome[]> {
  const stateMachineArn = deps.settings.stateMachineArn;
  if (!stateMachineArn) throw new ConfigurationError('STATE_MACHINE_ARN is not set: the upload trigger does not know which workflow to start');
  const outcomes: UploadOutcome[] = [];
  for (const key of uploadedKeys(event, deps)) {
    const outcome = await handleUpload(deps, stateMachineArn, key);
    if (outcome) outcomes.push(outcome);
  }
  return outcomes;
}
