import { Duration } from 'aws-cdk-lib';
import { Alarm, ComparisonOperator, TreatMissingData, type IMetric } from 'aws-cdk-lib/aws-cloudwatch';
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

export interface OperationsProps {
  stateMachine: StateMachine;
  /** Batches fail only when their own machinery does (a persona's failure is reported, not raised). */
  batchStateMachine: StateMachine;
  failedUploads: IQueue;
  recordFailure: IFunction;
  /** Where alarms are mailed (context alarmEmail); the topic exists either way. */
  alarmEmail?: string;
}

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
    for (const [name, metric, description] of alarms) {
      new Alarm(this, name, {
        metric,
        threshold: 1,
        evaluationPeriods: 1,
        comparisonOperator: ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treatMissingData: TreatMissingData.NOT_BREACHING,
        alarmDescription: `persona-avatars: ${description}`,
      }).addAlarmAction(new SnsAction(this.topic));
    }

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
}
