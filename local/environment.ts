/**
 * Where a local run keeps its images and who draws them: the configured S3 and OpenAI when
 * the environment names them (same variables as the deployed stages), else an embedded S3
 * server and the offline image backend, both on loopback.
 */
import { join } from 'node:path';
import { Logger } from '@aws-lambda-powertools/logger';
import { depsFromEnv, type StageDeps } from '../lambdas/shared/stage.ts';
import { startEmbeddedS3 } from './embedded-s3.ts';
import { startOfflineBackend, type Fault, type OfflineBackend } from './offline-openai.ts';

export interface LocalEnvironmentOptions {
  env?: Record<string, string | undefined>;
  /** Where the embedded S3 keeps its data. */
  dataDir: string;
  faults?: Fault[];
  latencyMs?: number;
  logLevel?: 'DEBUG' | 'INFO' | 'WARN' | 'ERROR' | 'SILENT';
}

export interface LocalEnvironment {
  deps: StageDeps;
  /** The variables the stages ran with (secrets left out), for `avatars invoke` and display. */
  env: Record<string, string | undefined>;
  s3: 'embedded' | 'endpoint' | 'aws';
  images: 'openai' | 'offline';
  backend: OfflineBackend | undefined;
  close(): Promise<void>;
}

function usesAwsS3(env: Record<string, string | undefined>): boolean {
  return !!env.S3_BUCKET_NAME && !!(env.AWS_ACCESS_KEY_ID || env.AWS_PROFILE || env.AWS_ENDPOINT_URL_S3);
}

export async function startLocalEnvironment(options: LocalEnvironmentOptions): Promise<LocalEnvironment> {
  const env: Record<string, string | undefined> = { ...(options.env ?? process.env) };
  const closers: (() => Promise<void>)[] = [];
  const s3: LocalEnvironment['s3'] = env.S3_ENDPOINT ? 'endpoint' : usesAwsS3(env) ? 'aws' : 'embedded';
  if (s3 === 'embedded') {
    env.S3_BUCKET_NAME ||= 'avatars';
    const server = await startEmbeddedS3(join(options.dataDir, 's3'), env.S3_BUCKET_NAME);
    closers.push(server.close);
    Object.assign(env, { S3_ENDPOINT: server.endpoint, S3_ACCESS_KEY: server.accessKey, S3_SECRET_KEY: server.secretKey });
  }
  let backend: OfflineBackend | undefined;
  const images: LocalEnvironment['images'] = env.OPENAI_API_KEY ? 'openai' : 'offline';
  if (images === 'offline') {
    backend = await startOfflineBackend({ faults: options.faults ?? [], latencyMs: options.latencyMs ?? 0 });
    closers.push(backend.close);
    // The offline backend only draws; the prompt comes from the built-in template.
    Object.assign(env, { OPENAI_BASE_URL: backend.baseUrl, OPENAI_API_KEY: 'offline', PROMPT_PROVIDER: env.PROMPT_PROVIDER || 'template' });
  }
  try {
    const logger = new Logger({ serviceName: 'persona-avatars', logLevel: options.logLevel ?? 'SILENT' });
    const deps = await depsFromEnv(env, logger);
    return {
      deps,
      env: { ...env, OPENAI_API_KEY: undefined, S3_SECRET_KEY: undefined },
      s3,
      images,
      backend,
      close: async () => {
        deps.store.s3.destroy();
        for (const close of closers.reverse()) await close();
      },
    };
  } catch (error) {
    for (const close of closers.reverse()) await close();
    throw error;
  }
}
