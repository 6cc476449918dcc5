/**
 * Runs one execution of the synthesized state machine in-process with aws-local-stepfunctions,
 * each Task calling its stage's core with the clients given.
 */
import { ExecutionError, StateMachine } from 'aws-local-stepfunctions';
import { stages } from '../lambdas/stages.ts';
import { loggedStage, type Deps } from '../lambdas/shared/stage.ts';
import type { PublishResult } from '../lambdas/publish/core.ts';
import { allStates, synthesizeWorkflow } from './definition.ts';

type EventLog = ReturnType<StateMachine['run']>['eventLogs'] extends AsyncGenerator<infer E> ? E : never;

export interface ProgressEvent {
  kind: 'entered' | 'exited' | 'retried' | 'failed' | 'caught';
  state: string;
  /** Task, Parallel, Map, Fail…; unknown when read back from another service's history. */
  stateType?: string;
  /** Map iteration (grid) the state ran in, if any. */
  index?: number;
  ms?: number;
  attempt?: number;
  error?: string;
  cause?: string;
  at: number;
}

export type RunOutcome =
  | { status: 'SUCCEEDED'; runId: string; output: PublishResult; events: ProgressEvent[]; ms: number }
  | { status: 'FAILED'; runId: string; error: string; cause: string; events: ProgressEvent[]; ms: number };

export interface LocalRunOptions {
  input: unknown;
  deps: Deps;
  runId?: string;
  /** Pause before each retry, instead of the definition's backoff (minutes on AWS). */
  retryDelayMs?: number;
  onProgress?: (event: ProgressEvent) => void;
}

export function newRunId(now = new Date()): string {
  return `local-${now.toISOString().replace(/[-:.TZ]/g, '').slice(0, 14)}-${Math.random().toString(36).slice(2, 8)}`;
}

function progressOf(event: EventLog, entered: Map<string, number>): ProgressEvent | undefined {
  if (!('state' in event)) return undefined;
  const key = `${event.state.name}#${event.index ?? ''}`;
  const base = { state: event.state.name, stateType: event.state.type, at: event.timestamp, ...(event.index !== undefined ? { index: event.index } : {}) };
  switch (event.type) {
    case 'StateEntered':
      entered.set(key, event.timestamp);
      return { kind: 'entered', ...base };
    case 'StateExited':
      return { kind: 'exited', ...base, ms: event.timestamp - (entered.get(key) ?? event.timestamp) };
    case 'StateRetried':
      return { kind: 'retried', ...base, attempt: event.retry.attempt };
    case 'StateFailed':
      return { kind: 'failed', ...base, error: event.Error, cause: String(event.Cause), ms: event.timestamp - (entered.get(key) ?? event.timestamp) };
    case 'StateCaught':
      return { kind: 'caught', ...base };
  }
}

/**
 * A failed Lambda reports its error's name and message, and Step Functions makes them the
 * Error and Cause. The interpreter would take a JavaScript `cause` (the SDK error underneath)
 * as the Cause instead, so it is left behind here.
 */
function asLambdaReports(error: unknown): never {
  if (!(error instanceof Error) || error.cause === undefined) throw error;
  const reported = new Error(error.message);
  reported.name = error.name;
  throw reported;
}

export async function runLocally(options: LocalRunOptions): Promise<RunOutcome> {
  const { definition, taskStages } = synthesizeWorkflow();
  const runId = options.runId ?? newRunId();
  const started = Date.now();
  const taskResourceLocalHandlers = Object.fromEntries(
    Object.entries(taskStages).map(([state, stage]) => [
      state,
      // The runtime passes states JSON; each core takes its own event shape.
      (input: unknown) => loggedStage(stage, stages[stage] as (e: unknown, d: Deps) => Promise<unknown>, input, options.deps).catch(asLambdaReports),
    ]),
  );
  const retryIntervalOverrides = Object.fromEntries(
    allStates(definition)
      .filter(([, state]) => state.Retry)
      .map(([name]) => [name, options.retryDelayMs ?? 0]),
  );
  const machine = new StateMachine(definition as never, { validationOptions: { checkArn: false } });
  const execution = machine.run(options.input as never, {
    overrides: { taskResourceLocalHandlers: taskResourceLocalHandlers as never, retryIntervalOverrides },
    context: { Execution: { Input: options.input, Name: runId, Id: `local:${runId}`, StartTime: new Date(started).toISOString() } } as never,
  });
  const events: ProgressEvent[] = [];
  const entered = new Map<string, number>();
  const watching = (async () => {
    for await (const event of execution.eventLogs) {
      const progress = progressOf(event, entered);
      if (!progress) continue;
      events.push(progress);
      options.onProgress?.(progress);
    }
  })();
  try {
    const output = (await execution.result) as unknown as PublishResult;
    await watching;
    return { status: 'SUCCEEDED', runId, output, events, ms: Date.now() - started };
  } catch (error) {
    await watching.catch(() => undefined);
    // ExecutionError wraps what ended the run: for a Fail state, its Error and Cause.
    const failure = (error instanceof ExecutionError && error.cause instanceof Error ? error.cause : error) as Error;
    return { status: 'FAILED', runId, error: failure.name, cause: failure.message, events, ms: Date.now() - started };
  }
}
