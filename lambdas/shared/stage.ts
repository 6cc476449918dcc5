import { Logger } from '@aws-lambda-powertools/logger';
import type { Context } from 'aws-lambda';
import type { SFNClient } from '@aws-sdk/client-sfn';
import type OpenAI from 'openai';
import { openAiClient, openAiKeyFromEnv, s3ClientFromEnv, sfnClientFromEnv } from './clients.ts';
import { settingsFromEnv, type Settings } from './settings.ts';
import { ObjectStore } from './store.ts';

/** What a stage's core is given: its clients and settings, never the environment itself. */
export interface StageDeps {
  store: ObjectStore;
  settings: Settings;
  /** Undefined when no key is configured: prompt writing then falls back to its template. */
  openai: OpenAI | undefined;
  logger: Logger;
  /** Timeout for one image call, kept below what is left of the Lambda's own time. */
  imageTimeoutMs: number;
  fetch: typeof fetch;
  /** Starts executions (the upload trigger only). */
  sfn: SFNClient;
}

export type StageCore<E, R> = (event: E, deps: StageDeps) => Promise<R>;

/** Time kept back from the Lambda's remaining time so an image call times out first. */
const LAMBDA_SAFETY_MARGIN_MS = 20_000;

export function callTimeout(settings: Settings, remainingMs: number | undefined): number {
  if (remainingMs === undefined) return settings.imageTimeoutMs;
  return Math.max(1_000, Math.min(settings.imageTimeoutMs, remainingMs - LAMBDA_SAFETY_MARGIN_MS));
}

export async function depsFromEnv(env: Record<string, string | undefined>, logger: Logger): Promise<StageDeps> {
  const settings = settingsFromEnv(env);
  const key = await openAiKeyFromEnv(env);
  return {
    store: new ObjectStore(s3ClientFromEnv(env), settings.bucket),
    settings,
    openai: key ? openAiClient(key, env.OPENAI_BASE_URL) : undefined,
    logger,
    imageTimeoutMs: settings.imageTimeoutMs,
    fetch: globalThis.fetch,
    sfn: sfnClientFromEnv(env),
  };
}

interface StageEvent {
  personaId?: string;
  persona?: { id?: unknown };
  input?: { persona?: { id?: unknown } };
}

export function personaIdOf(event: unknown): string | undefined {
  const e = (event ?? {}) as StageEvent;
  const id = e.personaId ?? e.persona?.id ?? e.input?.persona?.id;
  return typeof id === 'string' ? id : undefined;
}

/**
 * Wraps a stage core as a Lambda handler: builds clients once per container, tags logs with
 * stage and persona, and lets named errors through unchanged for the state machine to match.
 */
export function lambdaHandler<E, R>(stage: string, core: StageCore<E, R>) {
  const logger = new Logger({ serviceName: 'persona-avatars', persistentKeys: { stage } });
  let base: Promise<StageDeps> | undefined;
  return async (event: E, context: Context): Promise<R> => {
    base ??= depsFromEnv(process.env, logger);
    const deps = await base;
    logger.addContext(context);
    logger.appendKeys({ personaId: personaIdOf(event) });
    const started = Date.now();
    try {
      const result = await core(event, { ...deps, imageTimeoutMs: callTimeout(deps.settings, context.getRemainingTimeInMillis()) });
      logger.info('stage succeeded', { ms: Date.now() - started });
      return result;
    } catch (error) {
      logger.error('stage failed', { ms: Date.now() - started, error: error as Error });
      throw error;
    }
  };
}
