import { CfnOutput, RemovalPolicy, Stack, type StackProps } from 'aws-cdk-lib';
import { AttributeType, BillingMode, Table } from 'aws-cdk-lib/aws-dynamodb';
import { Secret } from 'aws-cdk-lib/aws-secretsmanager';
import { NagSuppressions } from 'cdk-nag';
import type { Construct } from 'constructs';
import { AvatarBucket } from './avatar-bucket.ts';
import { AvatarCdn } from './avatar-cdn.ts';
import type { Settings, StackSettings } from '../lambdas/shared/settings.ts';
import { StageFunctions } from './stage-functions.ts';
import { Operations } from './operations.ts';
import { UploadTrigger } from './upload-trigger.ts';
import { AvatarWorkflow } from './workflow.ts';
import { AvatarBatch } from './batch-workflow.ts';

export interface PersonaAvatarsProps extends StackProps, StackSettings {
  /** What the stages run with (from context): written into every function's environment. */
  settings: Settings;
}

export class PersonaAvatarsStack extends Stack {
  readonly workflow: AvatarWorkflow;
  readonly stages: StageFunctions;
  readonly batch: AvatarBatch;

  constructor(scope: Construct, id: string, props: PersonaAvatarsProps) {
    super(scope, id, props);
    const { bucket } = new AvatarBucket(this, 'Avatars', {
      existingBucketName: props.bucketName,
      runExpiryDays: props.runExpiryDays,
      supersededRunExpiryDays: props.supersededRunExpiryDays,
    });
    // Referenced, never copied: the key stays in Secrets Manager and out of the template.
    const openAiKey = Secret.fromSecretNameV2(this, 'OpenAiKey', props.openAiSecretName);
    // Created by whoever holds the certificate, before or after deploying: until then, unsigned avatars.
    const c2paSigning = Secret.fromSecretNameV2(this, 'C2paSigning', props.c2paSigningSecretName);
    const cdn = new AvatarCdn(this, 'Cdn', { bucket });
    // One account, one image budget: every image call's turn and spending, whichever run makes it.
    const imageBudget = new Table(this, 'ImageBudget', {
      partitionKey: { name: 'pk', type: AttributeType.STRING },
      billingMode: BillingMode.PAY_PER_REQUEST,
      timeToLiveAttribute: 'expiresAt',
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      removalPolicy: RemovalPolicy.DESTROY,
    });
    // URLs under the distribution, unless the context names a domain of its own.
    const publicBaseUrl = props.settings.publicBaseUrl ?? cdn.baseUrl;
    this.stages = new StageFunctions(this, 'Stages', { bucket, imageBudget, openAiKey, c2paSigning, architecture: props.architecture, settings: { ...props.settings, publicBaseUrl }, logRetentionDays: props.logRetentionDays });
    this.workflow = new AvatarWorkflow(this, 'Workflow', { functions: this.stages.functions, gridConcurrency: props.gridConcurrency, logRetentionDays: props.logRetentionDays });
    this.batch = new AvatarBatch(this, 'Batch', {
      bucket,
      personaWorkflow: this.workflow.stateMachine,
      planBatch: this.stages.functions['plan-batch'],
      reportBatch: this.stages.functions['report-batch'],
      submitRound: this.stages.functions['submit-round'],
      collectRound: this.stages.functions['collect-round'],
      logRetentionDays: props.logRetentionDays,
    });
    const uploads = new UploadTrigger(this, 'UploadTrigger', {
      bucket,
      trigger: this.stages.functions['start-from-upload'],
      stateMachine: this.workflow.stateMachine,
      batchStateMachine: this.batch.stateMachine,
    });
    const operations = new Operations(this, 'Operations', {
      stateMachine: this.workflow.stateMachine,
      batchStateMachine: this.batch.stateMachine,
      failedUploads: uploads.failedUploads,
      recordFailure: this.stages.functions['record-failure'],
      alarmEmail: props.alarmEmail,
      functions: this.stages.functions,
      imagesPerMinute: props.settings.imagesPerMinute,
      maxSpendUsdPerDay: props.settings.maxSpendUsdPerDay,
    });
    new CfnOutput(this, 'AlarmTopicArn', { value: operations.topic.topicArn, description: 'alarms on failed runs, dead-lettered uploads, 429s, spending and turn waits' });
    new CfnOutput(this, 'DashboardUrl', {
      value: `https://console.aws.amazon.com/cloudwatch/home?region=${this.region}#dashboards:name=${operations.dashboard.dashboardName}`,
      description: 'images a minute, 429s, spending against the cap, turn waits, runs, batches and stages (README: Operations)',
    });

    new CfnOutput(this, 'BucketName', { value: bucket.bucketName });
    new CfnOutput(this, 'ImageBudgetTable', { value: imageBudget.tableName, description: 'IMAGE_BUDGET_TABLE: the image turns and spending every run shares (`avatars budget`)' });
    new CfnOutput(this, 'StateMachineArn', { value: this.workflow.stateMachine.stateMachineArn });
    new CfnOutput(this, 'BatchStateMachineArn', { value: this.batch.stateMachine.stateMachineArn, description: 'batches: `avatars start FILE.jsonl`, or upload personas/{name}.jsonl' });
    new CfnOutput(this, 'FailedUploadsQueueUrl', { value: uploads.failedUploads.queueUrl, description: 'upload notifications the trigger could not handle' });
    new CfnOutput(this, 'AvatarsUrl', { value: `${cdn.baseUrl}/avatars/`, description: 'where published avatars are read: {AvatarsUrl}{personaId}/manifest.json' });

    NagSuppressions.addStackSuppressions(this, [
      {
        id: 'AwsSolutions-IAM4',
        reason: 'Stage functions use AWSLambdaBasicExecutionRole only to write their own CloudWatch logs.',
        appliesTo: ['Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole'],
      },
      {
        id: 'AwsSolutions-IAM5',
        reason: 'Object keys are per persona, run, batch and face, so each stage may touch objects under its own prefixes (runs/*, avatars/*, personas/*, rejected/*, batches/*, faces/*), one action each, and never list the bucket.',
        appliesTo: [{ regex: '/^Resource::(<AvatarsBucket[0-9A-F]+\\.Arn>|arn:<AWS::Partition>:s3:::[^/]+)\\/(runs|avatars|personas|rejected|batches|faces)\\/.*$/g' }],
      },
      {
        id: 'AwsSolutions-IAM5',
        reason: "The batch's Distributed Map reads the items file and writes its results at keys the plan names at run time (under batches/); CDK's ItemReader and ResultWriter grant that on the bucket's objects.",
        appliesTo: [{ regex: '/^Resource::arn:<AWS::Partition>:s3:::<AvatarsBucket[0-9A-F]+>\\/\\*$/g' }],
      },
      {
        id: 'AwsSolutions-IAM5',
        reason: "Execution names are per persona request and per batch: the trigger describes its workflows' executions, and the batch starts, follows and stops its child executions, of these two state machines only.",
        appliesTo: [{ regex: '/^Resource::arn:<AWS::Partition>:states:.*:execution:.*$/g' }],
      },
      {
        id: 'AwsSolutions-IAM5',
        reason: 'The state machine invokes the stage functions, any of their versions (the ":*" suffix CDK adds); nothing else.',
        appliesTo: [{ regex: '/^Resource::<Stages[A-Za-z0-9-]+\\.Arn>:\\*$/g' }],
      },
      {
        id: 'AwsSolutions-IAM5',
        reason: 'X-Ray trace segments and Step Functions log delivery take no resource but "*" by design.',
        appliesTo: ['Resource::*'],
      },
      {
        id: 'AwsSolutions-S1',
        reason: 'Server access logs would double-write every image; object access is audited with CloudTrail data events where an account needs it.',
      },
      {
        id: 'AwsSolutions-SMG4',
        reason: 'The OpenAI key is issued by OpenAI, and the C2PA signing certificate by a certificate authority: neither can be rotated by a Lambda; renew them with their issuer and update the secrets.',
      },
    ]);
  }
}
