/**
 * The state machine definitions exactly as the CDK app synthesizes them, with each Task state
 * traced back to the stage whose function it invokes. Nothing here restates a workflow.
 */
import { createHash, randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BATCH_STATE_MACHINE_NAME, projectRoot, STACK_NAME } from '../infra/context.ts';
import type { StageName } from '../lambdas/stages.ts';

interface CfnResource {
  Type: string;
  Properties: Record<string, unknown>;
}

export interface AslState {
  Type: string;
  Resource?: string;
  Retry?: unknown[];
  Branches?: AslMachine[];
  ItemProcessor?: AslMachine;
  Iterator?: AslMachine;
  [key: string]: unknown;
}

export interface AslMachine {
  StartAt: string;
  States: Record<string, AslState>;
  [key: string]: unknown;
}

export interface SynthesizedWorkflow {
  definition: AslMachine;
  /** Task state name → the stage its Lambda runs (other Tasks call Step Functions itself). */
  taskStages: Record<string, StageName>;
  /** As Step Functions would name it in this account: arn:aws:states:…:stateMachine:{name}. */
  stateMachineArn: string;
  template: Template;
}

export interface Template {
  Resources: Record<string, CfnResource>;
}

/** The two state machines of the stack: one persona, and a batch of them. */
export interface SynthesizedWorkflows {
  persona: SynthesizedWorkflow;
  batch: SynthesizedWorkflow;
}

const LOCAL_ARN = 'arn:aws:lambda:us-east-1:000000000000:function:';
export const localStateMachineArn = (name: string) => `arn:aws:states:us-east-1:000000000000:stateMachine:${name}`;

/** Resolves the intrinsics CDK puts in a DefinitionString: Join, Ref and GetAtt of functions and state machines. */
function resolver(template: Template): (value: unknown) => string {
  const resolve = (value: unknown): string => {
    if (typeof value === 'string') return value;
    const node = value as Record<string, unknown>;
    if ('Fn::Join' in node) {
      const [separator, parts] = node['Fn::Join'] as [string, unknown[]];
      return parts.map(resolve).join(separator);
    }
    if ('Fn::GetAtt' in node) return `${LOCAL_ARN}${(node['Fn::GetAtt'] as string[])[0]}`;
    if ('Ref' in node) {
      if (node.Ref === 'AWS::Partition') return 'aws';
      const resource = template.Resources[String(node.Ref)];
      // A state machine's Ref is its ARN.
      if (resource?.Type === 'AWS::StepFunctions::StateMachine') return localStateMachineArn(String(resource.Properties.StateMachineName));
      // A bucket's Ref is its name: locally, the one bucket of the store.
      return resource?.Type === 'AWS::Lambda::Function' ? `${LOCAL_ARN}${String(node.Ref)}` : String(node.Ref);
    }
    throw new Error(`unexpected intrinsic in the state machine definition: ${JSON.stringify(value)}`);
  };
  return resolve;
}

export function allStates(machine: AslMachine): [string, AslState][] {
  return Object.entries(machine.States).flatMap(([name, state]) => [
    [name, state] as [string, AslState],
    ...(state.Branches ?? []).flatMap(allStates),
    ...[state.ItemProcessor ?? state.Iterator].filter((m): m is AslMachine => !!m).flatMap(allStates),
  ]);
}

/** Step Functions' own integrations (a child execution): run by the local runner, not a stage. */
export const isStepFunctionsTask = (state: AslState) => state.Resource?.startsWith('arn:aws:states:::states:') ?? false;

/** The state machine named `name` in a synthesized template, with each Lambda Task traced to its stage. */
export function workflowFromTemplate(template: Template, name = STACK_NAME): SynthesizedWorkflow {
  const machines = Object.values(template.Resources).filter((r) => r.Type === 'AWS::StepFunctions::StateMachine' && r.Properties.StateMachineName === name);
  if (machines.length !== 1) throw new Error(`expected one state machine named ${name} in the template, found ${machines.length}`);
  const definition = JSON.parse(resolver(template)(machines[0]!.Properties.DefinitionString)) as AslMachine;
  const stageOf = new Map<string, StageName>();
  for (const [logicalId, resource] of Object.entries(template.Resources)) {
    const stage = (resource.Properties?.Environment as { Variables?: { STAGE?: StageName } } | undefined)?.Variables?.STAGE;
    if (resource.Type === 'AWS::Lambda::Function' && stage) stageOf.set(`${LOCAL_ARN}${logicalId}`, stage);
  }
  const taskStages: Record<string, StageName> = {};
  for (const [stateName, state] of allStates(definition)) {
    if (state.Type !== 'Task' || isStepFunctionsTask(state)) continue;
    const stage = stageOf.get(state.Resource ?? '');
    if (!stage) throw new Error(`Task state ${stateName} invokes ${state.Resource}, which is no stage function`);
    taskStages[stateName] = stage;
  }
  return { definition, taskStages, stateMachineArn: localStateMachineArn(name), template };
}

/**
 * What the template is made from: the CDK app's and the stages' sources, cdk.json, the CDK
 * library's version and the account and region the stack is given. Same inputs, same template.
 */
function synthesisInputs(): string {
  const hash = createHash('sha256');
  const sources = ['infra', 'lambdas'].flatMap((dir) =>
    readdirSync(join(projectRoot, dir), { recursive: true, encoding: 'utf8' })
      .filter((file) => file.endsWith('.ts'))
      .map((file) => join(dir, file)),
  );
  for (const file of [...sources.sort(), 'cdk.json'].map((f) => join(projectRoot, f)).concat(createRequire(import.meta.url).resolve('aws-cdk-lib/package.json'))) {
    hash.update(file).update('\0').update(readFileSync(file)).update('\0');
  }
  hash.update(JSON.stringify([process.env.CDK_DEFAULT_ACCOUNT, process.env.CDK_DEFAULT_REGION, process.version]));
  return hash.digest('hex').slice(0, 32);
}

/** Synthesizes the CDK app (without bundling or validation: only the definitions are needed). */
async function synthesize(): Promise<Template> {
  const { buildApp } = await import('../infra/app.ts');
  const outdir = mkdtempSync(join(tmpdir(), 'avatars-synth-'));
  try {
    const { app, stack } = buildApp({ bundle: false, validate: false, outdir });
    return app.synth().getStackByName(stack.stackName).template as Template;
  } finally {
    rmSync(outdir, { recursive: true, force: true });
  }
}

/**
 * The template, synthesized once per set of inputs and kept in the system's temporary folder:
 * loading the CDK library and synthesizing take about 2 s, most of a short local command's start.
 * Written to a file of its own, then renamed, so processes starting together never read half of one.
 */
async function template(): Promise<Template> {
  const file = join(tmpdir(), `persona-avatars-template-${synthesisInputs()}.json`);
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as Template;
  } catch {
    const synthesized = await synthesize();
    const partial = `${file}.${process.pid}.${randomUUID()}`;
    try {
      writeFileSync(partial, JSON.stringify(synthesized));
      renameSync(partial, file);
    } catch {
      // A read-only temporary folder costs the next start its synthesis, nothing more.
      rmSync(partial, { force: true });
    }
    return synthesized;
  }
}

let cached: Promise<SynthesizedWorkflows> | undefined;

/** The two state machines as `cdk synth` makes them, once per process. */
export function synthesizeWorkflows(): Promise<SynthesizedWorkflows> {
  cached ??= template().then((t) => ({ persona: workflowFromTemplate(t, STACK_NAME), batch: workflowFromTemplate(t, BATCH_STATE_MACHINE_NAME) }));
  return cached;
}
