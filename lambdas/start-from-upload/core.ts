/**
 * The upload trigger: persona files put under personas/ start runs. Each persona is validated
 * before anything is spent, and started under a name derived from its id and content, so a
 * notification S3 delivers twice starts one execution. What cannot start gets a report under
 * rejected/ naming the file, line and field; the upload itself is never touched.
 */
import { createHash } from 'node:crypto';
import { ExecutionAlreadyExists, StartExecutionCommand } from '@aws-sdk/client-sfn';
import { ConfigurationError, InvalidPersona } from '../shared/errors.ts';
import { Prefixes, rejectedKey } from '../shared/keys.ts';
import { parseRunRequest, type RunRequest } from '../shared/persona.ts';
import type { StageDeps } from '../shared/stage.ts';

/** An S3 event notification (bucket notification, or what s3rver emits). */
export interface S3Notification {
  Records?: { eventName?: string; s3: { bucket: { name: string }; object: { key: string } } }[];
}

export interface Problem {
  line?: number;
  field: string;
  message: string;
}

export interface UploadOutcome {
  key: string;
  started: { name: string; executionArn: string; personaId: string }[];
  duplicates: { name: string; personaId: string }[];
  rejected: Problem[];
  reportKey?: string;
}

/** Step Functions names: at most 80 characters; these are also safe in logs and keys. */
export const EXECUTION_NAME_MAX = 80;
export const EXECUTION_NAME_PATTERN = /^[A-Za-z0-9_-]{1,80}$/;

function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value)
      .sort()
      .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonical((value as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value);
}

/** `{personaId}-{hash of the request}`: the same persona content always gets the same name. */
export function executionName(request: RunRequest): string {
  const hash = createHash('sha256').update(canonical(request)).digest('hex').slice(0, 16);
  const id = request.persona.id.replace(/[^A-Za-z0-9_-]/g, '-').slice(0, EXECUTION_NAME_MAX - hash.length - 1);
  return `${id}-${hash}`;
}

function problemOf(error: unknown, line?: number): Problem {
  const at = line === undefined ? {} : { line };
  if (error instanceof InvalidPersona) return { ...at, field: error.field, message: error.message };
  if (error instanceof SyntaxError) return { ...at, field: '(json)', message: `not valid JSON: ${error.message}` };
  throw error;
}

/** The requests in one uploaded file: a JSON persona or run request, or JSON Lines of them. */
export function parseUpload(key: string, text: string): { requests: RunRequest[]; problems: Problem[] } {
  const requests: RunRequest[] = [];
  const problems: Problem[] = [];
  const read = (source: string, line?: number) => {
    try {
      const value = JSON.parse(source) as Record<string, unknown>;
      requests.push(parseRunRequest(value && typeof value === 'object' && 'persona' in value ? value : { persona: value }));
    } catch (error) {
      problems.push(problemOf(error, line));
    }
  };
  if (key.endsWith('.jsonl')) {
    text.split('\n').forEach((line, i) => {
      if (line.trim()) read(line, i + 1);
    });
  } else {
    read(text);
  }
  return { requests, problems };
}

function uploadedKeys(event: S3Notification): { bucket: string; key: string }[] {
  return (event.Records ?? [])
    .filter((r) => !r.eventName || r.eventName.startsWith('ObjectCreated'))
    // Keys arrive URL-encoded, spaces as '+'.
    .map((r) => ({ bucket: r.s3.bucket.name, key: decodeURIComponent(r.s3.object.key.replace(/\+/g, ' ')) }))
    .filter(({ key }) => key.startsWith(Prefixes.personas) && (key.endsWith('.json') || key.endsWith('.jsonl')));
}

async function startOne(deps: StageDeps, stateMachineArn: string, request: RunRequest, outcome: UploadOutcome): Promise<void> {
  const name = executionName(request);
  try {
    const started = await deps.sfn.send(new StartExecutionCommand({ stateMachineArn, name, input: JSON.stringify(request) }));
    outcome.started.push({ name, executionArn: started.executionArn!, personaId: request.persona.id });
  } catch (error) {
    // Same name, same input: Step Functions answers with the first execution; a name reused
    // with other input is refused. Either way this persona content already has its run.
    if (!(error instanceof ExecutionAlreadyExists)) throw error;
    outcome.duplicates.push({ name, personaId: request.persona.id });
  }
}

export async function startFromUpload(event: S3Notification, deps: StageDeps): Promise<UploadOutcome[]> {
  const stateMachineArn = deps.settings.stateMachineArn;
  if (!stateMachineArn) throw new ConfigurationError('STATE_MACHINE_ARN is not set: the upload trigger does not know which workflow to start');
  const outcomes: UploadOutcome[] = [];
  for (const { key } of uploadedKeys(event)) {
    const { requests, problems } = parseUpload(key, await deps.store.getText(key));
    const outcome: UploadOutcome = { key, started: [], duplicates: [], rejected: problems };
    for (const request of requests) await startOne(deps, stateMachineArn, request, outcome);
    if (problems.length > 0) {
      outcome.reportKey = rejectedKey(key);
      await deps.store.putJson(outcome.reportKey, {
        key,
        rejectedAt: new Date().toISOString(),
        started: outcome.started.map((s) => s.personaId),
        problems,
        fix: `correct the ${problems.length === 1 ? 'entry' : 'entries'} named here and upload the file again; the entries that started will not start twice`,
      });
      deps.logger.warn('upload had invalid personas', { key, problems });
    }
    outcomes.push(outcome);
  }
  return outcomes;
}
