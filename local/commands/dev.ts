import { join, resolve } from 'node:path';
import type { PublishResult } from '../../lambdas/publish/core.ts';
import type { BatchReport, BatchSummary } from '../../lambdas/shared/batch.ts';
import { startFromUpload, type S3Notification } from '../../lambdas/start-from-upload/core.ts';
import { startLocalEnvironment, type LocalEnvironment } from '../environment.ts';
import { describeFiredFault, parseFaults } from '../faults.ts';
import { batchFolder, saveOutputs, saveReport } from '../outputs.ts';
import { isRunning } from '../step-functions-api.ts';
import { describe, resultLines, UsageError } from './common.ts';

export interface DevFlags {
  data: string;
  out: string;
  fault: string[];
  latency: number;
  rpm?: number;
  retryDelay: number;
}

/** Keeps the embedded S3 running and runs the workflow for every persona file put under personas/. */
export async function devCommand(flags: DevFlags): Promise<number> {
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const env: LocalEnvironment = await startLocalEnvironment({
    // Uploads here start local executions, never a deployed state machine.
    env: { ...process.env, STATE_MACHINE_ARN: undefined, BATCH_STATE_MACHINE_ARN: undefined },
    dataDir: flags.data,
    faults: parseFaults(flags.fault),
    onFault: (fired) => log(describeFiredFault(fired)),
    latencyMs: flags.latency,
    ...(flags.rpm ? { imagesPerMinute: flags.rpm } : {}),
    stepFunctions: {
      retryDelayMs: flags.retryDelay,
      onProgress: (execution, event) => {
        log(`[${execution.name}] ${describe(event).trimStart()}`);
      },
      onEnd: async (execution) => {
        const ended = execution.outcome!;
        if (ended.status !== 'SUCCEEDED') {
          log(`✗ [${execution.name}] failed: ${ended.error}: ${ended.cause}`);
          return;
        }
        if (execution.machine === 'batch') {
          const { counts, reportKey } = ended.output as BatchSummary;
          const outDir = resolve(flags.out, 'batches', batchFolder(execution.name, env.deps.clock));
          try {
            await saveReport(env.deps.store, JSON.parse(await env.deps.store.getText(reportKey)) as BatchReport, outDir);
            log(`✓ [${execution.name}] batch: ${counts.SUCCEEDED} published, ${counts.FAILED} failed, ${counts.SKIPPED} skipped; open ${join(outDir, 'index.html')} (report: ${join(outDir, 'report.json')})`);
          } catch (error) {
            log(`✗ [${execution.name}] batch: ${counts.SUCCEEDED} published, ${counts.FAILED} failed, ${counts.SKIPPED} skipped; could not save its report to ${outDir}: ${(error as Error).message} (in S3: ${reportKey})`);
          }
          return;
        }
        const outcome = { ...ended, output: ended.output as PublishResult };
        const outDir = resolve(flags.out, outcome.output.personaId);
        try {
          await saveOutputs(env.deps.store, outcome.output, outDir);
          process.stdout.write(resultLines(outcome.output, `(execution ${execution.name})`));
          process.stdout.write(`  open ${join(outDir, 'index.html')}\n\n`);
        } catch (error) {
          process.stdout.write(resultLines(outcome.output, `(execution ${execution.name})`));
          // The avatars are published in S3 all the same; the server keeps running for the rest.
          log(`✗ [${execution.name}] could not save the images to ${outDir}: ${(error as Error).message}`);
        }
      },
    },
  });
  const { embeddedS3, stepFunctions, deps } = env;
  if (!embeddedS3 || !stepFunctions) {
    await env.close();
    throw new UsageError('avatars dev watches its own embedded S3: unset S3_ENDPOINT (and S3_BUCKET_NAME with AWS credentials) to use it');
  }
  for (const note of env.notes) log(`⚠ ${note}`);
  embeddedS3.onNotification((event: S3Notification) => {
    startFromUpload(event, deps)
      .then((outcomes) => {
        for (const o of outcomes) {
          if (o.batch) log(`${o.key}: ${o.batch.existing ? 'batch already running or done' : 'started batch'} ${o.batch.name} (${o.batch.personas} personas)`);
          for (const s of o.started) log(`${o.key}: started ${s.name}`);
          for (const s of o.alreadyStarted) log(`${o.key}: ${s.personaId} unchanged, already started as ${s.name}`);
          for (const p of o.rejected) log(`${o.key}: rejected${p.line ? ` line ${p.line}` : ''}: ${p.message} (report: ${o.reportKey})`);
        }
      })
      .catch((error: Error) => log(`✗ upload trigger failed: ${error.name}: ${error.message}`));
  });
  const bucket = deps.store.bucket;
  process.stdout.write(
    [
      `avatars dev: runs the workflow for every persona file put under s3://${bucket}/personas/ (.json; a .jsonl file runs as one batch)`,
      `  S3 endpoint: ${embeddedS3.endpoint} (bucket ${bucket}, data in ${join(flags.data, 's3')}, keys ${embeddedS3.accessKey}/${embeddedS3.secretKey})`,
      `  Step Functions endpoint: ${stepFunctions.endpoint} (state machine ${stepFunctions.stateMachineArn})`,
      `  upload: curl -T events/persona.json ${embeddedS3.endpoint}/${bucket}/personas/ada-lovelace.json`,
      `  images are saved under ${resolve(flags.out)}/<persona id>/; Ctrl-C stops once running executions end`,
      '',
    ].join('\n'),
  );
  await new Promise<void>((resolveStop) => {
    process.once('SIGINT', () => resolveStop());
    process.once('SIGTERM', () => resolveStop());
  });
  const running = [...stepFunctions.executions.values()].filter(isRunning).length;
  if (running > 0) log(`stopping after ${running} running execution${running === 1 ? '' : 's'}…`);
  await env.close();
  return 0;
}
