import { DescribeExecutionCommand, ExecutionAlreadyExists, SFNClient, StartExecutionCommand, type ExecutionStatus } from '@aws-sdk/client-sfn';

import { withClientPlugins } from './aws-clients.ts';
import { attemptName, MAX_ATTEMPTS } from './run-name.ts';

type Env = Record<string, string | undefined>;

/** Tries of a Step Functions call throttled past its bucket (the SDK's default is 3). */
export const SFN_MAX_ATTEMPTS = 8;

/** A Step Functions-compatible endpoint instead of AWS itself, if one is configured. */
export function customSfnEndpoint(env: Env = process.env): string | undefined {
  return env.AWS_ENDPOINT_URL_SFN || env.AWS_ENDPOINT_URL || undefined;
}

/**
 * Step Functions from the standard chain (credentials, profiles, AWS_ENDPOINT_URL_SFN). An ARN's
 * region wins over the default one: that is where the state machine is.
 */
export function sfnClientFromEnv(env: Env = process.env, arn?: string): SFNClient {
  const endpoint = customSfnEndpoint(env);
  const region = arn?.split(':')[3] || env.AWS_REGION || env.AWS_DEFAULT_REGION || 'us-east-1';
  // Past an API's token bucket Step Functions answers ThrottlingException: the SDK waits with
  // exponential backoff and jitter and tries again, up to this many times in all.
  return withClientPlugins(new SFNClient({ region, maxAttempts: SFN_MAX_ATTEMPTS, ...(endpoint ? { endpoint } : {}) }));
}

/** For the stages that start executions. */
export function sfnClient(env: Env): { sfn: SFNClient } {
  return { sfn: sfnClientFromEnv(env) };
}

/** The ARN Step Functions gives the execution `name` of a state machine. */
export function executionArn(stateMachineArn: string, name: string): string {
  return `${stateMachineArn.replace(':stateMachine:', ':execution:')}:${name}`;
}

/** Whether an earlier attempt in this state stands for the request: running, or done with it. */
export type Settled = (status: ExecutionStatus | undefined, name: string) => boolean | Promise<boolean>;

const runningOrSucceeded: Settled = (status) => status === 'RUNNING' || status === 'SUCCEEDED' || status === 'PENDING_REDRIVE';

/**
 * Starts the request named `name` unless an attempt of it is running or has succeeded: a repeated
 * delivery, an upload of the same content or a second `avatars start` answers with that attempt.
 * An attempt that failed, timed out or was stopped is followed by a new one under the next name
 * (Step Functions keeps a name for 90 days; a new name, not RedriveExecution, because a redrive
 * resumes only recent failures and only from the failed state, while a new attempt runs with
 * whatever was fixed since: a key, a quota, a setting).
 */
export async function startOnce(
  sfn: SFNClient,
  stateMachineArn: string,
  name: string,
  input: unknown,
  settled: Settled = runningOrSucceeded,
): Promise<{ executionArn: string; existing: boolean; attempt: number }> {
  for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
    const arn = executionArn(stateMachineArn, attemptName(name, attempt));
    try {
      const started = await sfn.send(new StartExecutionCommand({ stateMachineArn, name: attemptName(name, attempt), input: JSON.stringify(input) }));
      return { executionArn: started.executionArn!, existing: false, attempt };
    } catch (error) {
      if (!(error instanceof ExecutionAlreadyExists)) throw error;
      const { status } = await sfn.send(new DescribeExecutionCommand({ executionArn: arn }));
      if (await settled(status, attemptName(name, attempt))) return { executionArn: arn, existing: true, attempt };
    }
  }
  throw new Error(`${name}: ${MAX_ATTEMPTS} attempts have failed; start it under a name of your own (avatars start --name) once the cause is fixed`);
}
