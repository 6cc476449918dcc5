import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import { Architecture, LoggingFormat, Runtime, Tracing } from 'aws-cdk-lib/aws-lambda';
import { NodejsFunction, OutputFormat } from 'aws-cdk-lib/aws-lambda-nodejs';
import { LogGroup } from 'aws-cdk-lib/aws-logs';
import { PolicyStatement } from 'aws-cdk-lib/aws-iam';
import type { IBucket } from 'aws-cdk-lib/aws-s3';
import type { ITable } from 'aws-cdk-lib/aws-dynamodb';
import type { ISecret } from 'aws-cdk-lib/aws-secretsmanager';
import { Construct } from 'constructs';
import { Prefixes } from '../lambdas/shared/keys.ts';
import { FACE_MODELS } from '../lambdas/check-identity/assets.ts';
import { environmentOf, type Settings, type StackSettings } from '../lambdas/shared/settings.ts';
import type { StageName } from '../lambdas/stages.ts';
import { projectRoot } from './context.ts';

export type LambdaArchitecture = StackSettings['architecture'];

export interface StageFunctionsProps {
  bucket: IBucket;
  /** The account's image turns and spending, shared by every stage that calls the image API. */
  imageBudget: ITable;
  openAiKey: ISecret;
  /** The certificate and key publish signs the avatars' C2PA manifests with. */
  c2paSigning: ISecret;
  architecture: LambdaArchitecture;
  settings: Settings;
  /** Days each function's log group keeps its logs. */
  logRetentionDays: number;
}

/**
 * What each stage may do to the bucket: the least its code needs, as explicit statements per
 * prefix. No stage may list the bucket, hold or retain objects; only the upload trigger deletes
 * (its own reports), and submit-round (a round's request files, once submitted).
 */
interface StageSpec {
  reads: string[];
  writes: string[];
  /** Tags objects it wrote (publish marks superseded runs). */
  tags?: string[];
  deletes?: string[];
  usesOpenAi: boolean;
  /** Calls the image API: takes turns and reserves spending in the image budget table. */
  drawsImages?: boolean;
  usesSharp: boolean;
  /** Carries the face models and tfjs's WASM binaries (check-identity). */
  usesFaces?: boolean;
  /** Signs the avatars' C2PA manifests: reads the signing secret, carries the C2PA library's WASM (publish). */
  signsAvatars?: boolean;
  timeout: Duration;
  memoryMb: number;
}

const runs = `${Prefixes.runs}*`;
const avatars = `${Prefixes.avatars}*`;
const failures = `${Prefixes.avatars}*/failures/*`;
const currentManifests = `${Prefixes.avatars}*/manifest.json`;
const personas = `${Prefixes.personas}*`;
const rejected = `${Prefixes.rejected}*`;
const batches = `${Prefixes.batches}*`;
const runManifests = `${Prefixes.avatars}*/runs/*/manifest.json`;
const runFolders = `${Prefixes.avatars}*/runs/*`;
const roundFiles = `${Prefixes.batches}*/rounds/*`;
const faces = `${Prefixes.faces}*`;

/** Image calls may take minutes (the seed allowed 600 s); a Lambda may run 15. */
const IMAGE_STAGE_TIMEOUT = Duration.minutes(15);

export const STAGE_SPECS: Record<StageName, StageSpec> = {
  'plan-run': { reads: [], writes: [], usesOpenAi: false, usesSharp: false, timeout: Duration.seconds(10), memoryMb: 256 },
  'write-prompt': { reads: [runs], writes: [runs], usesOpenAi: true, usesSharp: false, timeout: Duration.minutes(5), memoryMb: 256 },
  'generate-base': { reads: [runs], writes: [runs], usesOpenAi: true, drawsImages: true, usesSharp: false, timeout: IMAGE_STAGE_TIMEOUT, memoryMb: 512 },
  'generate-grid': { reads: [runs], writes: [runs], usesOpenAi: true, drawsImages: true, usesSharp: false, timeout: IMAGE_STAGE_TIMEOUT, memoryMb: 512 },
  'split-grid': { reads: [runs], writes: [runs], usesOpenAi: false, usesSharp: true, timeout: Duration.minutes(1), memoryMb: 1024 },
  // TensorFlow.js on WASM: about 300 MB, and the CPU that memory brings. The face index: 100,000
  // faces are 100 MB of vectors, read in a second or two when cold (README: Every persona a different person).
  // Writes the prompt of a redraw, and its own faces to the index (each once, conditionally).
  'check-base': { reads: [runs, faces], writes: [runs, faces], usesOpenAi: false, usesSharp: true, usesFaces: true, timeout: Duration.minutes(2), memoryMb: 2048 },
  // TensorFlow.js on WASM: about 300 MB, and the CPU that memory brings.
  // Writes only its refusal of a grid drawn in an OpenAI batch, for the batch's next round.
  'check-identity': { reads: [runs], writes: [runs], usesOpenAi: false, usesSharp: true, usesFaces: true, timeout: Duration.minutes(2), memoryMb: 2048 },
  // Crops every avatar to one size (sharp): the memory buys CPU as well.
  // Reads back its own run folder: a retried Publish finds what it wrote and keeps it.
  publish: { reads: [runs, currentManifests, runFolders], writes: [avatars], tags: [avatars], usesOpenAi: false, usesSharp: true, signsAvatars: true, timeout: Duration.minutes(2), memoryMb: 1024 },
  'record-failure': { reads: [], writes: [failures], usesOpenAi: false, usesSharp: false, timeout: Duration.seconds(30), memoryMb: 256 },
  // Not a workflow state: S3 invokes it for persona uploads (upload-trigger.ts).
  'start-from-upload': { reads: [personas, batches], writes: [rejected], deletes: [rejected], usesOpenAi: false, usesSharp: false, timeout: Duration.minutes(5), memoryMb: 256 },
  // A batch's first and last states (batch-workflow.ts): they read a file of any length as it streams.
  'plan-batch': { reads: [personas, batches, runManifests, failures], writes: [batches], usesOpenAi: false, usesSharp: false, timeout: Duration.minutes(15), memoryMb: 1024 },
  'report-batch': { reads: [batches], writes: [batches], usesOpenAi: false, usesSharp: false, timeout: Duration.minutes(15), memoryMb: 1024 },
  // Batch mode's rounds (batch-workflow.ts): prompts, OpenAI batch files in and out, images to the runs.
  // Reads the run's manifest: a persona published meanwhile is not drawn again.
  // 2048 MB: `npm run bench -- rounds` measured a round of 20,000 lines at 75% of 1024 MB; the
  // memory also buys the CPU that writes, checks and reserves them.
  'submit-round': { reads: [batches, runs, runManifests], writes: [batches, runs], deletes: [roundFiles], usesOpenAi: true, drawsImages: true, usesSharp: false, timeout: Duration.minutes(15), memoryMb: 2048 },
  'collect-round': { reads: [batches, runs], writes: [batches, runs], usesOpenAi: true, drawsImages: true, usesSharp: false, timeout: Duration.minutes(15), memoryMb: 1024 },
};

/** sharp's native parts for one Linux architecture, as npm installed them (no network needed). */
export function sharpPackages(architecture: LambdaArchitecture): string[] {
  const cpu = architecture === 'arm64' ? 'arm64' : 'x64';
  const packages = ['sharp', '@img/colour', 'detect-libc', 'semver', `@img/sharp-linux-${cpu}`, `@img/sharp-libvips-linux-${cpu}`];
  const missing = packages.filter((p) => !existsSync(join(projectRoot, 'node_modules', p, 'package.json')));
  if (missing.length > 0) {
    throw new Error(
      `Cannot package sharp for linux-${cpu}: ${missing.join(', ')} not installed. ` +
        `Run \`npm install --os=linux --cpu=${cpu} sharp\` or deploy with architecture x86_64.`,
    );
  }
  return packages;
}

/** One Lambda per stage, bundled by esbuild on this machine, on the Node 24 runtime. */
export class StageFunctions extends Construct {
  readonly functions: Record<StageName, NodejsFunction>;

  constructor(scope: Construct, id: string, props: StageFunctionsProps) {
    super(scope, id);
    const { bucket, imageBudget, openAiKey, c2paSigning, architecture, settings } = props;
    const environment: Record<string, string> = {
      ...environmentOf(settings),
      S3_BUCKET_NAME: bucket.bucketName,
      POWERTOOLS_SERVICE_NAME: 'persona-avatars',
      NODE_OPTIONS: '--enable-source-maps',
    };
    const functions = {} as Record<StageName, NodejsFunction>;
    for (const [stage, spec] of Object.entries(STAGE_SPECS) as [StageName, StageSpec][]) {
      const modules = spec.usesSharp ? sharpPackages(architecture) : [];
      const fn = new NodejsFunction(this, stage, {
        entry: join(projectRoot, 'lambdas', stage, 'handler.ts'),
        handler: 'handler',
        runtime: Runtime.NODEJS_24_X,
        architecture: architecture === 'arm64' ? Architecture.ARM_64 : Architecture.X86_64,
        timeout: spec.timeout,
        memorySize: spec.memoryMb,
        tracing: Tracing.ACTIVE,
        loggingFormat: LoggingFormat.JSON,
        description: `persona-avatars ${stage}`,
        logGroup: new LogGroup(this, `${stage}-logs`, { retention: props.logRetentionDays, removalPolicy: RemovalPolicy.DESTROY }),
        projectRoot,
        depsLockFilePath: join(projectRoot, 'package-lock.json'),
        environment: {
          ...environment,
          STAGE: stage,
          ...(spec.usesOpenAi ? { OPENAI_API_KEY_SECRET_ARN: openAiKey.secretArn } : {}),
          ...(spec.signsAvatars ? { C2PA_SIGNING_SECRET_ARN: c2paSigning.secretArn } : {}),
          ...(spec.drawsImages ? { IMAGE_BUDGET_TABLE: imageBudget.tableName } : {}),
        },
        bundling: {
          format: OutputFormat.CJS,
          target: 'node24',
          minify: true,
          sourceMap: true,
          // A CJS bundle has __filename; import.meta.url serves only the ESM sources run locally.
          define: { 'import.meta.url': '""' },
          // The AWS SDK is bundled so the deployed code runs the versions the tests ran.
          externalModules: modules.length > 0 ? ['sharp'] : [],
          // sharp is native: copy the packages npm installed for this architecture next to the
          // bundle, instead of `nodeModules`, which would run npm against the registry.
          commandHooks: {
            beforeBundling: () => [],
            beforeInstall: () => [],
            afterBundling: (inputDir: string, outputDir: string) => [
              ...modules.map((m) => `mkdir -p "${outputDir}/node_modules/${m}" && cp -R "${inputDir}/node_modules/${m}/." "${outputDir}/node_modules/${m}/"`),
              // Where faces.ts looks beside its bundle: the three models it loads, tfjs's .wasm files.
              ...(spec.usesFaces
                ? [
                    `mkdir -p "${outputDir}/face-models" "${outputDir}/tfjs-wasm"`,
                    ...FACE_MODELS.map((m) => `cp "${inputDir}/node_modules/@vladmandic/human/models/${m}".* "${outputDir}/face-models/"`),
                    `cp "${inputDir}"/node_modules/@tensorflow/tfjs-backend-wasm/dist/*.wasm "${outputDir}/tfjs-wasm/"`,
                  ]
                : []),
              // Where c2pa.ts looks beside its bundle.
              ...(spec.signsAvatars ? [`cp "${inputDir}/node_modules/@contentauth/c2pa-wasm/pkg/c2pa_bg.wasm" "${outputDir}/"`] : []),
            ],
          },
        },
      });
      const allow = (action: string, prefixes: string[] = []) => {
        if (prefixes.length > 0) fn.addToRolePolicy(new PolicyStatement({ actions: [action], resources: prefixes.map((p) => bucket.arnForObjects(p)) }));
      };
      allow('s3:GetObject', spec.reads);
      allow('s3:PutObject', spec.writes);
      allow('s3:PutObjectTagging', spec.tags);
      allow('s3:DeleteObject', spec.deletes);
      if (spec.usesOpenAi) openAiKey.grantRead(fn);
      if (spec.signsAvatars) c2paSigning.grantRead(fn);
      // Read, conditional put and update of single items: no scan, query or delete.
      if (spec.drawsImages) imageBudget.grant(fn, 'dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem');
      functions[stage] = fn;
    }
    this.functions = functions;
  }
}
