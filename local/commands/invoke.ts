import type { PublishResult } from '../../lambdas/publish/core.ts';
import type { BatchSummary } from '../../lambdas/shared/batch.ts';
import { readFile } from 'node:fs/promises';
import { stageNames, stages, type StageName } from '../../lambdas/stages.ts';
import type { Deps } from '../../lambdas/shared/stage.ts';
import { avatarKeys } from '../../lambdas/shared/keys.ts';
import { executionArn } from '../../lambdas/shared/sfn.ts';
import type { UploadOutcome } from '../../lambdas/start-from-upload/core.ts';
import { startLocalEnvironment, type LocalEnvironment, type LocalEnvironmentOptions } from '../environment.ts';
import { describeFiredFault, parseFaults } from '../faults.ts';
import { asStage } from '../iam.ts';
import { localStageRoles } from '../runner.ts';
import { readJsonFile, UsageError } from './common.ts';

export interface InvokeFlags {
  event: string;
  data: string;
  fault: string[];
  put: string[];
}

/** `key=file` pairs for --put. */
function parsePuts(specs: string[]): { key: string; file: string }[] {
  return specs.map((spec) => {
    const at = spec.indexOf('=');
    if (at < 1 || at === spec.length - 1) throw new UsageError(`--put ${spec}: use KEY=FILE, e.g. personas/ada-lovelace.json=events/persona.json`);
    return { key: spec.slice(0, at), file: spec.slice(at + 1) };
  });
}

/** Personas the trigger did not start because their run exists: published, or still running. */
function sayWhatRanBefore(outcomes: UploadOutcome[], env: LocalEnvironment): void {
  for (const { alreadyStarted } of outcomes) {
    for (const { personaId, name } of alreadyStarted) {
      const execution = env.stepFunctions?.executions.get(executionArn(env.deps.settings.stateMachineArn ?? '', name));
      const status = execution?.outcome?.status ?? 'RUNNING';
      const what = status === 'SUCCEEDED' ? `already published (${avatarKeys(personaId).run(name).manifest}): nothing ran, nothing was paid` : 'already running: not started twice';
      process.stderr.write(`execution ${name}: persona ${personaId} ${what}\n`);
    }
  }
}

export async function invokeCommand(stage: string, flags: InvokeFlags): Promise<number> {
  if (!stageNames.includes(stage as StageName)) throw new UsageError(`unknown stage "${stage}": one of ${stageNames.join(', ')}`);
  const event = await readJsonFile(flags.event, 'event file');
  const puts = await Promise.all(
    parsePuts(flags.put).map(async ({ key, file }) => ({ key, body: await readFile(file).catch(() => Promise.reject(new UsageError(`--put: cannot read ${file}`))) })),
  );
  // Executions the upload trigger starts run here, unless STATE_MACHINE_ARN names a deployed one.
  const stepFunctions: LocalEnvironmentOptions['stepFunctions'] = {
    onEnd: (execution) => {
      const outcome = execution.outcome!;
      const output = outcome.status === 'SUCCEEDED' ? (outcome.output as Partial<PublishResult & BatchSummary>) : undefined;
      const detail = !output
        ? `${outcome.status === 'FAILED' ? `${outcome.error}: ${outcome.cause}` : ''}`
        : output.counts
          ? `batch: ${output.counts.SUCCEEDED} published, ${output.counts.FAILED} failed, ${output.counts.SKIPPED} skipped, report ${output.reportKey}`
          : `${output.images!.length} avatars, manifest ${output.manifestKey}`;
      process.stderr.write(`execution ${execution.name}: ${outcome.status}, ${detail}\n`);
    },
  };
  const env = await startLocalEnvironment({
    dataDir: flags.data,
    faults: parseFaults(flags.fault),
    onFault: (fired) => process.stderr.write(`${describeFiredFault(fired)}\n`),
    ...(stage === 'start-from-upload' ? { stepFunctions } : {}),
  });
  for (const note of env.notes) process.stderr.write(`⚠ ${note}\n`);
  try {
    for (const { key, body } of puts) await env.deps.store.put(key, body, key.endsWith('.json') ? 'application/json' : 'application/octet-stream');
    const core = stages[stage as StageName] as (e: unknown, d: Deps) => Promise<unknown>;
    const result = await asStage((await localStageRoles(env.deps))[stage as StageName], () => core(event, env.deps));
    if (stage === 'start-from-upload') sayWhatRanBefore(result as UploadOutcome[], env);
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    return 0;
  } catch (error) {
    process.stderr.write(`✗ ${stage} failed: ${(error as Error).name}: ${(error as Error).message}\n`);
    return 1;
  } finally {
    await env.close();
  }
}
