import { Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import type { IFunction } from 'aws-cdk-lib/aws-lambda';
import { LogGroup } from 'aws-cdk-lib/aws-logs';
import {
  DefinitionBody,
  Fail,
  JsonPath,
  LogLevel,
  Choice,
  Condition,
  Map as MapState,
  Parallel,
  Pass,
  Result,
  StateMachine,
  StateMachineType,
  TaskInput,
  Timeout,
  Wait,
  WaitTime,
  type IChainable,
  type RetryProps,
} from 'aws-cdk-lib/aws-stepfunctions';
import { LambdaInvoke } from 'aws-cdk-lib/aws-stepfunctions-tasks';
import { Construct } from 'constructs';
import { ErrorNames } from '../lambdas/shared/errors.ts';
import type { StageName } from '../lambdas/stages.ts';
import { STAGE_SPECS } from './stage-functions.ts';
import { apiStageRetries, plainStageRetries, retryGridAttempt } from './error-policy.ts';

export interface AvatarWorkflowProps {
  functions: Record<StageName, IFunction>;
  /** How many grids are generated at once (each is one image-edit call). */
  gridConcurrency: number;
  logRetentionDays: number;
}

interface StageTaskProps {
  stage: StageName;
  fn: IFunction;
  payload: Record<string, unknown>;
  retries: RetryProps[];
  resultPath?: string;
}

/** A state that invokes one stage's function with a payload, retried as the error policy says. */
export function stageTask(scope: Construct, name: string, props: StageTaskProps): LambdaInvoke {
  const state = new LambdaInvoke(scope, name, {
    lambdaFunction: props.fn,
    payload: TaskInput.fromObject(props.payload),
    payloadResponseOnly: true,
    retryOnServiceExceptions: false,
    // Outlives the Lambda's own timeout, so the function always reports first.
    taskTimeout: Timeout.duration(STAGE_SPECS[props.stage].timeout.plus(Duration.minutes(1))),
    ...(props.resultPath ? { resultPath: props.resultPath } : {}),
  });
  for (const retry of props.retries) state.addRetry(retry);
  return state;
}

/** The run's identity, as every stage's payload starts with it (and its logs: stage.ts, correlationOf). */
const RUN = {
  personaId: JsonPath.stringAt('$.personaId'),
  runId: JsonPath.stringAt('$.runId'),
  batchId: JsonPath.stringAt('$.batchId'),
};

/**
 * The avatar workflow, the only place it is written: the local runner executes what this
 * synthesizes.
 *
 *   PlanRun ─► PromptAndBase ─┬─ WritePrompt                                     ─┐
 *                             └─ GenerateBase ─(policy)─► RewriteBasePrompt ─► GenerateBaseSafer
 *                                  ─► CheckBase ─(look-alike, gender or age missed)─► RedrawBase ─► CheckBase (twice at most)
 *           ─► GenerateGrids (Map, one per 4 images) ─► GridAttempt:
 *                 GenerateGrid ─(policy)─► RewriteGridPrompt ─► GenerateGridSafer ─┐
 *                      └──────────────────────────────────────────────────────────► SplitGrid ─► CheckIdentity
 *                 (GridAttempt again, twice at most, on GridLayoutMismatch or IdentityMismatch)
 *           ─► Publish
 *   any failure ─► RecordFailure ─► RunFailed (named after the cause)
 *   each Generate… whose image turn is later ─► WaitFor…Turn (until it comes) ─► the same Generate… again
 */
export class AvatarWorkflow extends Construct {
  readonly stateMachine: StateMachine;

  /**
   * An image stage whose turn under the account's limit is further off than it waits answers
   * `{ later }` at once, its turn held for it; this waits in Step Functions until then and runs
   * it again, as often as it takes: no retry count to run out, nothing paid or reserved meanwhile.
   * The returned Choice goes on, `otherwise`, with what was drawn at `resultPath`.
   */
  private turnLoop(stage: LambdaInvoke, resultPath: string): Choice {
    const later = `${resultPath}.later`;
    const name = stage.node.id;
    const waitForTurn = new Wait(this, `WaitFor${name}Turn`, { time: WaitTime.timestampPath(later) }).next(stage);
    const drawn = new Choice(this, `${name}Turn`).when(Condition.isPresent(later), waitForTurn);
    stage.next(drawn);
    return drawn;
  }

  constructor(scope: Construct, id: string, props: AvatarWorkflowProps) {
    super(scope, id);
    const fn = props.functions;
    const task = (name: string, stage: StageName, payload: Record<string, unknown>, retries: RetryProps[], resultPath?: string) =>
      stageTask(this, name, { stage, fn: fn[stage], payload, retries, resultPath });

    // Failure path: record why, then fail with the cause's own name.
    const runFailed = new Fail(this, 'RunFailed', {
      errorPath: JsonPath.stringAt('$.failure.error'),
      causePath: JsonPath.stringAt('$.failure.cause'),
    });
    const failedUnrecorded = new Fail(this, 'RunFailedUnrecorded', {
      errorPath: JsonPath.stringAt('$.error.Error'),
      causePath: JsonPath.stringAt('$.error.Cause'),
    });
    const recordFailure = task(
      'RecordFailure',
      'record-failure',
      { input: JsonPath.executionInput, runId: JsonPath.executionName, error: JsonPath.objectAt('$.error') },
      plainStageRetries,
      '$.failure',
    );
    recordFailure.addCatch(failedUnrecorded, { errors: ['States.ALL'], resultPath: '$.recordError' });
    recordFailure.next(runFailed);
    const onFailure = (state: { addCatch: (h: IChainable, p: { errors: string[]; resultPath: string }) => unknown }) =>
      state.addCatch(recordFailure, { errors: ['States.ALL'], resultPath: '$.error' });

    // 1. Validate the persona and plan one grid per 4 images.
    const planRun = task('PlanRun', 'plan-run', { input: JsonPath.executionInput, runId: JsonPath.executionName }, plainStageRetries);

    // 2. Prompt and base selfie side by side; a refused base gets one safer prompt.
    // In batch mode the images were drawn by OpenAI's Batch API before the run: the stages take them.
    const withPersona = { ...RUN, persona: JsonPath.objectAt('$.persona'), imageApi: JsonPath.stringAt('$.imageApi') };
    // Image calls are paid from the batch's budget, when a batch runs the persona.
    const withBudget = { ...withPersona, budget: JsonPath.objectAt('$.budget') };
    /**
     * Generate{target}, and when the content policy refuses it: Rewrite{target}Prompt into a safer
     * prompt, then Generate{target}Safer with it, once. Both generations end where the caller says.
     */
    const withSaferRetry = (target: 'Base' | 'Grid', stage: StageName, payload: Record<string, unknown>, resultPath: string, promptKey?: string) => {
      const first = task(`Generate${target}`, stage, promptKey ? { ...payload, promptKey: JsonPath.stringAt(promptKey) } : payload, apiStageRetries, resultPath);
      const rewrite = task(
        `Rewrite${target}Prompt`,
        'write-prompt',
        { ...RUN, persona: JsonPath.objectAt('$.persona'), rewrite: { target: target.toLowerCase(), reason: JsonPath.stringAt('$.refusal.Cause') } },
        apiStageRetries,
        '$.saferPrompt',
      );
      const safer = task(`Generate${target}Safer`, stage, { ...payload, promptKey: JsonPath.stringAt('$.saferPrompt.promptKey') }, apiStageRetries, resultPath);
      first.addCatch(rewrite.next(safer), { errors: [ErrorNames.ContentPolicyViolation], resultPath: '$.refusal' });
      return { first, firstDrawn: this.turnLoop(first, resultPath), saferDrawn: this.turnLoop(safer, resultPath) };
    };
    const writePrompt = task('WritePrompt', 'write-prompt', withPersona, apiStageRetries);
    const { first: generateBase, firstDrawn: baseDrawn, saferDrawn: saferBaseDrawn } = withSaferRetry('Base', 'generate-base', withBudget, '$.drawn');
    // 2b. The base's checks, before any grid is paid for: another persona's person, or a clear
    //     miss of the persona's gender or age, is drawn again away from it (twice at most).
    const noRedrawsYet = new Pass(this, 'NoBaseRedrawsYet', { result: Result.fromObject({ redraws: [] }), resultPath: '$.checked' });
    const checkBase = task('CheckBase', 'check-base', { ...withPersona, base: JsonPath.objectAt('$.drawn'), checked: JsonPath.objectAt('$.checked') }, plainStageRetries, '$.checked');
    const redrawBase = task('RedrawBase', 'generate-base', { ...withBudget, promptKey: JsonPath.stringAt('$.checked.redraw.promptKey') }, apiStageRetries, '$.drawn');
    // The branch's output is the base as drawn and checked.
    const base = new Pass(this, 'BaseDrawn', { outputPath: '$.checked' });
    checkBase.next(new Choice(this, 'BaseAccepted').when(Condition.isPresent('$.checked.redraw'), redrawBase).otherwise(base));
    for (const drawn of [baseDrawn, saferBaseDrawn, this.turnLoop(redrawBase, '$.drawn')]) drawn.otherwise(checkBase);
    const promptAndBase = new Parallel(this, 'PromptAndBase', {
      resultSelector: { prompt: JsonPath.objectAt('$[0]'), base: JsonPath.objectAt('$[1]') },
      resultPath: '$.generated',
    })
      .branch(writePrompt)
      .branch(noRedrawsYet.next(generateBase));
    onFailure(promptAndBase);

    // 3. One grid per 4 images, in parallel; each split as soon as it exists. A refused grid
    //    gets one safer prompt; a grid with the wrong number of panels is drawn again.
    const gridItem = {
      ...RUN,
      persona: JsonPath.objectAt('$.persona'),
      mode: JsonPath.stringAt('$.mode'),
      grid: JsonPath.objectAt('$$.Map.Item.Value'),
      promptKey: JsonPath.stringAt('$.generated.prompt.promptKey'),
      baseKey: JsonPath.stringAt('$.generated.base.baseKey'),
      budget: JsonPath.objectAt('$.budget'),
      imageApi: JsonPath.stringAt('$.imageApi'),
    };
    const fromItem = (...keys: string[]) => Object.fromEntries(keys.map((k) => [k, JsonPath.stringAt(`$.${k}`)]));
    const gridPayload = { ...fromItem('personaId', 'runId', 'mode', 'baseKey', 'imageApi'), grid: JsonPath.objectAt('$.grid'), budget: JsonPath.objectAt('$.budget') };
    const { first: generateGrid, firstDrawn: gridDrawn, saferDrawn: saferGridDrawn } = withSaferRetry('Grid', 'generate-grid', gridPayload, '$.generated', '$.promptKey');
    const splitGrid = task('SplitGrid', 'split-grid', { ...RUN, generated: JsonPath.objectAt('$.generated') }, plainStageRetries, '$.split');
    // Every avatar must show the base's person: a grid with a stranger is drawn again.
    const checkIdentity = task(
      'CheckIdentity',
      'check-identity',
      { ...RUN, baseKey: JsonPath.stringAt('$.baseKey'), split: JsonPath.objectAt('$.split'), imageApi: JsonPath.stringAt('$.imageApi') },
      plainStageRetries,
    );
    splitGrid.next(checkIdentity);
    gridDrawn.otherwise(splitGrid);
    saferGridDrawn.otherwise(splitGrid);
    const gridAttempt = new Parallel(this, 'GridAttempt', { outputPath: '$[0]' }).branch(generateGrid);
    gridAttempt.addRetry(retryGridAttempt);
    const generateGrids = new MapState(this, 'GenerateGrids', {
      itemsPath: '$.grids',
      itemSelector: gridItem,
      maxConcurrency: props.gridConcurrency,
      resultPath: '$.gridResults',
    }).itemProcessor(gridAttempt);
    onFailure(generateGrids);

    // 4. Final names, manifest, URLs.
    const publish = task(
      'Publish',
      'publish',
      {
        ...withPersona,
        images: JsonPath.numberAt('$.images'),
        mode: JsonPath.stringAt('$.mode'),
        prompt: JsonPath.objectAt('$.generated.prompt'),
        base: JsonPath.objectAt('$.generated.base'),
        grids: JsonPath.objectAt('$.gridResults'),
      },
      plainStageRetries,
    );
    onFailure(publish);
    onFailure(planRun);

    const logs = new LogGroup(this, 'ExecutionLogs', { retention: props.logRetentionDays, removalPolicy: RemovalPolicy.DESTROY });
    this.stateMachine = new StateMachine(this, 'StateMachine', {
      // Named after the stack, so the console lists it as PersonaAvatars.
      stateMachineName: Stack.of(this).stackName,
      stateMachineType: StateMachineType.STANDARD,
      definitionBody: DefinitionBody.fromChainable(planRun.next(promptAndBase).next(generateGrids).next(publish)),
      // A run waits for its image turns as long as the account's queue is (first come, first
      // served: a batch of 10,000 at 5 images a minute queues for days), and is never failed for it.
      timeout: Duration.days(7),
      tracingEnabled: true,
      logs: { destination: logs, level: LogLevel.ALL, includeExecutionData: false },
    });
  }
}
