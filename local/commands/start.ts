import type { SFNClient } from '@aws-sdk/client-sfn';
import { customSfnEndpoint, sfnClientFromEnv, startOnce } from '../../lambdas/shared/sfn.ts';
import type { PublishResult } from '../../lambdas/publish/core.ts';
import { executionName } from '../../lambdas/start-from-upload/core.ts';
import { consoleUrl, followExecution } from '../follow.ts';
import { describe, readRunInput, resultLines, UsageError } from './common.ts';

export interface FollowFlags {
  pollInterval: number;
  json?: boolean;
}

export interface StartFlags extends FollowFlags {
  images?: number;
  mode?: string;
  stateMachineArn?: string;
  name?: string;
  wait?: boolean;
}

/** Prints an execution's states until it ends; 0 when it succeeded. */
async function followAndReport(sfn: SFNClient, executionArn: string, flags: FollowFlags): Promise<number> {
  const end = await followExecution({ sfn, executionArn, pollMs: flags.pollInterval, onProgress: (event) => process.stderr.write(`${describe(event)}\n`) });
  if (flags.json) process.stdout.write(`${JSON.stringify({ executionArn, ...end }, null, 2)}\n`);
  if (end.status !== 'SUCCEEDED') {
    process.stderr.write(`\n✗ execution ${executionArn} ${end.status}: ${end.error}: ${end.cause}\n`);
    return 1;
  }
  if (!flags.json) process.stdout.write(resultLines(end.output as PublishResult, `(execution ${executionArn.split(':').at(-1)})`));
  return 0;
}

export async function statusCommand(executionArn: string, flags: FollowFlags): Promise<number> {
  return followAndReport(sfnClientFromEnv(process.env, executionArn), executionArn, flags);
}

export async function startCommand(personaFile: string, flags: StartFlags): Promise<number> {
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
