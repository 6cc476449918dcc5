import { ArnFormat, RemovalPolicy, Stack } from 'aws-cdk-lib';
import { PolicyStatement } from 'aws-cdk-lib/aws-iam';
import type { Function as LambdaFunction, IFunction } from 'aws-cdk-lib/aws-lambda';
import { LogGroup } from 'aws-cdk-lib/aws-logs';
import type { IBucket } from 'aws-cdk-lib/aws-s3';
import {
  Choice,
  Condition,
  DefinitionBody,
  DistributedMap,
  IntegrationPattern,
  JsonPath,
  LogLevel,
  OutputType,
  Pass,
  Result,
  ResultWriterV2,
  S3JsonLItemReader,
  StateMachine,
  StateMachineType,
  TaskInput,
  Transformation,
  Wait,
  WaitTime,
  WriterConfig,
  type IStateMachine,
} from 'aws-cdk-lib/aws-stepfunctions';
import { StepFunctionsStartExecution, type StepFunctionsStartExecutionProps } from 'aws-cdk-lib/aws-stepfunctions-tasks';
import { Construct } from 'constructs';
import { apiStageRetries, plainStageRetries, retryStartExecution } from './error-policy.ts';
import { stageTask } from './workflow.ts';

export interface AvatarBatchProps {
  bucket: IBucket;
  /** The per-persona workflow each line runs as. */
  personaWorkflow: IStateMachine;
  planBatch: LambdaFunction;
  reportBatch: IFunction;
  /** Batch mode's rounds: an OpenAI batch sent, then read once it is done. */
  submitRound: IFunction;
  collectRound: IFunction;
  logRetentionDays: number;
}

/** Step Functions' key in a child's input for the execution that started it. */
const STARTED_BY = 'AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID';

/** The item a child workflow gets (plan-batch's BatchItem) and what it returns, for the report. */
const ITEM = {
  personaId: JsonPath.stringAt('$.personaId'),
  line: JsonPath.numberAt('$.line'),
  name: JsonPath.stringAt('$.name'),
};

/**
 * startExecution.sync with its follow-up grant (DescribeExecution, StopExecution) on the child
 * workflow's executions only: CDK grants `execution:{name}*`, which also matches the batch
 * machine's own executions (`{name}-Batch:…`).
 */
class StartChildExecution extends StepFunctionsStartExecution {
  constructor(scope: Construct, id: string, props: StepFunctionsStartExecutionProps & { stateMachine: IStateMachine }) {
    super(scope, id, props);
    const stack = Stack.of(this);
    const name = stack.splitArn(props.stateMachine.stateMachineArn, ArnFormat.COLON_RESOURCE_NAME).resourceName;
    const follow = this.taskPolicies!.findIndex((statement) => statement.actions.includes('states:DescribeExecution'));
    if (follow < 0) throw new Error('aws-cdk-lib no longer grants DescribeExecution for startExecution.sync: review StartChildExecution');
    this.taskPolicies![follow] = new PolicyStatement({
      actions: ['states:DescribeExecution', 'states:StopExecution'],
      resources: [stack.formatArn({ service: 'states', resource: 'execution', arnFormat: ArnFormat.COLON_RESOURCE_NAME, resourceName: `${name}:*` })],
    });
  }
}

/**
 * The batch workflow: thousands of personas from one JSON Lines file, as child executions of
 * the per-persona workflow, paced to the account's image rate limit.
 *
 *   PlanBatch ─► AnythingToRun? ─► (batch mode) SubmitRound ⇄ WaitForRound ⇄ CollectRound (OpenAI's Batch API) ─┐
 *                     │         ─► RunPersonas (Distributed Map over batches/{id}/items.jsonl): ◄─────────────────┘
 *                     │               WaitTurn (until the item's turn) ─► RunPersona (startExecution.sync:2)
 *                     │                 ─► PersonaDone | (any error) PersonaFailed
 *                     │             results ─► batches/{id}/results/ (ResultWriter, JSON Lines)
 *                     │             (ItemReader or ResultWriter failed) ─► ReportBatch
 *                     │         ─► (batch mode) RedrawRound: grids the identity check refused drawn again,
 *                     │               then WaitForRound … RunPersonas for those personas, under their next attempt (twice at most)
 *                     └──(nothing)──► NothingToRun
 *             ─► ReportBatch (batches/{id}/report.json, index.html)
 *
 * A persona's failure is its own: caught in its child workflow and reported, never the batch's.
 */
export class AvatarBatch extends Construct {
  readonly stateMachine: StateMachine;

  constructor(scope: Construct, id: string, props: AvatarBatchProps) {
    super(scope, id);
    const planBatch = stageTask(this, 'PlanBatch', {
      stage: 'plan-batch',
      fn: props.planBatch,
      payload: { personasKey: JsonPath.stringAt('$.personasKey'), batchId: JsonPath.executionName, input: JsonPath.executionInput },
      retries: plainStageRetries,
      resultPath: '$.plan',
    });

    // An attempt's name may be taken in Step Functions with no record in the bucket: PlanBatch
    // lists the executions that published nothing, a thousand a call.
    props.planBatch.addEnvironment('STATE_MACHINE_ARN', props.personaWorkflow.stateMachineArn);
    props.personaWorkflow.grant(props.planBatch, 'states:ListExecutions');

    // Each persona's turn comes when the image calls of those before it fit in the rate limit.
    const waitTurn = new Wait(this, 'WaitTurn', { time: WaitTime.timestampPath('$.notBefore') });
    // Named from the request (or its next attempt), so a persona already published never runs again.
    // The child names the execution that starts it, the Map's own, as the service docs ask
    // (concepts-nested-workflows: AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID from $$.Execution.Id):
    // the console then links each persona's run to its batch.
    const linkToParent = new Pass(this, 'LinkToParent', {
      parameters: { [STARTED_BY]: JsonPath.executionId },
      resultPath: '$.startedBy',
    });
    const runPersona = new StartChildExecution(this, 'RunPersona', {
      stateMachine: props.personaWorkflow,
      integrationPattern: IntegrationPattern.RUN_JOB,
      name: JsonPath.stringAt('$.name'),
      input: TaskInput.fromJsonPathAt(JsonPath.jsonMerge(JsonPath.objectAt('$.input'), JsonPath.objectAt('$.startedBy'))),
      // Keys only: the report makes URLs, and a result stays small whatever a run published.
      resultSelector: { status: 'SUCCEEDED', manifestKey: JsonPath.stringAt('$.Output.manifestKey'), images: JsonPath.listAt('$.Output.images[*].key'), look: JsonPath.objectAt('$.Output.look') },
      resultPath: '$.outcome',
    });
    runPersona.addRetry(retryStartExecution);
    const personaDone = new Pass(this, 'PersonaDone', { parameters: { ...ITEM, outcome: JsonPath.objectAt('$.outcome') } });
    const personaFailed = new Pass(this, 'PersonaFailed', {
      parameters: { ...ITEM, outcome: { status: 'FAILED', error: JsonPath.stringAt('$.failure.Error'), cause: JsonPath.stringAt('$.failure.Cause') } },
    });
    runPersona.addCatch(personaFailed, { errors: ['States.ALL'], resultPath: '$.failure' });

    const runPersonas = new DistributedMap(this, 'RunPersonas', {
      itemReader: new S3JsonLItemReader({ bucket: props.bucket, key: JsonPath.stringAt('$.plan.itemsKey') }),
      // One compact line per persona (its item's outcome), read back a line at a time by the report.
      resultWriterV2: new ResultWriterV2({
        bucket: props.bucket,
        prefix: JsonPath.stringAt('$.plan.resultsPrefix'),
        writerConfig: new WriterConfig({ outputType: OutputType.JSONL, transformation: Transformation.COMPACT }),
      }),
      // Enough child workflows for the rate limit to be the only brake (plan-batch works it out).
      maxConcurrencyPath: JsonPath.stringAt('$.plan.concurrency'),
      toleratedFailurePercentage: 100,
      mapExecutionType: StateMachineType.STANDARD,
      label: 'Personas',
      resultPath: '$.map',
    }).itemProcessor(waitTurn.next(linkToParent).next(runPersona.next(personaDone)));

    const reportBatch = stageTask(this, 'ReportBatch', {
      stage: 'report-batch',
      fn: props.reportBatch,
      payload: { plan: JsonPath.objectAt('$.plan'), map: JsonPath.objectAt('$.map') },
      retries: plainStageRetries,
    });
    // The items file unreadable or the results unwritable: the report still comes, every persona in it.
    runPersonas.addCatch(reportBatch, { errors: ['States.ALL'], resultPath: '$.map' });

    // Batch mode: the images are drawn by OpenAI's Batch API in rounds before the personas run, and
    // Step Functions does the waiting: SubmitRound ─► WaitForRound ─► CollectRound ─► (not done) WaitForRound
    // ─► (another round due) SubmitRound ─► … ─► RunPersonas, whose workflows take the drawn images.
    // Every round stage answers in $.round, which the states after it read.
    const roundTask = (name: string, stage: 'submit-round' | 'collect-round', payload: Record<string, unknown>) =>
      stageTask(this, name, { stage, fn: stage === 'submit-round' ? props.submitRound : props.collectRound, payload, retries: apiStageRetries, resultPath: '$.round' });
    const submitRound = roundTask('SubmitRound', 'submit-round', { plan: JsonPath.objectAt('$.plan') });
    const waitForRound = new Wait(this, 'WaitForRound', { time: WaitTime.secondsPath('$.round.waitSeconds') });
    const collectRound = roundTask('CollectRound', 'collect-round', { plan: JsonPath.objectAt('$.plan'), round: JsonPath.objectAt('$.round') });
    // Rounds that cannot go on leave the rest undrawn: each persona's run then fails with why.
    for (const round of [submitRound, collectRound]) round.addCatch(runPersonas, { errors: ['States.ALL'], resultPath: '$.roundError' });
    submitRound.next(
      new Choice(this, 'RoundSent')
        .when(Condition.stringEquals('$.round.status', 'nothing'), runPersonas)
        .otherwise(waitForRound.next(collectRound).next(
          new Choice(this, 'RoundDone')
            .when(Condition.stringEquals('$.round.status', 'pending'), waitForRound)
            .when(Condition.stringEquals('$.round.next', 'submit'), submitRound)
            .otherwise(runPersonas),
        )),
    );

    // After the personas ran, grids the identity check refused are drawn again in a round of their
    // own, and those personas run again under their next attempt (twice at most).
    const redrawRound = roundTask('RedrawRound', 'submit-round', { plan: JsonPath.objectAt('$.plan'), map: JsonPath.objectAt('$.map') });
    redrawRound.addCatch(reportBatch, { errors: ['States.ALL'], resultPath: '$.roundError' });
    const runAgain = new Pass(this, 'RunRefusedAgain', { parameters: { plan: JsonPath.objectAt('$.round.plan'), round: JsonPath.objectAt('$.round'), map: JsonPath.objectAt('$.map') } });
    redrawRound.next(new Choice(this, 'AnyRedrawn').when(Condition.stringEquals('$.round.status', 'nothing'), reportBatch).otherwise(runAgain.next(waitForRound)));
    runPersonas.next(new Choice(this, 'AfterPersonas').when(Condition.stringEquals('$.plan.apiMode', 'batch'), redrawRound).otherwise(reportBatch));

    const nothingToRun = new Pass(this, 'NothingToRun', { result: Result.fromObject({}), resultPath: '$.map' });
    const anythingToRun = new Choice(this, 'AnythingToRun')
      .when(Condition.and(Condition.numberGreaterThan('$.plan.toRun', 0), Condition.stringEquals('$.plan.apiMode', 'batch')), submitRound)
      .when(Condition.numberGreaterThan('$.plan.toRun', 0), runPersonas)
      .otherwise(nothingToRun.next(reportBatch));

    const logs = new LogGroup(this, 'ExecutionLogs', { retention: props.logRetentionDays, removalPolicy: RemovalPolicy.DESTROY });
    this.stateMachine = new StateMachine(this, 'StateMachine', {
      stateMachineName: `${Stack.of(this).stackName}-Batch`,
      stateMachineType: StateMachineType.STANDARD,
      definitionBody: DefinitionBody.fromChainable(planBatch.next(anythingToRun)),
      tracingEnabled: true,
      logs: { destination: logs, level: LogLevel.ALL, includeExecutionData: false },
    });
  }
}
