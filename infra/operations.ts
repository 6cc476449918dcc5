import { Duration } from 'aws-cdk-lib';
import {
  Alarm,
  ComparisonOperator,
  Dashboard,
  GraphWidget,
  type HorizontalAnnotation,
  MathExpression,
  Metric,
  SingleValueWidget,
  Stats,
  TextWidget,
  TreatMissingData,
  type IMetric,
} from 'aws-cdk-lib/aws-cloudwatch';
import { SnsAction } from 'aws-cdk-lib/aws-cloudwatch-actions';
import { Rule, RuleTargetInput, EventField } from 'aws-cdk-lib/aws-events';
import { LambdaFunction } from 'aws-cdk-lib/aws-events-targets';
import { ServicePrincipal } from 'aws-cdk-lib/aws-iam';
import { Key } from 'aws-cdk-lib/aws-kms';
import type { IFunction } from 'aws-cdk-lib/aws-lambda';
import { Topic } from 'aws-cdk-lib/aws-sns';
import { EmailSubscription } from 'aws-cdk-lib/aws-sns-subscriptions';
import type { IQueue } from 'aws-cdk-lib/aws-sqs';
import type { StateMachine } from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import { METRICS_NAMESPACE, METRICS_SERVICE, type MetricName } from '../lambdas/shared/metrics.ts';

export interface OperationsProps {
  stateMachine: StateMachine;
  /** Batches fail only when their own machinery does (a persona's failure is reported, not raised). */
  batchStateMachine: StateMachine;
  failedUploads: IQueue;
  recordFailure: IFunction;
  /** Where alarms are mailed (context alarmEmail); the topic exists either way. */
  alarmEmail?: string;
  /** Every stage's function, for its errors and durations. */
  functions: Record<string, IFunction>;
  /** The account's image limit and daily spending cap, as the stages are configured. */
  imagesPerMinute: number;
  maxSpendUsdPerDay: number | undefined;
}

/** A metric the stages write (lambdas/shared/metrics.ts), summed or as given over `period`. */
const stageMetric = (name: MetricName, statistic: string = Stats.SUM, period = Duration.minutes(1)) =>
  new Metric({ namespace: METRICS_NAMESPACE, metricName: name, dimensionsMap: { service: METRICS_SERVICE }, statistic, period });

/**
 * What an operator sees when something fails:
 *  - alarms on failed, timed-out and aborted executions, on failed batches and on upload notifications waiting in
 *    the dead-letter queue, to one SNS topic (output AlarmTopicArn), mailed when alarmEmail is set;
 *  - executions that end outside the workflow's own Catch (the execution's time limit, a stop
 *    from the console, a States.Runtime error) are recorded by record-failure all the same, from
 *    their status event.
 */
export class Operations extends Construct {
  readonly topic: Topic;
  readonly dashboard: Dashboard;

  constructor(scope: Construct, id: string, props: OperationsProps) {
    super(scope, id);
    // CloudWatch can publish only to topics whose key lets it: a key of our own, rotated.
    const key = new Key(this, 'AlarmTopicKey', { enableKeyRotation: true, description: 'persona-avatars alarm topic' });
    key.grant(new ServicePrincipal('cloudwatch.amazonaws.com'), 'kms:Decrypt', 'kms:GenerateDataKey*');
    this.topic = new Topic(this, 'Alarms', { displayName: 'persona-avatars alarms', masterKey: key, enforceSSL: true });
    if (props.alarmEmail) this.topic.addSubscription(new EmailSubscription(props.alarmEmail));

    const machine = props.stateMachine;
    const alarms: [string, IMetric, string][] = [
      ['ExecutionsFailed', machine.metricFailed({ period: Duration.minutes(5) }), 'runs failed: see avatars/{id}/failures/ for why'],
      ['ExecutionsTimedOut', machine.metricTimedOut({ period: Duration.minutes(5) }), 'runs hit the execution time limit'],
      ['ExecutionsAborted', machine.metricAborted({ period: Duration.minutes(5) }), 'runs were stopped'],
      ['BatchesFailed', props.batchStateMachine.metricFailed({ period: Duration.minutes(5) }), 'a batch failed as a whole (its file unreadable, its plan or report not written): see the execution'],
      [
        'UploadsDeadLettered',
        props.failedUploads.metricApproximateNumberOfMessagesVisible({ period: Duration.minutes(5) }),
        'upload notifications the trigger gave up on wait in the FailedUploads queue: fix the cause, then replay them',
      ],
    ];
    for (const [name, metric, description] of alarms) this.alarm(name, metric, 1, description);

    // Images, money and waiting (the stages' own metrics).
    const rateLimitedShare = new MathExpression({
      expression: '100 * limited / FILL(calls, 1)',
      usingMetrics: { limited: stageMetric('ImageCallsRateLimited', Stats.SUM, Duration.minutes(5)), calls: stageMetric('ImageCalls', Stats.SUM, Duration.minutes(5)) },
      label: '429s, % of image calls',
      period: Duration.minutes(5),
    });
    this.alarm('ImageCallsRateLimited', rateLimitedShare, 5, 'more than 5% of image calls were answered 429 over 5 minutes: IMAGES_PER_MINUTE is above the account\'s limit, or another client shares it', ComparisonOperator.GREATER_THAN_THRESHOLD);
    const turnWait = stageMetric('TurnWaitSeconds', Stats.MAXIMUM, Duration.minutes(5));
    this.alarm('TurnWaitOverAnHour', turnWait, 3600, 'an image call\'s turn was more than an hour away: the queue is longer than the image limit drains in an hour (batches, uploads); nothing fails, runs wait', ComparisonOperator.GREATER_THAN_THRESHOLD);
    const spent = stageMetric('SpentTodayUsd', Stats.MAXIMUM, Duration.minutes(5));
    if (props.maxSpendUsdPerDay !== undefined) {
      this.alarm('SpendNearDailyCap', spent, 0.8 * props.maxSpendUsdPerDay, `image spending today reached 80% of MAX_SPEND_USD_PER_DAY ($${props.maxSpendUsdPerDay}): past the cap, image calls are refused with BudgetExhausted until midnight UTC`);
    }

    const stages = Object.entries(props.functions);
    const perStage = (metric: (fn: IFunction) => Metric) => stages.map(([stage, fn]) => metric(fn).with({ label: stage, period: Duration.minutes(5) }));
    const stageError = (error: string) =>
      new Metric({ namespace: METRICS_NAMESPACE, metricName: 'StageErrors', dimensionsMap: { service: METRICS_SERVICE, error }, statistic: Stats.SUM, period: Duration.minutes(5), label: error });
    this.dashboard = new Dashboard(this, 'Dashboard', { dashboardName: 'persona-avatars' });
    this.dashboard.addWidgets(
      new TextWidget({ markdown: '# persona-avatars\nImages, money and waiting (namespace `PersonaAvatars`), then runs and stages. README: Operations says what each answers.', width: 24, height: 2 }),
    );
    this.dashboard.addWidgets(
      new GraphWidget({
        title: 'Images a minute, against IMAGES_PER_MINUTE',
        left: [stageMetric('ImagesDrawn').with({ label: 'images drawn' }), stageMetric('ImageCalls').with({ label: 'image calls' })],
        leftAnnotations: [{ value: props.imagesPerMinute, label: `IMAGES_PER_MINUTE (${props.imagesPerMinute})` } satisfies HorizontalAnnotation],
        width: 12,
      }),
      new GraphWidget({ title: '429s, % of image calls (alarm above 5%)', left: [rateLimitedShare], leftAnnotations: [{ value: 5, label: 'alarm' }], width: 12 }),
      new GraphWidget({
        title: 'Spent today (UTC), USD, against MAX_SPEND_USD_PER_DAY',
        left: [spent.with({ label: 'spent and reserved today' }), stageMetric('ImageCostUsd', Stats.SUM, Duration.minutes(5)).with({ label: 'drawn in 5 minutes' })],
        leftAnnotations: props.maxSpendUsdPerDay === undefined ? [] : [{ value: props.maxSpendUsdPerDay, label: 'cap' }, { value: 0.8 * props.maxSpendUsdPerDay, label: 'alarm (80%)' }],
        width: 12,
      }),
      new GraphWidget({ title: 'Turn wait, seconds (alarm above an hour)', left: [turnWait.with({ label: 'longest' }), stageMetric('TurnWaitSeconds', Stats.AVERAGE, Duration.minutes(5)).with({ label: 'average' })], width: 12 }),
    );
    this.dashboard.addWidgets(
      new GraphWidget({
        title: 'Runs',
        left: [machine.metricSucceeded({ label: 'succeeded' }), machine.metricFailed({ label: 'failed' }), machine.metricTimedOut({ label: 'timed out' }), machine.metricAborted({ label: 'stopped' })],
        width: 8,
      }),
      new GraphWidget({
        title: 'Batches and their personas',
        left: [props.batchStateMachine.metricSucceeded({ label: 'batches succeeded' }), props.batchStateMachine.metricFailed({ label: 'batches failed' })],
        right: (['PersonasPlanned', 'PersonasSkipped', 'PersonasSucceeded', 'PersonasFailed'] as const).map((name) => stageMetric(name, Stats.SUM, Duration.minutes(5)).with({ label: name })),
        width: 8,
      }),
      new GraphWidget({
        title: 'Redraws and refusals, by error',
        left: ['IdentityMismatch', 'GridLayoutMismatch', 'ContentPolicyViolation', 'BudgetExhausted', 'RateLimited'].map(stageError),
        // The bases check-base drew again: another persona's person, or a clear gender or age miss.
        right: ['lookalike', 'gender', 'age'].map(
          (reason) => new Metric({ namespace: METRICS_NAMESPACE, metricName: 'BaseRedraws', dimensionsMap: { service: METRICS_SERVICE, reason }, statistic: Stats.SUM, period: Duration.minutes(5), label: `base redrawn: ${reason}` }),
        ),
        width: 8,
      }),
    );
    this.dashboard.addWidgets(
      new GraphWidget({ title: 'Lambda errors per stage', left: perStage((fn) => fn.metricErrors()), width: 12 }),
      new GraphWidget({ title: 'Lambda duration per stage (p95, ms)', left: perStage((fn) => fn.metricDuration({ statistic: Stats.p(95) })), width: 12 }),
      new SingleValueWidget({ title: 'Avatars published (24 h)', metrics: [stageMetric('AvatarsPublished', Stats.SUM, Duration.days(1))], width: 6 }),
    );

    // Recording is idempotent: a run the workflow recorded itself keeps that record.
    const recorded: [string, string, string[], string][] = [
      ['RecordRunsEndedOutsideTheWorkflow', 'record runs that timed out or were stopped, as the workflow records its own failures', ['TIMED_OUT', 'ABORTED'], '$.detail.status'],
      ['RecordFailedRuns', 'record runs that failed without a record of their own (States.Runtime, a failed RecordFailure), so no name is taken in silence', ['FAILED'], '$.detail.error'],
    ];
    for (const [id, description, status, error] of recorded) {
      new Rule(this, id, {
        description: `persona-avatars: ${description}`,
        eventPattern: { source: ['aws.states'], detailType: ['Step Functions Execution Status Change'], detail: { stateMachineArn: [machine.stateMachineArn], status } },
        targets: [
          new LambdaFunction(props.recordFailure, {
            event: RuleTargetInput.fromObject({
              input: EventField.fromPath('$.detail.input'),
              runId: EventField.fromPath('$.detail.name'),
              error: { Error: EventField.fromPath(error), Cause: EventField.fromPath('$.detail.cause') },
            }),
            retryAttempts: 4,
          }),
        ],
      });
    }
  }

  /** An alarm to the topic: `metric` past `threshold` over one period; no data is no alarm. */
  private alarm(id: string, metric: IMetric, threshold: number, description: string, comparisonOperator = ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD): void {
    new Alarm(this, id, {
      metric,
      threshold,
      evaluationPeriods: 1,
      comparisonOperator,
      treatMissingData: TreatMissingData.NOT_BREACHING,
      alarmDescription: `persona-avatars: ${description}`,
    }).addAlarmAction(new SnsAction(this.topic));
  }
}
