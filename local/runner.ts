/**
 * Runs one execution of a synthesized state machine in-process with aws-local-stepfunctions,
 * each Task calling its stage's core with the clients given; a batch's child executions run
 * here too, and its Distributed Map as distributed-map.ts adapts it.
 */
import { randomUUID } from 'node:crypto';
import { ExecutionAbortedError, ExecutionError, StateMachine } from 'aws-local-stepfunctions';
import { stages } from '../lambdas/stages.ts';
import { loggedStage, type Deps } from '../lambdas/shared/stage.ts';
import type { PublishResult } from '../lambdas/publish/core.ts';
import { executionArn } from '../lambdas/shared/sfn.ts';
import { allStates, isStepFunctionsTask, localStateMachineArn, synthesizeWorkflows, type AslMachine, type SynthesizedWorkflows } from './definition.ts';
import { adaptDistributedMaps, runDistributedMap } from './distributed-map.ts';
import { asStage, stageRoles, type StageRoles } from './iam.ts';

/**
 * aws-local-stepfunctions waits out a Wait whose timestamp has passed with a negative timeout,
 * which Node warns of on stderr; Step Functions goes straight on, and so does this, quietly.
 */
const emitWarning = process.emitWarning.bind(process);
process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
  const type = typeof rest[0] === 'string' ? rest[0] : (rest[0] as { type?: string } | undefined)?.type;
  if (type !== 'TimeoutNegativeWarning') emitWarning(warning as string, ...(rest as []));
}) as typeof process.emitWarning;

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

export type RunOutcome<T = PublishResult> =
  | { status: 'SUCCEEDED'; runId: string; output: T; events: ProgressEvent[]; ms: number }
  | { status: 'FAILED' | 'ABORTED'; runId: string; error: string; cause: string; events: ProgressEvent[]; ms: number };

/** How the batch's startExecution.sync Tasks run a persona's execution. */
export interface ChildExecutions {
  run(stateMachineArn: string, name: string, input: unknown): Promise<RunOutcome<unknown>>;
}

export interface LocalRunOptions {
  input: unknown;
  deps: Deps;
  runId?: string;
  /** Pause before each retry, instead of the definition's backoff (minutes on AWS). */
  retryDelayMs?: number;
  onProgress?: (event: ProgressEvent) => void;
  /** The persona workflow (default), or the batch of many. */
  machine?: keyof SynthesizedWorkflows;
  /** Where a batch's child executions run: by default here, each a local run of the persona workflow. */
  children?: ChildExecutions;
  /** Stops the execution (StopExecution): it ends ABORTED, its reason what the signal was aborted with. */
  signal?: AbortSignal;
  /** The stages' roles, instead of the synthesized ones (a spec that takes a grant away). */
  roles?: StageRoles;
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
  // Lambda's Node runtime reports a thrown non-Error by its type (aws-lambda-nodejs-runtime-interface-client, toRapidResponse).
  if (!(error instanceof Error)) throw Object.assign(new Error(String(error)), { name: typeof error });
  if (error.cause === undefined) throw error;
  const reported = new Error(error.message);
  reported.name = error.name;
  throw reported;
}

type Handler = (input: unknown) => Promise<unknown>;

interface ExecuteOptions {
  handlers: Record<string, Handler>;
  retryDelays: Record<string, number>;
  context: Record<string, unknown>;
  onProgress: (event: ProgressEvent) => void;
  /** Reported as the events' index: the item of a Distributed Map. */
  item?: number;
  signal?: AbortSignal;
}

/** Definitions already validated by this process: the validator compiles its schemas each time (about 0.3 s). */
const validated = new Set<string>();

/** One execution of a definition by the interpreter; rejects with what ended it. */
async function execute(definition: AslMachine, input: unknown, options: ExecuteOptions): Promise<unknown> {
  // An ItemProcessor carries ProcessorConfig, which the validator refuses as a machine of its own.
  const text = options.item === undefined ? JSON.stringify(definition) : undefined;
  // A copy: the interpreter writes defaults (QueryLanguage) into the states it is given, and the definitions are shared.
  const machine = new StateMachine(structuredClone(definition) as never, { validationOptions: { checkArn: false, noValidate: text === undefined || validated.has(text) } });
  if (text) validated.add(text);
  const execution = machine.run(input as never, {
    overrides: { taskResourceLocalHandlers: options.handlers as never, retryIntervalOverrides: options.retryDelays },
    context: options.context as never,
  });
  const abort = () => execution.abort();
  if (options.signal?.aborted) abort();
  else options.signal?.addEventListener('abort', abort, { once: true });
  const entered = new Map<string, number>();
  const watching = (async () => {
    for await (const event of execution.eventLogs) {
      const progress = progressOf(event, entered);
      if (progress) options.onProgress(options.item === undefined ? progress : { ...progress, index: options.item });
    }
  })();
  try {
    const output = await execution.result;
    await watching;
    return output;
  } catch (error) {
    await watching.catch(() => undefined);
    // ExecutionError wraps what ended the run: for a Fail state, its Error and Cause.
    throw error instanceof ExecutionError && error.cause instanceof Error ? error.cause : error;
  } finally {
    options.signal?.removeEventListener('abort', abort);
  }
}

interface StartExecutionParameters {
  StateMachineArn: string;
  Name?: string;
  Input?: unknown;
}

/**
 * `states:startExecution.sync:2`: the child's description with its output as JSON, or, when it
 * does not succeed, States.TaskFailed with that description (its Error and Cause) as the cause.
 */
async function startExecutionSync(params: StartExecutionParameters, children: ChildExecutions): Promise<unknown> {
  const name = params.Name ?? randomUUID();
  const input = typeof params.Input === 'string' ? (JSON.parse(params.Input) as unknown) : (params.Input ?? {});
  const startDate = Date.now();
  const outcome = await children.run(params.StateMachineArn, name, input);
  const described = { ExecutionArn: executionArn(params.StateMachineArn, name), StateMachineArn: params.StateMachineArn, Name: name, Input: input, StartDate: startDate, StopDate: Date.now(), Status: outcome.status };
  if (outcome.status === 'SUCCEEDED') return { ...described, Output: outcome.output };
  const failed = new Error(JSON.stringify({ ...described, Error: outcome.error, Cause: outcome.cause }));
  failed.name = 'States.TaskFailed';
  throw failed;
}

/** Children run here, each a local run of the persona workflow. */
function inProcessChildren(options: LocalRunOptions, personaArn: string): ChildExecutions {
  return {
    run: (arn, name, input) => {
      if (arn !== personaArn) throw new Error(`the local runner starts executions of ${personaArn} only, not ${arn}`);
      return runLocally({ input, deps: options.deps, runId: name, ...(options.retryDelayMs !== undefined ? { retryDelayMs: options.retryDelayMs } : {}), ...(options.roles ? { roles: options.roles } : {}) });
    },
  };
}

const rolesByNames = new Map<string, StageRoles>();
/**
 * The budget table an environment's stages use (IMAGE_BUDGET_TABLE is a client's variable, not a
 * setting), carried by the deps themselves: a copy (`{ ...deps, deadline }`) keeps it.
 */
const BUDGET_TABLE = Symbol('IMAGE_BUDGET_TABLE');

export function useBudgetTable(deps: Deps, table: string | undefined): void {
  if (table) Object.assign(deps, { [BUDGET_TABLE]: table });
}

/** Each stage's role as synthesized, its resources named as these deps name them. */
export async function localStageRoles(deps: Deps): Promise<StageRoles> {
  const names = { bucket: deps.settings.bucket, table: (deps as Deps & { [BUDGET_TABLE]?: string })[BUDGET_TABLE] };
  const key = JSON.stringify(names);
  const { persona } = await synthesizeWorkflows();
  if (!rolesByNames.has(key)) rolesByNames.set(key, stageRoles(persona.template, { ...names, stateMachineArn: localStateMachineArn }));
  return rolesByNames.get(key)!;
}

export async function runLocally<T = PublishResult>(options: LocalRunOptions): Promise<RunOutcome<T>> {
  const workflows = await synthesizeWorkflows();
  const roles = options.roles ?? (await localStageRoles(options.deps));
  if (options.deps.settings.identityPolicy !== 'off' || options.deps.settings.lookalikePolicy !== 'off') options.deps.faces?.warmUp?.();
  const { definition: synthesized, taskStages, stateMachineArn } = workflows[options.machine ?? 'persona'];
  const { definition, maps } = adaptDistributedMaps(synthesized);
  const runId = options.runId ?? newRunId();
  const started = Date.now();
  const children = options.children ?? inProcessChildren(options, workflows.persona.stateMachineArn);
  const events: ProgressEvent[] = [];
  const onProgress = (event: ProgressEvent) => {
    events.push(event);
    options.onProgress?.(event);
  };
  const context = { Execution: { Input: options.input, Name: runId, Id: executionArn(stateMachineArn, runId), StartTime: new Date(started).toISOString() } };
  const handlers: Record<string, Handler> = {};
  for (const [state, stage] of Object.entries(taskStages)) {
    // The runtime passes states JSON; each core takes its own event shape.
    handlers[state] = (input) => asStage(roles[stage], () => loggedStage(stage, stages[stage] as (e: unknown, d: Deps) => Promise<unknown>, input, options.deps)).catch(asLambdaReports);
  }
  for (const [state, asl] of allStates(synthesized)) {
    if (isStepFunctionsTask(asl)) handlers[state] = (input) => startExecutionSync(input as StartExecutionParameters, children);
  }
  const retryDelays = Object.fromEntries(
    allStates(synthesized)
      .filter(([, state]) => state.Retry)
      .map(([name]) => [name, options.retryDelayMs ?? 0]),
  );
  for (const [name, map] of Object.entries(maps)) {
    handlers[name] = (input) =>
      runDistributedMap(name, map, input, options.deps.store, (processor, item, index) =>
        execute(processor, item, { handlers, retryDelays, onProgress, item: index, signal: options.signal, context: { Execution: { ...context.Execution, Name: `${runId}-${index}`, Input: item } } }),
      );
  }
  try {
    const output = (await execute(definition, options.input, { handlers, retryDelays, context, onProgress, signal: options.signal })) as T;
    return { status: 'SUCCEEDED', runId, output, events, ms: Date.now() - started };
  } catch (error) {
    if (error instanceof ExecutionAbortedError || options.signal?.aborted) {
      const reason = (options.signal?.reason ?? {}) as { error?: string; cause?: string };
      return { status: 'ABORTED', runId, error: reason.error ?? '', cause: reason.cause ?? '', events, ms: Date.now() - started };
    }
    const failure = error as Error;
    return { status: 'FAILED', runId, error: failure.name, cause: failure.message, events, ms: Date.now() - started };
  }
}
