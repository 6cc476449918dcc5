import { Duration } from 'aws-cdk-lib';
import type { Function as LambdaFunction } from 'aws-cdk-lib/aws-lambda';
import { SqsDestination } from 'aws-cdk-lib/aws-lambda-destinations';
import { EventType, type IBucket } from 'aws-cdk-lib/aws-s3';
import { LambdaDestination } from 'aws-cdk-lib/aws-s3-notifications';
import { Queue, QueueEncryption } from 'aws-cdk-lib/aws-sqs';
import type { IStateMachine } from 'aws-cdk-lib/aws-stepfunctions';
import { NagSuppressions } from 'cdk-nag';
import { Construct } from 'constructs';
import { Prefixes } from '../lambdas/shared/keys.ts';

export interface UploadTriggerProps {
  bucket: IBucket;
  /** The start-from-upload function. */
  trigger: LambdaFunction;
  stateMachine: IStateMachine;
  /** What a JSON Lines upload starts: one batch. */
  batchStateMachine: IStateMachine;
}

/** Persona files are uploaded as one JSON persona or as JSON Lines of many. */

/**
 * Uploads under personas/ start runs: S3 notifies the trigger function, which validates each
 * persona and starts the persona workflow (a .json file) or one batch (a .jsonl file), and
 * nothing else, under an idempotent name. A
 * notification the function could not handle in three tries (throttled, say) is kept in a
 * queue with its error instead of being dropped; its names make replaying it safe.
 */
export class UploadTrigger extends Construct {
  readonly failedUploads: Queue;

  constructor(scope: Construct, id: string, props: UploadTriggerProps) {
    super(scope, id);
    props.trigger.addEnvironment('STATE_MACHINE_ARN', props.stateMachine.stateMachineArn);
    props.trigger.addEnvironment('BATCH_STATE_MACHINE_ARN', props.batchStateMachine.stateMachineArn);
    for (const machine of [props.stateMachine, props.batchStateMachine]) {
      machine.grantStartExecution(props.trigger);
      // A taken name is looked up: running or done is that start; failed gets a new attempt.
      machine.grantExecution(props.trigger, 'states:DescribeExecution');
    }
    // Every file under personas/: S3's suffix filters are case-sensitive, so `Ada.JSON` would be
    // skipped in silence; the trigger reads any case and reports what is not a persona file.
    props.bucket.addEventNotification(EventType.OBJECT_CREATED, new LambdaDestination(props.trigger), { prefix: Prefixes.personas });
    this.failedUploads = new Queue(this, 'FailedUploads', {
      encryption: QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      retentionPeriod: Duration.days(14),
    });
    props.trigger.configureAsyncInvoke({ retryAttempts: 2, onFailure: new SqsDestination(this.failedUploads) });
    NagSuppressions.addResourceSuppressions(this.failedUploads, [
      { id: 'AwsSolutions-SQS3', reason: 'This queue is where failed upload notifications end up: it is the dead-letter queue, and needs none of its own.' },
    ]);
  }
}
