import type { SFNClient } from '@aws-sdk/client-sfn';
import { customSfnEndpoint, sfnClientFromEnv, startOnce } from '../../lambdas/shared/sfn.ts';
import type { PublishResult } from '../../lambdas/publish/core.ts';
import { executionName } from '../../lambdas/shared/run-name.ts';
import { consoleUrl, followExecution } from '../follow.ts';
import { nothingToRun, readBatchFile } from '../batch-file.ts';
import type { BatchSummary } from '../../lambdas/shared/batch.ts';
import { batchKeys } from '../../lambdas/shared/keys.ts';
import { describeProblem, personaFileKind } from '../../lambdas/shared/run-input.ts';
import { storeClient } from '../../lambdas/shared/s3.ts';
import { settingsFromEnv } from '../../lambdas/shared/settings.ts';
import { startBatch } from '../../lambdas/start-from-upload/core.ts';
import { describe, readRunInput, resultLines, UsageError } from './common.ts';

export interface FollowFlags {
  pollInterval: number;
  json?: boolean;
}

export interface StartFlags extends FollowFlags {
  images?: number;
  mode?: string;
  stateMachineArn?: string;
  batchStateMachineArn?: string;
  bucket?: string;
  name?: string;
  wait?: boolean;
  budgetUsd?: number;
  openaiBatch?: boolean;
}

const isBatch = (output: unknown): output is BatchSummary => typeof output === 'object' && output !== null && 'counts' in output;

/**
 * Prints an execution's states until it ends (a batch's own states, not each persona's), then
 * what it published; 0 when it succeeded and, for a batch, every persona was published.
 */
async function followAndReport(sfn: SFNClient, executionArn: string, flags: FollowFlags): Promise<number> {
  const end = await followExecution({ sfn, executionArn, pollMs: flags.pollInterval, onProgress: (event) => event.index === undefined || !executionArn.includes('-Batch:') ? process.stderr.write(`${describe(event)}\n`) : undefined });
  if (flags.json) process.stdout.write(`${JSON.stringify({ executionArn, ...end }, null, 2)}\n`);
  if (end.status !== 'SUCCEEDED') {
    process.stderr.write(`\n✗ execution ${executionArn} ${end.status}: ${end.error}: ${end.cause}\n`);
    return 1;
  }
  if (isBatch(end.output)) {
    const { counts, reportKey, indexKey } = end.output;
    if (!flags.json) process.stdout.write(`${counts.FAILED === 0 ? '✓' : '✗'} ${counts.SUCCEEDED} published, ${counts.FAILED} failed, ${counts.SKIPPED} skipped; report ${reportKey}, contact sheet ${indexKey}\n`);
    return counts.FAILED === 0 ? 0 : 1;
  }
  if (!flags.json) process.stdout.write(resultLines(end.output as PublishResult, `(execution ${executionArn.split(':').at(-1)})`));
  return 0;
}

export async function statusCommand(executionArn: string, flags: FollowFlags): Promise<number> {
  return followAndReport(sfnClientFromEnv(process.env, executionArn), executionArn, flags);
}

/**
 * A JSON Lines file starts one batch: the file is put under batches/{name}/ in the stack's bucket
 * and the batch state machine started under the name an upload of it gets, so it runs once.
 */
async function startBatchCommand(file: string, flags: StartFlags): Promise<number> {
  const batch = await readBatchFile(file, flags);
  for (const problem of batch.problems) process.stderr.write(`✗ ${file}: ${describeProblem(problem)}\n`);
  if (batch.personas === 0) throw new UsageError(`${file}: no valid personas: nothing to start`);
  const batchArn = flags.batchStateMachineArn ?? process.env.BATCH_STATE_MACHINE_ARN;
  const bucket = flags.bucket ?? process.env.S3_BUCKET_NAME;
  if (!batchArn || !bucket) {
    throw new UsageError('a batch needs the stack\'s BatchStateMachineArn and BucketName outputs: pass --batch-state-machine-arn and --bucket, or set BATCH_STATE_MACHINE_ARN and S3_BUCKET_NAME');
  }
  const env = { ...process.env, S3_BUCKET_NAME: bucket };
  const { store } = storeClient(env, settingsFromEnv(env));
  const nothing = await nothingToRun(file, batch, store);
  if (nothing) {
    process.stdout.write(`${nothing}\n`);
    return batch.problems.length === 0 ? 0 : 1;
  }
  const sfn = sfnClientFromEnv(process.env, batchArn);
  const personasKey = batchKeys(batch.name).personas;
  await store.put(personasKey, batch.body, 'application/x-ndjson');
  const options = { ...(flags.budgetUsd !== undefined ? { budgetUsd: flags.budgetUsd } : {}), ...(flags.openaiBatch ? { openAiBatch: true } : {}) };
  const { executionArn, existing } = await startBatch({ store, sfn }, batchArn, batch.name, personasKey, options);
  const url = consoleUrl(executionArn, !!customSfnEndpoint());
  process.stdout.write(`${existing ? 'batch already running, or done with every persona published' : 'started batch'}: ${executionArn}\n${url ? `console: ${url}\n` : ''}`);
  return flags.wait ? followAndReport(sfn, executionArn, flags) : 0;
}

export async function startCommand(personaFile: string, flags: StartFlags): Promise<number> {
  if (personaFileKind(personaFile) === 'jsonl') return startBatchCommand(personaFile, flags);
  const request = await readRunInput(personaFile, flags);
  const stateMachineArn = flags.stateMachineArn ?? process.env.STATE_MACHINE_ARN;
  if (!stateMachineArn) {
    throw new UsageError('no state machine: pass --state-machine-arn (the StateMachineArn output of `npx cdk deploy`) or set STATE_MACHINE_ARN');
  }
  const sfn = sfnClientFromEnv(process.env, stateMachineArn);
  // The upload trigger's name, from the request as asked: a persona started both ways runs once.
  const name = flags.name ?? executionName(request);
  const { executionArn, existing } = await startOnce(sfn, stateMachineArn, name, request);
  const url = consoleUrl(executionArn, !!customSfnEndpoint());
  if (flags.json && !flags.wait) {
    process.stdout.write(`${JSON.stringify({ executionArn, name, alreadyStarted: existing, ...(url ? { consoleUrl: url } : {}) }, null, 2)}\n`);
    return 0;
  }
  process.stdout.write(`${existing ? 'already started (pass --name to start another run)' : 'started'}: ${executionArn}\n${url ? `console: ${url}\n` : ''}`);
  return flags.wait ? followAndReport(sfn, executionArn, flags) : 0;
}
