import type { IFunction } from 'aws-cdk-lib/aws-lambda';
import { EventType, type IBucket } from 'aws-cdk-lib/aws-s3';
import { LambdaDestination } from 'aws-cdk-lib/aws-s3-notifications';
import type { IStateMachine } from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import { Prefixes } from '../lambdas/shared/keys.ts';

export interface UploadTriggerProps {
  bucket: IBucket;
  /** The start-from-upload function. */
  trigger: IFunction & { addEnvironment(key: string, value: string): unknown };
  stateMachine: IStateMachine;
}

/** Persona files are uploaded as one JSON persona or as JSON Lines of many. */
export const PERSONA_UPLOAD_SUFFIXES = ['.json', '.jsonl'];

/**
 * Uploads under personas/ start runs: S3 notifies the trigger function, which validates each
 * persona and starts this state machine, and nothing else, under an idempotent name.
 */
export class UploadTrigger extends Construct {
  constructor(scope: Construct, id: string, props: UploadTriggerProps) {
    super(scope, id);
    props.trigger.addEnvironment('STATE_MACHINE_ARN', props.stateMachine.stateMachineArn);
    props.stateMachine.grantStartExecution(props.trigger);
    for (const suffix of PERSONA_UPLOAD_SUFFIXES) {
      props.bucket.addEventNotification(EventType.OBJECT_CREATED, new LambdaDestination(props.trigger), { prefix: Prefixes.personas, suffix });
    }
  }
}
