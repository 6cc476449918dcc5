/**
 * Follows an execution through the Step Functions API, state by state, as `avatars start
 * --wait` and `avatars status` print it: against AWS, or any endpoint that speaks its API.
 */
import { DescribeExecutionCommand, GetExecutionHistoryCommand, type HistoryEvent, type SFNClient } from '@aws-sdk/client-sfn';
import { causeMessage } from '../lambdas/shared/errors.ts';
import type { ProgressEvent } from './runner.ts';

export type ExecutionEnd =
  | { status: 'SUCCEEDED'; output: unknown }
  | { status: 'FAILED' | 'TIMED_OUT' | 'ABORTED' | 'PENDING_REDRIVE'; error: string; cause: string };

export interface FollowOptions {
  sfn: SFNClient;
  executionArn: string;
  pollMs: number;
  onProgress(event: ProgressEvent): void;
}

/** What a history event belongs to: its state, when that was entered, and its Map iteration. */
interface Thread {
  state: string;
  stateType: string;
  enteredAt: number;
  index?: number;
}

const FAILED_TASK_EVENTS = /^(Task|LambdaFunction)(Failed|TimedOut|StartFailed|ScheduleFailed|SubmitFailed)$/;

/**
 * Reads history events as progress. Events name their state only on entry and exit; the rest
 * point back (previousEventId) along their branch, which is how a TaskFailed finds its state.
 */
export function historyReader(): (event: HistoryEvent) => ProgressEvent | undefined {
  const threads = new Map<number, Thread>();
  return (event) => {
    const id = event.id!;
    const at = event.timestamp?.getTime() ?? Date.now();
    const previous = threads.get(event.previousEventId ?? -1);
    const entered = /^(\w+)StateEntered$/.exec(event.type ?? '');
    if (entered) {
      const thread: Thread = { state: event.stateEnteredEventDetails!.name!, stateType: entered[1]!, enteredAt: at, ...inIteration(previous?.index) };
      threads.set(id, thread);
      return { kind: 'entered', state: thread.state, stateType: thread.stateType, at, ...inIteration(thread.index) };
    }
    if (event.type === 'MapIterationStarted') {
      threads.set(id, { ...(previous ?? { state: '', stateType: 'Map', enteredAt: at }), index: event.mapIterationStartedEventDetails?.index });
      return undefined;
    }
    if (previous) threads.set(id, previous);
    const where = { ...inIteration(previous?.index), at };
    if (/StateExited$/.test(event.type ?? '')) {
      const state = event.stateExitedEventDetails?.name ?? previous?.state ?? '?';
      return { kind: 'exited', state, ...(previous ? { stateType: previous.stateType, ms: at - previous.enteredAt } : {}), ...where };
    }
    if (FAILED_TASK_EVENTS.test(event.type ?? '')) {
      const details = event.taskFailedEventDetails ?? event.lambdaFunctionFailedEventDetails ?? event.taskTimedOutEventDetails ?? event.lambdaFunctionTimedOutEventDetails ?? {};
      // On AWS a Lambda's cause is its JSON error report; the message is what a person reads.
      return { kind: 'failed', state: previous?.state ?? 'task', stateType: 'Task', error: details.error ?? event.type!, cause: causeMessage(details.cause), ...where };
    }
    return undefined;
  };
}

const inIteration = (index: number | undefined) => (index === undefined ? {} : { index });

/**
 * The history events after `afterId`, oldest first. Read newest first and only until an event
 * already seen, so each poll costs what happened since the last one, not the whole history.
 */
async function newEvents(sfn: SFNClient, executionArn: string, afterId: number): Promise<HistoryEvent[]> {
  const events: HistoryEvent[] = [];
  let nextToken: string | undefined;
  do {
    const page = await sfn.send(new GetExecutionHistoryCommand({ executionArn, maxResults: 100, nextToken, reverseOrder: true, includeExecutionData: false }));
    const fresh = (page.events ?? []).filter((e) => e.id! > afterId);
    events.push(...fresh);
    nextToken = fresh.length === (page.events ?? []).length ? page.nextToken : undefined;
  } while (nextToken);
  return events.sort((a, b) => a.id! - b.id!);
}

export async function followExecution(options: FollowOptions): Promise<ExecutionEnd> {
  const read = historyReader();
  let lastId = 0;
  for (;;) {
    const described = await options.sfn.send(new DescribeExecutionCommand({ executionArn: options.executionArn }));
    for (const event of await newEvents(options.sfn, options.executionArn, lastId)) {
      lastId = event.id!;
      const progress = read(event);
      if (progress) options.onProgress(progress);
    }
    // Described before the history was read: once it says ended, the history is complete.
    switch (described.status) {
      case 'RUNNING':
        await new Promise((resolve) => setTimeout(resolve, options.pollMs));
        continue;
      case 'SUCCEEDED':
        return { status: 'SUCCEEDED', output: described.output ? JSON.parse(described.output) : null };
      default:
        return { status: described.status ?? 'FAILED', error: described.error ?? described.status ?? 'Failed', cause: described.cause ?? '' } as ExecutionEnd;
    }
  }
}

/** Where a person sees the execution on AWS; nothing for other endpoints. */
export function consoleUrl(executionArn: string, customEndpoint: boolean): string | undefined {
  const [, partition, , region] = executionArn.split(':');
  if (customEndpoint || partition !== 'aws' || !region) return undefined;
  return `https://${region}.console.aws.amazon.com/states/home?region=${region}#/v2/executions/details/${executionArn}`;
}
