/**
 * The one place the local runner departs from the synthesized definitions. aws-local-stepfunctions
 * runs inline Map states only; each Distributed Map (ItemReader, ResultWriter, ProcessorConfig
 * DISTRIBUTED) becomes a Task of the same name whose local handler does what Step Functions does:
 *
 *  - reads the ItemReader's object (JSONL or a JSON array) from the stack's bucket, its
 *    Parameters resolved against the state's input;
 *  - runs the ItemProcessor once per item as a child workflow, MaxConcurrency(Path) at a time
 *    (at most LOCAL_CHILD_WORKFLOWS: here they share one process's memory and CPU), ItemSelector
 *    applied, each item's failure its own, tolerated up to ToleratedFailure*;
 *  - writes the results where ResultWriter says, laid out as Step Functions lays them out
 *    ({Prefix}/{run}/manifest.json, SUCCEEDED_0.json, FAILED_0.json), in its WriterConfig's
 *    OutputType (JSON, JSONL) and Transformation (NONE; COMPACT: a succeeded child's output alone),
 *    and answers { MapRunArn, ResultWriterDetails }, or, without a ResultWriter, the array of outputs;
 *  - fails as States.ItemReaderFailed or States.ResultWriterFailed when it cannot read or write.
 *
 * InputPath, ResultSelector, ResultPath, OutputPath, Retry, Catch and Next stay on the state and
 * the interpreter applies them as it would to the Map. The stack has one bucket: locally, the
 * store's, whatever Bucket a Parameters names.
 */
import { randomUUID } from 'node:crypto';
import { StateMachine } from 'aws-local-stepfunctions';
import { inPool } from '../lambdas/shared/pool.ts';
import type { ObjectStore } from '../lambdas/shared/store.ts';
import type { AslMachine, AslState } from './definition.ts';

/** Child workflows at once in this process, whatever the definition allows Step Functions. */
const LOCAL_CHILD_WORKFLOWS = 64;

/** What the interpreter keeps from the Map state: everything about input, output and errors. */
const KEPT = ['Type', 'Comment', 'InputPath', 'OutputPath', 'ResultPath', 'ResultSelector', 'Retry', 'Catch', 'Next', 'End'];

const isDistributed = (state: AslState) =>
  state.Type === 'Map' && (!!state.ItemReader || (state.ItemProcessor as { ProcessorConfig?: { Mode?: string } } | undefined)?.ProcessorConfig?.Mode === 'DISTRIBUTED');

/** The definition with each top-level Distributed Map as a Task, and the Map states it stands for. */
export function adaptDistributedMaps(definition: AslMachine): { definition: AslMachine; maps: Record<string, AslState> } {
  const maps: Record<string, AslState> = {};
  const states = Object.fromEntries(
    Object.entries(definition.States).map(([name, state]) => {
      if (!isDistributed(state)) return [name, state];
      maps[name] = state;
      const kept = Object.fromEntries(Object.entries(state).filter(([k]) => KEPT.includes(k)));
      return [name, { ...kept, Type: 'Task', Resource: `arn:aws:states:us-east-1:000000000000:activity:${name}` }];
    }),
  );
  return { definition: { ...definition, States: states }, maps };
}

/** Evaluates a Parameters-style template (`key.$` paths, intrinsics) with the interpreter itself. */
async function evaluate(template: unknown, input: unknown, context: Record<string, unknown> = {}): Promise<unknown> {
  const pass = new StateMachine({ StartAt: 'Evaluate', States: { Evaluate: { Type: 'Pass', Parameters: template, End: true } } } as never, { validationOptions: { noValidate: true } });
  return pass.run(input as never, { context: context as never }).result;
}

export interface ChildWorkflow {
  /** Runs the ItemProcessor on one item; rejects as the child workflow would fail. */
  (processor: AslMachine, input: unknown, index: number): Promise<unknown>;
}

interface ChildResult {
  ExecutionArn: string;
  Name: string;
  Input: string;
  Output?: string;
  Status: 'SUCCEEDED' | 'FAILED';
  Error?: string;
  Cause?: string;
  StartDate: string;
  StopDate: string;
}

function itemsOf(text: string, inputType: string | undefined): unknown[] {
  if (inputType === 'JSONL') return text.split(/\r?\n/).filter((l) => l.trim()).map((l) => JSON.parse(l) as unknown);
  if (inputType === 'JSON') return JSON.parse(text) as unknown[];
  throw new Error(`the local runner reads ItemReader InputType JSONL and JSON, not ${inputType}`);
}

function thresholdExceeded(state: AslState, failed: number, total: number): boolean {
  const count = state.ToleratedFailureCount as number | undefined;
  const percentage = state.ToleratedFailurePercentage as number | undefined;
  if (count === undefined && percentage === undefined) return failed > 0;
  return (count !== undefined && failed > count) || (percentage !== undefined && total > 0 && (failed / total) * 100 > percentage);
}

/** Step Functions' name for the Map's own failure to read its items or write its results. */
async function failingAs<T>(name: string, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    const failed = new Error(`${(error as Error).name}: ${(error as Error).message}`);
    failed.name = name;
    throw failed;
  }
}

/** What Step Functions does for the Distributed Map `state` on `input`. */
export async function runDistributedMap(name: string, state: AslState, input: unknown, store: ObjectStore, child: ChildWorkflow): Promise<unknown> {
  const reader = state.ItemReader as { ReaderConfig?: { InputType?: string }; Parameters: Record<string, unknown> };
  const { Key } = (await evaluate(reader.Parameters, input)) as { Key: string };
  const items = await failingAs('States.ItemReaderFailed', async () => itemsOf(await store.getText(Key), reader.ReaderConfig?.InputType));
  const { concurrency } = (await evaluate({ ...(state.MaxConcurrencyPath ? { 'concurrency.$': state.MaxConcurrencyPath } : { concurrency: state.MaxConcurrency ?? 0 }) }, input)) as { concurrency: number };
  const processor = state.ItemProcessor as AslMachine;
  const runId = randomUUID();
  const results = await inPool(items, Math.min(LOCAL_CHILD_WORKFLOWS, concurrency > 0 ? concurrency : items.length), async (item, index): Promise<ChildResult> => {
    const selected = state.ItemSelector ? await evaluate(state.ItemSelector, input, { Map: { Item: { Index: index, Value: item } } }) : item;
    const started = new Date().toISOString();
    const described = { ExecutionArn: `arn:aws:states:us-east-1:000000000000:execution:${name}/${runId}:${index}`, Name: `${runId}-${index}`, Input: JSON.stringify(selected), StartDate: started };
    try {
      const output = await child(processor, selected, index);
      return { ...described, Output: JSON.stringify(output), Status: 'SUCCEEDED', StopDate: new Date().toISOString() };
    } catch (error) {
      return { ...described, Status: 'FAILED', Error: (error as Error).name, Cause: (error as Error).message, StopDate: new Date().toISOString() };
    }
  });
  const failed = results.filter((r) => r.Status === 'FAILED');
  if (thresholdExceeded(state, failed.length, results.length)) {
    const error = new Error(`The specified tolerated failure threshold was exceeded: ${failed.length} of ${results.length} items failed`);
    error.name = 'States.ExceedToleratedFailureThreshold';
    throw error;
  }
  const writer = state.ResultWriter as { Parameters?: Record<string, unknown>; WriterConfig?: { OutputType?: string; Transformation?: string } } | undefined;
  if (!writer?.Parameters) return results.filter((r) => r.Status === 'SUCCEEDED').map((r) => JSON.parse(r.Output!) as unknown);
  const { Prefix } = (await evaluate(writer.Parameters, input)) as { Prefix?: string };
  const compact = writer.WriterConfig?.Transformation === 'COMPACT';
  const lines = writer.WriterConfig?.OutputType === 'JSONL';
  // COMPACT keeps a succeeded child's output alone; a failed child keeps everything, as with NONE.
  const written = (r: ChildResult): unknown => (compact && r.Status === 'SUCCEEDED' ? (JSON.parse(r.Output!) as unknown) : r);
  const root = `${Prefix ? `${Prefix.replace(/\/+$/, '')}/` : ''}${runId}`;
  const files: Record<'SUCCEEDED' | 'FAILED' | 'PENDING', { Key: string; Size: number }[]> = { SUCCEEDED: [], FAILED: [], PENDING: [] };
  for (const status of ['SUCCEEDED', 'FAILED'] as const) {
    const these = results.filter((r) => r.Status === status);
    if (these.length === 0) continue;
    const body = lines ? these.map((r) => `${JSON.stringify(written(r))}\n`).join('') : JSON.stringify(these.map(written));
    const key = `${root}/${status}_0.json`;
    await failingAs('States.ResultWriterFailed', () => store.put(key, body, lines ? 'application/x-ndjson' : 'application/json'));
    files[status].push({ Key: key, Size: Buffer.byteLength(body) });
  }
  const mapRunArn = `arn:aws:states:us-east-1:000000000000:mapRun:${name}/${String(state.Label ?? name)}:${runId}`;
  const manifestKey = `${root}/manifest.json`;
  await failingAs('States.ResultWriterFailed', () => store.putJson(manifestKey, { DestinationBucket: store.bucket, MapRunArn: mapRunArn, ResultFiles: files }));
  return { MapRunArn: mapRunArn, ResultWriterDetails: { Bucket: store.bucket, Key: manifestKey } };
}
