import type { Logger } from '@aws-lambda-powertools/logger';
import type { SFNClient } from '@aws-sdk/client-sfn';
import type OpenAI from 'openai';
import type { FaceFinder } from '../check-identity/faces.ts';
import type { SigningSource } from '../publish/signer.ts';
import { systemClock, type Clock } from './clock.ts';
import type { ImageGovernor } from './governor.ts';
import type { ImageProvider } from './image-provider.ts';
import { stageMetrics, type StageMetrics } from './metrics.ts';
import { settingsFromEnv, type Settings } from './settings.ts';
import type { ObjectStore } from './store.ts';

/**
 * Everything any stage may be given. A core names the part it uses (`StageDeps<'store'>`), its
 * handler builds only those clients, and its bundle holds only their code: a stage's cold start
 * pays for what it calls, nothing else.
 */
export interface Deps {
  settings: Settings;
  logger: Logger;
  store: ObjectStore;
  /** Whoever draws: OpenAI's image API (or a compatible server). */
  images: ImageProvider;
  /** The prompt-writing text model; undefined when no key is configured. */
  text: OpenAI | undefined;
  fetch: typeof fetch;
  /** Starts executions (the upload trigger only). */
  sfn: SFNClient;
  /** Faces, their identity embeddings and estimates (check-base and check-identity only). */
  faces: FaceFinder;
  /** The account's image spending, reserved and settled by hand (the batch round stages only). */
  governor: ImageGovernor;
  /** Who signs the avatars' C2PA manifests (publish only). */
  signing: SigningSource;
  /** What time it is for the stages that plan by it (a batch's turns). */
  clock: Clock;
  /** What the operator's dashboard and alarms read (README: Operations), published as each stage ends. */
  metrics: StageMetrics;
  /** Timeouts for one call, kept below what is left of the Lambda's own time. */
  imageTimeoutMs: number;
  textTimeoutMs: number;
  /** When a stage that works through much (a round's answers) saves what it did and hands the rest to its next invocation (epoch ms). */
  deadline: number;
}

export type StageDeps<K extends keyof Deps = never> = Pick<Deps, 'settings' | 'logger' | 'metrics' | K>;

export type StageCore<E, R, K extends keyof Deps = never> = (event: E, deps: StageDeps<K>) => Promise<R>;

type Env = Record<string, string | undefined>;

/** Builds some of a stage's clients; a handler lists the ones its core uses. */
export type ClientFactory = (env: Env, settings: Settings, logger: Logger, clock: Clock, metrics: StageMetrics) => Partial<Deps> | Promise<Partial<Deps>>;

/** Time kept back from the Lambda's remaining time so a call times out before the Lambda does. */
const LAMBDA_SAFETY_MARGIN_MS = 20_000;

export function callTimeout(capMs: number, remainingMs: number | undefined): number {
  if (remainingMs === undefined) return capMs;
  return Math.max(1_000, Math.min(capMs, remainingMs - LAMBDA_SAFETY_MARGIN_MS));
}

interface StageEvent {
  personaId?: string;
  persona?: { id?: unknown };
  input?: { persona?: { id?: unknown }; batchId?: unknown };
  runId?: unknown;
  batchId?: unknown;
  plan?: { batchId?: unknown };
}

/** What ties a stage's log lines to their run: the persona, the run (execution) name and, in a batch, the batch. */
export function correlationOf(event: unknown): Record<string, string> {
  const e = (event ?? {}) as StageEvent;
  const keys = { personaId: personaIdOf(event), runId: e.runId, batchId: e.batchId ?? e.plan?.batchId ?? e.input?.batchId };
  return Object.fromEntries(Object.entries(keys).filter((entry): entry is [string, string] => typeof entry[1] === 'string'));
}

export function personaIdOf(event: unknown): string | undefined {
  const e = (event ?? {}) as StageEvent;
  const id = e.personaId ?? e.persona?.id ?? e.input?.persona?.id;
  return typeof id === 'string' ? id : undefined;
}

/**
 * Runs a core with what every stage logs, deployed or local: stage, persona, time taken and, on
 * failure, the named error (which goes on unchanged for the state machine to match).
 */
export async function loggedStage<E, R, K extends keyof Deps>(stage: string, core: StageCore<E, R, K>, event: E, deps: Deps): Promise<R> {
  const started = Date.now();
  const keys = { stage, personaId: personaIdOf(event) };
  try {
    const result = await core(event, deps);
    deps.logger.info('stage succeeded', { ...keys, ms: Date.now() - started });
    return result;
  } catch (error) {
    deps.logger.error('stage failed', { ...keys, ms: Date.now() - started, error: error as Error });
    // By name: BudgetExhausted refusals, IdentityMismatch and GridLayoutMismatch redraws, RateLimited…
    deps.metrics.record('StageErrors', 1, { error: (error as Error)?.name ?? 'Error' });
    throw error;
  } finally {
    deps.metrics.publish();
  }
}

/** Settings, logger and the clients the factories build, once per container; `clock` tells them the date. */
export async function depsFromEnv(env: Env, logger: Logger, clients: ClientFactory[], clock: Clock = systemClock): Promise<Deps> {
  const settings = settingsFromEnv(env, clock);
  const metrics = stageMetrics();
  const built = await Promise.all(clients.map((make) => make(env, settings, logger, clock, metrics)));
  return {
    settings,
    logger,
    fetch: globalThis.fetch,
    clock,
    metrics,
    imageTimeoutMs: settings.imageTimeoutMs,
    textTimeoutMs: settings.textTimeoutMs,
    deadline: Number.POSITIVE_INFINITY,
    ...Object.assign({}, ...built),
  } as Deps;
}

