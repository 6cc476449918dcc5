/**
 * A Step Functions API on loopback (the AWS JSON 1.0 protocol the SDK and the AWS CLI speak)
 * whose state machines are the synthesized ones (a persona, a batch), run by the local runner;
 * a batch's child executions are executions here like any other. It keeps the
 * service's rules that callers rely on: execution names are unique, a repeated start with the
 * same name and input while the first runs answers with that execution, anything else reusing
 * a name is ExecutionAlreadyExists, also across processes that share a bucket; StopExecution
 * aborts a running execution. So `avatars start`, the upload trigger and `avatars dev`
 * run against the real @aws-sdk/client-sfn, here as on AWS.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { avatarKeys, batchKeys, runKeys } from '../lambdas/shared/keys.ts';
import type { DrawnRecord } from '../lambdas/shared/rounds.ts';
import { executionArn } from '../lambdas/shared/sfn.ts';
import type { Deps } from '../lambdas/shared/stage.ts';
import { synthesizeWorkflows, type SynthesizedWorkflows } from './definition.ts';
import { listenOnLoopback, readBody, sendJson } from './loopback-server.ts';
import { runLocally, type ChildExecutions, type ProgressEvent, type RunOutcome } from './runner.ts';


/** One event of GetExecutionHistory, as the service writes it (timestamps in epoch seconds). */
interface HistoryEntry {
  timestamp: number;
  type: string;
  [details: string]: unknown;
}

type WireHistoryEvent = HistoryEntry & { id: number; previousEventId: number };

export interface LocalExecution {
  executionArn: string;
  machine: keyof SynthesizedWorkflows;
  name: string;
  input: string;
  startDate: number;
  stopDate?: number;
  /** Set when the execution ends. */
  outcome?: RunOutcome<unknown>;
  history: WireHistoryEvent[];
  done: Promise<void>;
  /** StopExecution: aborts a running execution with its error and cause. */
  stop?: AbortController;
}

export interface LocalStepFunctionsOptions {
  /** The stages' clients: every execution runs its tasks with them. */
  deps: Deps;
  /** What time it is for the API's token buckets (ms); default: the system's. */
  now?: () => number;
  /** Pause before each retry instead of the deployed backoff. */
  retryDelayMs?: number;
  onProgress?: (execution: LocalExecution, event: ProgressEvent) => void;
  onEnd?: (execution: LocalExecution) => void | Promise<void>;
}

export interface LocalStepFunctions {
  endpoint: string;
  stateMachineArn: string;
  batchStateMachineArn: string;
  /** By execution ARN. */
  executions: Map<string, LocalExecution>;
  /** A batch's startExecution.sync, run here: a taken name is refused as the service refuses it. */
  children: ChildExecutions;
  /** Resolves once every execution started so far has ended. */
  settled(): Promise<void>;
  /** Waits for running executions, then stops listening. */
  close(): Promise<void>;
}

export const isRunning = (execution: LocalExecution) => execution.outcome === undefined;
const statusOf = (execution: LocalExecution) => execution.outcome?.status ?? 'RUNNING';

class ApiError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.code = code;
  }
}

/** What Step Functions refuses in a name: white space, brackets, wildcards, some punctuation, control characters. */
const INVALID_NAME = /[\s<>{}[\]?*"#%\\^|~`$&,;:/\u0000-\u001f\u007f-\u009f]/;

const seconds = (ms: number) => ms / 1000;

/** The service's own event names: TaskStateEntered, MapStateExited, TaskFailed… */
function historyEventOf(event: ProgressEvent): HistoryEntry | undefined {
  const type = event.stateType ?? 'Task';
  const timestamp = seconds(event.at);
  switch (event.kind) {
    case 'entered':
      return { timestamp, type: `${type}StateEntered`, stateEnteredEventDetails: { name: event.state } };
    case 'exited':
      return { timestamp, type: `${type}StateExited`, stateExitedEventDetails: { name: event.state } };
    case 'failed':
      return type === 'Task'
        ? { timestamp, type: 'TaskFailed', taskFailedEventDetails: { resourceType: 'lambda', resource: 'invoke', error: event.error, cause: event.cause } }
        : undefined;
    default:
      return undefined;
  }
}

/**
 * The API's throttling, as Step Functions documents it for Standard workflows in us-east-1
 * ("Step Functions service quotas": quotas related to API action throttling): a token bucket per
 * action and account, of this size, refilled at this rate a second; past it, ThrottlingException.
 */
export const API_TOKEN_BUCKETS: Record<string, { size: number; refillPerSecond: number }> = {
  StartExecution: { size: 1300, refillPerSecond: 300 },
  DescribeExecution: { size: 300, refillPerSecond: 15 },
  StopExecution: { size: 1000, refillPerSecond: 200 },
  GetExecutionHistory: { size: 400, refillPerSecond: 20 },
  ListExecutions: { size: 200, refillPerSecond: 5 },
};

function tokenBuckets(now: () => number) {
  const buckets = new Map<string, { tokens: number; at: number }>();
  return (action: string): boolean => {
    const quota = API_TOKEN_BUCKETS[action];
    if (!quota) return true;
    const t = now();
    const bucket = buckets.get(action) ?? { tokens: quota.size, at: t };
    bucket.tokens = Math.min(quota.size, bucket.tokens + ((t - bucket.at) / 1000) * quota.refillPerSecond);
    bucket.at = t;
    buckets.set(action, bucket);
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
  };
}

export async function startLocalStepFunctions(options: LocalStepFunctionsOptions): Promise<LocalStepFunctions> {
  const executions = new Map<string, LocalExecution>();
  const takeToken = tokenBuckets(options.now ?? Date.now);
  const workflows = await synthesizeWorkflows();
  const machines = Object.fromEntries((Object.keys(workflows) as (keyof SynthesizedWorkflows)[]).map((m) => [workflows[m].stateMachineArn, m]));
  const stateMachineArn = workflows.persona.stateMachineArn;

  const append = (execution: LocalExecution, event: HistoryEntry, previousEventId = execution.history.length) => {
    const id = execution.history.length + 1;
    execution.history.push({ id, previousEventId, ...event });
    return id;
  };

  /**
   * Executions live in this process, but a name is taken for good once a run under it left
   * anything in the bucket, whichever process ran it (an earlier `avatars invoke`, `avatars dev`),
   * as the service keeps names for 90 days: a published run SUCCEEDED; a failure record, or run
   * files with neither (its process ended mid-run), FAILED. Read from S3, so any process sharing
   * the bucket agrees.
   */
  async function endedElsewhere(machine: keyof SynthesizedWorkflows, name: string, input: string): Promise<RunOutcome<unknown> | undefined> {
    const { store } = options.deps;
    const ended = (outcome: { output: unknown } | { error: string; cause: string }): RunOutcome<unknown> =>
      'output' in outcome ? { status: 'SUCCEEDED', runId: name, output: outcome.output, events: [], ms: 0 } : { status: 'FAILED', runId: name, ...outcome, events: [], ms: 0 };
    if (machine === 'batch') {
      const keys = batchKeys(name);
      if (!(await store.getJsonIfExists(keys.plan))) return undefined;
      const report = await store.getJsonIfExists<{ counts: unknown }>(keys.report);
      return ended(report ? { output: { reportKey: keys.report, indexKey: keys.index, counts: report.counts } } : { error: 'States.Runtime', cause: `batch ${name} was planned but never reported: its process ended early` });
    }
    const personaId = (JSON.parse(input) as { persona?: { id?: unknown } }).persona?.id;
    if (typeof personaId !== 'string') return undefined;
    const keys = avatarKeys(personaId);
    const published = keys.run(name);
    const manifestKey = published.manifest;
    const manifest = await store.getJsonIfExists<{ images: { key: string }[] }>(manifestKey);
    if (manifest) return ended({ output: { personaId, runId: name, manifestKey, images: manifest.images, currentManifestKey: keys.manifest } });
    const failure = await store.getJsonIfExists<{ error: string; cause: string }>(keys.failure(name));
    if (failure) return ended({ error: failure.error, cause: failure.cause });
    // Files a batch's OpenAI rounds wrote for the run before it started are not the run's own.
    const working = runKeys(personaId, name);
    const drawn = await store.getJsonIfExists<DrawnRecord>(working.drawnInBatch);
    const beforeRun = new Set(drawn ? [working.drawnInBatch, working.basePrompt, working.prompt, working.saferPrompt('base'), working.saferPrompt('grid'), ...Object.values(drawn.calls).flatMap((d) => d.keys)] : []);
    // Listed whole (a run folder holds a few dozen files): s3rver fails a listing cut short by MaxKeys.
    const listed = await Promise.all([working.folder, published.folder].map((Prefix) => store.s3.send(new ListObjectsV2Command({ Bucket: store.bucket, Prefix }))));
    if (listed.some((l) => (l.Contents ?? []).some((o) => !beforeRun.has(o.Key!)))) {
      return ended({ error: 'States.Runtime', cause: `run ${name} left files but neither published nor recorded a failure: its process ended early` });
    }
    return undefined;
  }

  /** StartExecution's rules: a name is unique per state machine, unless the same input is still running. */
  async function startExecution(machineArn: string, name: string, input: string): Promise<LocalExecution> {
    const arn = executionArn(machineArn, name);
    if (!executions.has(arn)) {
      const outcome = await endedElsewhere(machines[machineArn]!, name, input);
      if (outcome) remember(machineArn, name, input, outcome);
    }
    const existing = executions.get(arn);
    if (existing) {
      if (isRunning(existing) && existing.input === input) return existing;
      throw new ApiError('ExecutionAlreadyExists', `Execution Already Exists: '${existing.executionArn}'`);
    }
    return start(machineArn, name, input);
  }

  /** A batch's startExecution.sync: an execution here, followed to its end. */
  const children: ChildExecutions = {
    run: async (machineArn, name, input) => {
      let child: LocalExecution;
      try {
        child = await startExecution(machineArn, name, JSON.stringify(input));
      } catch (error) {
        if (!(error instanceof ApiError)) throw error;
        const refused = new Error(error.message);
        refused.name = `StepFunctions.${error.code}Exception`;
        throw refused;
      }
      await child.done;
      return child.outcome!;
    },
  };

  function begin(machineArn: string, name: string, input: string): LocalExecution {
    const startDate = Date.now();
    const machine = machines[machineArn]!;
    const execution: LocalExecution = { executionArn: executionArn(machineArn, name), machine, name, input, startDate, history: [], done: Promise.resolve() };
    append(execution, { timestamp: seconds(startDate), type: 'ExecutionStarted', executionStartedEventDetails: { input, roleArn: 'arn:aws:iam::000000000000:role/local' } });
    executions.set(execution.executionArn, execution);
    return execution;
  }

  function end(execution: LocalExecution, outcome: RunOutcome<unknown>): void {
    execution.outcome = outcome;
    execution.stopDate = Date.now();
    append(
      execution,
      outcome.status === 'SUCCEEDED'
        ? { timestamp: seconds(execution.stopDate), type: 'ExecutionSucceeded', executionSucceededEventDetails: { output: JSON.stringify(outcome.output) } }
        : outcome.status === 'ABORTED'
          ? { timestamp: seconds(execution.stopDate), type: 'ExecutionAborted', executionAbortedEventDetails: { error: outcome.error, cause: outcome.cause } }
          : { timestamp: seconds(execution.stopDate), type: 'ExecutionFailed', executionFailedEventDetails: { error: outcome.error, cause: outcome.cause } },
    );
  }

  /** An execution another process ran, known here by what it left in the bucket. */
  function remember(machineArn: string, name: string, input: string, outcome: RunOutcome<unknown>): void {
    end(begin(machineArn, name, input), outcome);
  }

  function start(machineArn: string, name: string, input: string): LocalExecution {
    const execution = begin(machineArn, name, input);
    const { machine } = execution;
    // As on the service, a state's later events point back to its entry, and the states of a
    // Map iteration back to a MapIterationStarted event with its index, so readers can tell
    // which of two grids running side by side an event belongs to.
    const entries = new Map<string, number>();
    const iterations = new Map<number, number>();
    let map = '';
    execution.stop = new AbortController();
    execution.done = runLocally({
      signal: execution.stop.signal,
      machine,
      children,
      input: JSON.parse(input),
      deps: options.deps,
      runId: name,
      retryDelayMs: options.retryDelayMs ?? 0,
      onProgress: (event) => {
        const wire = historyEventOf(event);
        const thread = `${event.state}#${event.index ?? ''}`;
        if (event.kind === 'entered' && event.stateType === 'Map') map = event.state;
        if (event.kind === 'entered' && event.index !== undefined && !iterations.has(event.index)) {
          iterations.set(event.index, append(execution, { timestamp: seconds(event.at), type: 'MapIterationStarted', mapIterationStartedEventDetails: { name: map, index: event.index } }));
        }
        if (wire && event.kind === 'entered') entries.set(thread, append(execution, wire, event.index === undefined ? undefined : iterations.get(event.index)));
        else if (wire) append(execution, wire, entries.get(thread));
        options.onProgress?.(execution, event);
      },
    }).then(async (outcome) => {
      end(execution, outcome);
      await options.onEnd?.(execution);
    });
    return execution;
  }

  function executionNamed(arn: unknown): LocalExecution {
    const execution = typeof arn === 'string' ? executions.get(arn) : undefined;
    if (!execution) throw new ApiError('ExecutionDoesNotExist', `Execution Does Not Exist: '${String(arn)}'`);
    return execution;
  }

  function checkStateMachine(arn: unknown): string {
    if (typeof arn !== 'string' || !machines[arn]) throw new ApiError('StateMachineDoesNotExist', `State Machine Does Not Exist: '${String(arn)}' (this local endpoint serves ${Object.keys(machines).join(' and ')})`);
    return arn;
  }

  const summary = (e: LocalExecution) => ({
    executionArn: e.executionArn,
    stateMachineArn: workflows[e.machine].stateMachineArn,
    name: e.name,
    status: statusOf(e),
    startDate: seconds(e.startDate),
    ...(e.stopDate ? { stopDate: seconds(e.stopDate) } : {}),
  });

  const operations: Record<string, (body: Record<string, unknown>) => unknown> = {
    async StartExecution(body) {
      const machineArn = checkStateMachine(body.stateMachineArn);
      const name = body.name === undefined ? crypto.randomUUID() : String(body.name);
      if (name.length < 1 || name.length > 80 || INVALID_NAME.test(name)) throw new ApiError('InvalidName', `Invalid Name: '${name}'`);
      const input = body.input === undefined ? '{}' : String(body.input);
      try {
        JSON.parse(input);
      } catch (error) {
        throw new ApiError('InvalidExecutionInput', `Invalid State Machine Execution Input: '${(error as Error).message}'`);
      }
      const execution = await startExecution(machineArn, name, input);
      return { executionArn: execution.executionArn, startDate: seconds(execution.startDate) };
    },
    DescribeExecution(body) {
      const e = executionNamed(body.executionArn);
      return {
        ...summary(e),
        input: e.input,
        ...(e.outcome?.status === 'SUCCEEDED' ? { output: JSON.stringify(e.outcome.output) } : {}),
        ...(e.outcome && e.outcome.status !== 'SUCCEEDED' && e.outcome.error ? { error: e.outcome.error } : {}),
        ...(e.outcome && e.outcome.status !== 'SUCCEEDED' && e.outcome.cause ? { cause: e.outcome.cause } : {}),
      };
    },
    /** As the service: a running execution ends ABORTED, with the error and cause given; an ended one stays as it ended. */
    async StopExecution(body) {
      const e = executionNamed(body.executionArn);
      if (isRunning(e)) {
        e.stop?.abort({ ...(body.error ? { error: String(body.error) } : {}), ...(body.cause ? { cause: String(body.cause) } : {}) });
        await e.done;
      }
      return { stopDate: seconds(e.stopDate ?? Date.now()) };
    },
    GetExecutionHistory(body) {
      const e = executionNamed(body.executionArn);
      const events = body.reverseOrder ? [...e.history].reverse() : e.history;
      const from = Number(body.nextToken ?? 0);
      const size = Math.min(Number(body.maxResults) || 100, 1000);
      const page = events.slice(from, from + size);
      return { events: page, ...(from + size < events.length ? { nextToken: String(from + size) } : {}) };
    },
    ListExecutions(body) {
      const machine = machines[checkStateMachine(body.stateMachineArn)];
      const listed = [...executions.values()].filter((e) => e.machine === machine && (!body.statusFilter || statusOf(e) === body.statusFilter)).reverse();
      // Pages of maxResults (1 to 1000; 100 when not given), as the API pages them.
      const size = body.maxResults === undefined ? 100 : Number(body.maxResults);
      if (!Number.isInteger(size) || size < 1 || size > 1000) throw new ApiError('ValidationException', `1 validation error detected: Value '${String(body.maxResults)}' at 'maxResults' failed to satisfy constraint: Member must have value less than or equal to 1000`);
      const from = Number(body.nextToken ?? 0);
      const page = listed.slice(from, from + size);
      return { executions: page.map(summary), ...(from + size < listed.length ? { nextToken: String(from + size) } : {}) };
    },
  };

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const target = String(req.headers['x-amz-target'] ?? '');
    const operation = operations[target.replace(/^AWSStepFunctions\./, '')];
    const reply = (status: number, body: unknown) => sendJson(res, status, body, { 'content-type': 'application/x-amz-json-1.0' });
    if (req.method !== 'POST' || !target.startsWith('AWSStepFunctions.') || !operation) {
      reply(400, { __type: 'UnknownOperationException', message: `this local endpoint does not serve ${target || req.method}` });
      return;
    }
    const action = target.replace(/^AWSStepFunctions\./, '');
    if (!takeToken(action)) {
      await readBody(req);
      reply(400, { __type: 'ThrottlingException', message: 'Rate exceeded' });
      return;
    }
    try {
      reply(200, await operation(JSON.parse((await readBody(req)) || '{}') as Record<string, unknown>));
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      reply(400, { __type: error.code, message: error.message });
    }
  }

  const server = await listenOnLoopback(handle, (res, error) =>
    sendJson(res, 500, { __type: 'InternalFailure', message: error.message }, { 'content-type': 'application/x-amz-json-1.0' }),
  );
  const settled = async () => {
    // Executions may start more executions' worth of work while we wait; loop until none is left.
    while ([...executions.values()].some(isRunning)) await Promise.all([...executions.values()].map((e) => e.done));
  };
  return {
    endpoint: `http://127.0.0.1:${server.port}`,
    stateMachineArn,
    batchStateMachineArn: workflows.batch.stateMachineArn,
    executions,
    children,
    settled,
    close: async () => {
      await settled();
      await server.close();
    },
  };
}
