/**
 * What an operator watches (README: Operations): CloudWatch metrics in the embedded metric format,
 * in one namespace, written by Powertools Metrics to each function's log when its invocation ends.
 * The dashboard and the alarms (infra/operations.ts) plot and watch these names.
 */
import { Metrics, MetricUnit } from '@aws-lambda-powertools/metrics';

export const METRICS_NAMESPACE = 'PersonaAvatars';
export const METRICS_SERVICE = 'persona-avatars';

/** Each metric, with its unit. USD has no CloudWatch unit: None. */
export const METRICS = {
  /** Every call to an image endpoint, answered or not: the denominator of the 429 share. */
  ImageCalls: MetricUnit.Count,
  /** Images drawn (by model and API mode too). */
  ImagesDrawn: MetricUnit.Count,
  /** Their estimated cost, from the usage the API returned (by model and API mode too). */
  ImageCostUsd: MetricUnit.NoUnit,
  /** Image calls the API answered 429. */
  ImageCallsRateLimited: MetricUnit.Count,
  /** Image calls that failed otherwise: 5xx, timeouts, refusals (by error too). */
  ImageCallsFailed: MetricUnit.Count,
  /** How far off a call's turn was when it claimed it. */
  TurnWaitSeconds: MetricUnit.Seconds,
  /** The account's image spending today (UTC), settled and reserved, after each call: against MAX_SPEND_USD_PER_DAY. */
  SpentTodayUsd: MetricUnit.NoUnit,
  /** Stages that ended in a named error (by error): BudgetExhausted refusals, IdentityMismatch and GridLayoutMismatch redraws… */
  StageErrors: MetricUnit.Count,
  /** Bases drawn again because check-base found a look-alike or a clear gender or age miss (by reason too). */
  BaseRedraws: MetricUnit.Count,
  AvatarsPublished: MetricUnit.Count,
  RunsPublished: MetricUnit.Count,
  /** A batch's personas: planned to run, skipped (published already, duplicates, not valid), and how they ended. */
  PersonasPlanned: MetricUnit.Count,
  PersonasSkipped: MetricUnit.Count,
  PersonasSucceeded: MetricUnit.Count,
  PersonasFailed: MetricUnit.Count,
} as const;

export type MetricName = keyof typeof METRICS;

/** One invocation's metrics: recorded as they happen, published when the stage ends. */
export interface StageMetrics {
  /** Adds `value` to `name`; with `by` (model, API mode, error), also to `name` by those dimensions. */
  record(name: MetricName, value: number, by?: Record<string, string>): void;
  /** Writes what was recorded (nothing when POWERTOOLS_METRICS_DISABLED=true: local runs). */
  publish(): void;
}

export function stageMetrics(): StageMetrics {
  const metrics = new Metrics({ namespace: METRICS_NAMESPACE, serviceName: METRICS_SERVICE });
  return {
    record(name, value, by) {
      metrics.addMetric(name, METRICS[name], value);
      if (!by) return;
      // A record of its own: the totals above keep the one dimension the alarms read.
      const single = metrics.singleMetric();
      single.addDimensions(by);
      single.addMetric(name, METRICS[name], value);
    },
    publish() {
      if (metrics.hasStoredMetrics()) metrics.publishStoredMetrics();
    },
  };
}
