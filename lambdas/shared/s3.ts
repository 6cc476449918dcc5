import { S3Client } from '@aws-sdk/client-s3';
import { withClientPlugins } from './aws-clients.ts';
import type { Settings } from './settings.ts';
import { ObjectStore } from './store.ts';

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
  return withClientPlugins(new S3Client({
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
  }));
}

/** The bucket, for stages that read or write it. */
export function storeClient(env: Env, settings: Settings): { store: ObjectStore } {
  return { store: new ObjectStore(s3ClientFromEnv(env), settings.bucket) };
}
