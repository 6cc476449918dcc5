import { ExecutionAlreadyExists, SFNClient, StartExecutionCommand } from '@aws-sdk/client-sfn';

type Env = Record<string, string | undefined>;

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
  return new SFNClient({ region, ...(endpoint ? { endpoint } : {}) });
}

/** For the stages that start executions. */
export function sfnClient(env: Env): { sfn: SFNClient } {
  return { sfn: sfnClientFromEnv(env) };
}

/** The ARN Step Functions gives the execution `name` of a state machine. */
export function executionArn(stateMachineArn: string, name: string): string {
  return `${stateMachineArn.replace(':stateMachine:', ':execution:')}:${name}`;
}

/**
 * Starts `name` once: a name already taken (a repeated delivery, an upload of the same content,
 * a second `avatars start`) answers with the existing execution instead of an error.
 */
export async function startOnce(sfn: SFNClient, stateMachineArn: string, name: string, input: unknown): Promise<{ executionArn: string; existing: boolean }> {
  try {
    const started = await sfn.send(new StartExecutionCommand({ stateMachineArn, name, input: JSON.stringify(input) }));
    return { executionArn: started.executionArn!, existing: false };
  } catch (error) {
    if (error instanceof ExecutionAlreadyExists) return { executionArn: executionArn(stateMachineArn, name), existing: true };
    throw error;
  }
}
