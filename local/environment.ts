/**
 * Where a local run keeps its images and who draws them: the configured S3 and OpenAI when
 * the environment names them (same variables as the deployed stages), else an embedded S3
 * server and the offline image backend, both on loopback.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Logger } from '@aws-lambda-powertools/logger';
import { SFNClient } from '@aws-sdk/client-sfn';
import { projectContext } from '../infra/context.ts';
import { systemClock, type Clock } from '../lambdas/shared/clock.ts';
import { openAiClients } from '../lambdas/shared/openai.ts';
import { storeClient } from '../lambdas/shared/s3.ts';
import { withClientPlugins } from '../lambdas/shared/aws-clients.ts';
import { environmentOf, settingsFromContext, settingsFromEnv } from '../lambdas/shared/settings.ts';
import { SFN_MAX_ATTEMPTS, sfnClient } from '../lambdas/shared/sfn.ts';
import { depsFromEnv, type Deps } from '../lambdas/shared/stage.ts';
import { signingClient } from '../lambdas/publish/signer.ts';
import { budgetTableClient, ensureBudgetTable, governorClient } from '../lambdas/shared/governor.ts';
import { devSigningFiles } from './certificates.ts';
import { startEmbeddedS3, type EmbeddedS3 } from './embedded-s3.ts';
import { localFaceFinder } from './face-worker.ts';
import type { FiredFault } from './faults.ts';
import { startOfflineBackend, type Fault, type OfflineBackend } from './offline-openai.ts';
import { installIamCheck } from './iam.ts';
import { useBudgetTable } from './runner.ts';
import { startLocalStepFunctions, type LocalStepFunctions, type LocalStepFunctionsOptions } from './step-functions-api.ts';

export interface LocalEnvironmentOptions {
  /** Variables over cdk.json's context (default: the process environment). */
  env?: Record<string, string | undefined>;
  /** Where the embedded S3 keeps its data. */
  dataDir: string;
  /** CDK context the settings start from (default: cdk.json's, as `cdk synth` reads it). */
  context?: Record<string, unknown>;
  faults?: Fault[];
  /** Told each time one of `faults` fires. */
  onFault?: (fired: FiredFault) => void;
  latencyMs?: number;
  /** Models the offline backend answers `model_not_found` for (default: those shut down by the clock's day). */
  retiredModels?: string[];
  /** Today's date, for the model table's shutdowns (default: the system's). */
  clock?: Clock;
  /** The offline backend's simulated image rate limit. */
  imagesPerMinute?: number;
  /** The offline Batch API's queue limit, in enqueued lines. */
  batchQueueLimit?: number;
  logLevel?: 'DEBUG' | 'INFO' | 'WARN' | 'ERROR' | 'SILENT';
  /**
   * Serve a local Step Functions API running the synthesized workflow, for whatever starts
   * executions (the upload trigger), unless STATE_MACHINE_ARN names a deployed one.
   */
  stepFunctions?: Omit<LocalStepFunctionsOptions, 'deps'>;
}

export interface LocalEnvironment {
  deps: Deps;
  /** The variables the stages ran with (secrets left out), for `avatars invoke` and display. */
  env: Record<string, string | undefined>;
  s3: 'embedded' | 'endpoint' | 'aws';
  embeddedS3: EmbeddedS3 | undefined;
  images: 'openai' | 'offline';
  backend: OfflineBackend | undefined;
  stepFunctions: LocalStepFunctions | undefined;
  /** The CAs a C2PA reader trusts to see this environment's signatures as Trusted (development ones: README, Marking). */
  trustAnchorsPem: string;
  /** What a person should know about this environment, such as a shortened timeout. */
  notes: string[];
  close(): Promise<void>;
}

/** How long an image call waits locally under `--fault hang`, unless IMAGE_TIMEOUT_MS says. */
export const HANG_TIMEOUT_MS = 5_000;

/** The offline backend without --rpm: no limit to pace to. */
export const UNLIMITED_IMAGES_PER_MINUTE = 100_000;

function usesAwsS3(env: Record<string, string | undefined>): boolean {
  return !!env.S3_BUCKET_NAME && !!(env.AWS_ACCESS_KEY_ID || env.AWS_PROFILE || env.AWS_ENDPOINT_URL_S3);
}

/**
 * What a deployed function would run with: the settings cdk.json's context gives the stack,
 * under the variables given here, so `"images": 8` in cdk.json makes 8 avatars locally too.
 */
export function localVariables(env: Record<string, string | undefined> = process.env, context = projectContext()): Record<string, string | undefined> {
  return { ...environmentOf(settingsFromContext(context), context), ...env };
}

export async function startLocalEnvironment(options: LocalEnvironmentOptions): Promise<LocalEnvironment> {
  // Before any client is made: each stage's calls are then checked against its role.
  installIamCheck();
  const given = options.env ?? process.env;
  const context = options.context ?? projectContext();
  /** Whether the user set this variable or its context key: local defaults stand aside for it. */
  const userSet = (variable: string, contextKey: string) => given[variable] !== undefined || context[contextKey] !== undefined;
  const env = localVariables(given, context);
  const clock = options.clock ?? systemClock;
  // Checked before any server starts: a bad model, size or quality is named at once.
  settingsFromEnv(env, clock);
  const closers: (() => Promise<void>)[] = [];
  const s3: LocalEnvironment['s3'] = env.S3_ENDPOINT ? 'endpoint' : usesAwsS3(env) ? 'aws' : 'embedded';
  let embeddedS3: EmbeddedS3 | undefined;
  if (s3 === 'embedded') {
    env.S3_BUCKET_NAME ||= 'avatars';
    embeddedS3 = await startEmbeddedS3(join(options.dataDir, 's3'), env.S3_BUCKET_NAME);
    closers.push(embeddedS3.close);
    Object.assign(env, { S3_ENDPOINT: embeddedS3.endpoint, S3_ACCESS_KEY: embeddedS3.accessKey, S3_SECRET_KEY: embeddedS3.secretKey });
  }
  let backend: OfflineBackend | undefined;
  const notes: string[] = [];
  const images: LocalEnvironment['images'] = env.OPENAI_API_KEY ? 'openai' : 'offline';
  if (images === 'offline') {
    // A hung call would otherwise hold the run for the deployed 10 minutes before its retry.
    if (options.faults?.some((f) => f.kind === 'hang') && !userSet('IMAGE_TIMEOUT_MS', 'imageTimeoutMs')) {
      env.IMAGE_TIMEOUT_MS = String(HANG_TIMEOUT_MS);
      notes.push(`--fault hang: image calls give up after ${HANG_TIMEOUT_MS / 1000} s here (IMAGE_TIMEOUT_MS sets it; 10 minutes by default)`);
    }
    backend = await startOfflineBackend({
      faults: options.faults ?? [],
      latencyMs: options.latencyMs ?? 0,
      clock,
      ...(options.retiredModels ? { retiredModels: options.retiredModels } : {}),
      ...(options.imagesPerMinute ? { imagesPerMinute: options.imagesPerMinute } : {}),
      ...(options.batchQueueLimit ? { batchQueueLimit: options.batchQueueLimit } : {}),
      ...(options.onFault ? { onFault: options.onFault } : {}),
      batchDir: join(options.dataDir, 'openai'),
    });
    closers.push(backend.close);
    // Its batches are done in seconds: looked at every second, not every minute.
    if (!userSet('OPENAI_BATCH_POLL_SECONDS', 'openAiBatchPollSeconds')) env.OPENAI_BATCH_POLL_SECONDS = '1';
    // The offline backend only draws; the prompt comes from the built-in template. Its rate limit
    // is --rpm's, or none: the account's default limit does not apply unless set.
    Object.assign(env, {
      OPENAI_BASE_URL: backend.baseUrl,
      OPENAI_API_KEY: 'offline',
      PROMPT_PROVIDER: env.PROMPT_PROVIDER || 'template',
      ...(!userSet('IMAGES_PER_MINUTE', 'imagesPerMinute') ? { IMAGES_PER_MINUTE: String(options.imagesPerMinute ?? UNLIMITED_IMAGES_PER_MINUTE) } : {}),
    });
  }
  try {
    // Avatars are signed locally as on AWS: with the certificate configured, else a development one.
    let trustAnchorsPem = backend?.generatorCaPem ?? '';
    if (!env.C2PA_SIGNING_SECRET_ARN && !env.C2PA_CERTIFICATE && !env.C2PA_PRIVATE_KEY) {
      const dev = await devSigningFiles(join(options.dataDir, 'c2pa'));
      Object.assign(env, { C2PA_CERTIFICATE: dev.certificate, C2PA_PRIVATE_KEY: dev.privateKey });
      trustAnchorsPem += readFileSync(dev.ca, 'utf8');
    }
    // A DynamoDB-compatible server that local processes share: its table made where missing.
    if (env.IMAGE_BUDGET_TABLE && env.AWS_ENDPOINT_URL_DYNAMODB) {
      const client = budgetTableClient(env);
      await ensureBudgetTable(client, env.IMAGE_BUDGET_TABLE).finally(() => client.destroy());
    }
    const logger = new Logger({ serviceName: 'persona-avatars', logLevel: options.logLevel ?? 'SILENT' });
    // Metrics are CloudWatch's (README: Operations): off here, so commands print only what they say
    // (POWERTOOLS_METRICS_DISABLED=false writes their EMF records to stdout, as a Lambda does).
    process.env.POWERTOOLS_METRICS_DISABLED ??= 'true';
    const deps = await depsFromEnv(env, logger, [storeClient, openAiClients, sfnClient, localFaceFinder, signingClient, governorClient], clock);
    useBudgetTable(deps, env.IMAGE_BUDGET_TABLE);
    const clients = [deps.store.s3, deps.sfn];
    let stepFunctions: LocalStepFunctions | undefined;
    if (options.stepFunctions && !env.STATE_MACHINE_ARN) {
      stepFunctions = await startLocalStepFunctions({ ...options.stepFunctions, deps });
      // Closed first (closers run in reverse): it waits for its executions, which need the rest.
      closers.push(stepFunctions.close);
      const sfn = withClientPlugins(new SFNClient({ region: 'us-east-1', endpoint: stepFunctions.endpoint, maxAttempts: SFN_MAX_ATTEMPTS, credentials: { accessKeyId: 'local', secretAccessKey: 'local' } }));
      clients.push(sfn);
      // The same object the executions run with: their stages (plan-batch) see this Step Functions too.
      Object.assign(deps, { sfn, settings: { ...deps.settings, stateMachineArn: stepFunctions.stateMachineArn, batchStateMachineArn: stepFunctions.batchStateMachineArn } });
      Object.assign(env, { STATE_MACHINE_ARN: stepFunctions.stateMachineArn, BATCH_STATE_MACHINE_ARN: stepFunctions.batchStateMachineArn, AWS_ENDPOINT_URL_SFN: stepFunctions.endpoint });
    }
    return {
      deps,
      env: { ...env, OPENAI_API_KEY: undefined, S3_SECRET_KEY: undefined },
      s3,
      embeddedS3,
      images,
      backend,
      stepFunctions,
      trustAnchorsPem,
      notes,
      close: async () => {
        for (const close of closers.reverse()) await close();
        for (const client of clients) client.destroy();
      },
    };
  } catch (error) {
    for (const close of closers.reverse()) await close();
    throw error;
  }
}
