/**
 * The state machine definition exactly as the CDK app synthesizes it, with each Task state
 * traced back to the stage whose function it invokes. Nothing here restates the workflow.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildApp } from '../infra/app.ts';
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
  /** Task state name → the stage its Lambda runs. */
  taskStages: Record<string, StageName>;
  template: { Resources: Record<string, CfnResource> };
}

const LOCAL_ARN = 'arn:aws:lambda:us-east-1:000000000000:function:';

/** Resolves the intrinsics CDK puts in a DefinitionString: Join, Ref and GetAtt of functions. */
function resolve(value: unknown): string {
  if (typeof value === 'string') return value;
  const node = value as Record<string, unknown>;
  if ('Fn::Join' in node) {
    const [separator, parts] = node['Fn::Join'] as [string, unknown[]];
    return parts.map(resolve).join(separator);
  }
  if ('Fn::GetAtt' in node) return `${LOCAL_ARN}${(node['Fn::GetAtt'] as string[])[0]}`;
  if ('Ref' in node) return node.Ref === 'AWS::Partition' ? 'aws' : `${LOCAL_ARN}${String(node.Ref)}`;
  throw new Error(`unexpected intrinsic in the state machine definition: ${JSON.stringify(value)}`);
}

export function allStates(machine: AslMachine): [string, AslState][] {
  return Object.entries(machine.States).flatMap(([name, state]) => [
    [name, state] as [string, AslState],
    ...(state.Branches ?? []).flatMap(allStates),
    ...[state.ItemProcessor ?? state.Iterator].filter((m): m is AslMachine => !!m).flatMap(allStates),
  ]);
}

export function workflowFromTemplate(template: SynthesizedWorkflow['template']): SynthesizedWorkflow {
  const machines = Object.values(template.Resources).filter((r) => r.Type === 'AWS::StepFunctions::StateMachine');
  if (machines.length !== 1) throw new Error(`expected one state machine in the template, found ${machines.length}`);
  const definition = JSON.parse(resolve(machines[0]!.Properties.DefinitionString)) as AslMachine;
  const stageOf = new Map<string, StageName>();
  for (const [logicalId, resource] of Object.entries(template.Resources)) {
    const stage = (resource.Properties?.Environment as { Variables?: { STAGE?: StageName } } | undefined)?.Variables?.STAGE;
    if (resource.Type === 'AWS::Lambda::Function' && stage) stageOf.set(`${LOCAL_ARN}${logicalId}`, stage);
  }
  const taskStages: Record<string, StageName> = {};
  for (const [name, state] of allStates(definition)) {
    if (state.Type !== 'Task') continue;
    const stage = stageOf.get(state.Resource ?? '');
    if (!stage) throw new Error(`Task state ${name} invokes ${state.Resource}, which is no stage function`);
    taskStages[name] = stage;
  }
  return { definition, taskStages, template };
}

let cached: SynthesizedWorkflow | undefined;

/** Synthesizes the CDK app (without bundling: only the definition is needed) once per process. */
export function synthesizeWorkflow(): SynthesizedWorkflow {
  if (cached) return cached;
  const outdir = mkdtempSync(join(tmpdir(), 'avatars-synth-'));
  try {
    const { app, stack } = buildApp({ bundle: false, outdir });
    const template = app.synth().getStackByName(stack.stackName).template as SynthesizedWorkflow['template'];
    cached = workflowFromTemplate(template);
    return cached;
  } finally {
    rmSync(outdir, { recursive: true, force: true });
  }
}
