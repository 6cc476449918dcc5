import { S3Client } from '@aws-sdk/client-s3';
import { SFNClient } from '@aws-sdk/client-sfn';
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import OpenAI from 'openai';

type Env = Record<string, string | undefined>;

/** Whether S3 is a custom S3-compatible endpoint rather than AWS itself. */
export function customS3Endpoint(env: Env = process.env): string | undefined {
  return env.S3_ENDPOINT || env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL || undefined;
}

/**
 * S3 from the seed's variables when S3_ENDPOINT is set (path-style, as S3-compatible servers
 * expect), else from the standard AWS chain (the Lambda's role, profiles, AWS_ENDPOINT_URL_S3).
 */
export function s3ClientFromEnv(env: Env = process.env): S3Client {
  const endpoint = customS3Endpoint(env);
  const credentials =
    env.S3_ACCESS_KEY && env.S3_SECRET_KEY
      ? { accessKeyId: env.S3_ACCESS_KEY, secretAccessKey: env.S3_SECRET_KEY }
      : undefined;
  return new S3Client({
    region: env.AWS_REGION || env.AWS_DEFAULT_REGION || 'us-east-1',
    // Passed on, not left to the SDK: `env` need not be process.env.
    ...(endpoint ? { endpoint } : {}),
    ...(credentials ? { credentials } : {}),
    ...(endpoint
      ? {
          forcePathStyle: true,
          // Several S3-compatible servers store the SDK's aws-chunked framing inside the object.
          requestChecksumCalculation: 'WHEN_REQUIRED' as const,
          responseChecksumValidation: 'WHEN_REQUIRED' as const,
        }
      : {}),
  });
}

let cachedSecretKey: Promise<string> | undefined;

/** The OpenAI key: OPENAI_API_KEY, else the Secrets Manager secret named by OPENAI_API_KEY_SECRET_ARN. */
export async function openAiKeyFromEnv(env: Env = process.env): Promise<string | undefined> {
  if (env.OPENAI_API_KEY) return env.OPENAI_API_KEY;
  const secretId = env.OPENAI_API_KEY_SECRET_ARN;
  if (!secretId) return undefined;
  cachedSecretKey ??= new SecretsManagerClient({})
    .send(new GetSecretValueCommand({ SecretId: secretId }))
    .then((r) => (r.SecretString ?? '').trim());
  return cachedSecretKey;
}

/**
 * The SDK's own retries stay low: the state machine owns retries, with backoff that outlives
 * a per-minute rate limit. Without `baseURL` the SDK reads OPENAI_BASE_URL itself.
 */
export function openAiClient(apiKey: string, baseURL?: string): OpenAI {
  return new OpenAI({ apiKey, baseURL: baseURL || undefined, maxRetries: 0 });
}

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
