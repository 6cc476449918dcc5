import { App, Aspects } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { PersonaAvatarsStack } from './persona-avatars-stack.ts';
import type { LambdaArchitecture } from './stage-functions.ts';
import { MAX_IMAGES } from '../lambdas/shared/persona.ts';

export const STACK_NAME = 'PersonaAvatars';

export interface BuildOptions {
  /** Extra context, as `cdk synth -c key=value` gives it. */
  context?: Record<string, unknown>;
  /** Bundle the Lambda code with esbuild (false: only the template and definition are wanted). */
  bundle?: boolean;
  outdir?: string;
}

/**
 * The CDK app: one stack, configured by context (cdk.json or `-c`). Used by `cdk synth`, by the
 * tests, and by the local runner, which executes the definition this produces.
 */
export function buildApp(options: BuildOptions = {}) {
  const app = new App({
    context: { ...options.context, ...(options.bundle === false ? { 'aws:cdk:bundling-stacks': [] } : {}) },
    ...(options.outdir ? { outdir: options.outdir } : {}),
  });
  const ctx = (key: string, fallback: string) => {
    const value = app.node.tryGetContext(key);
    return value === undefined || value === '' ? fallback : String(value);
  };
  const architecture = ctx('architecture', 'x86_64') as LambdaArchitecture;
  if (architecture !== 'x86_64' && architecture !== 'arm64') throw new Error(`context architecture must be x86_64 or arm64, got ${architecture}`);
  const defaultImages = Number(ctx('images', '4'));
  if (!Number.isInteger(defaultImages) || defaultImages < 1 || defaultImages > MAX_IMAGES) {
    throw new Error(`context images must be a whole number from 1 to ${MAX_IMAGES}, got ${ctx('images', '4')}`);
  }
  const stack = new PersonaAvatarsStack(app, STACK_NAME, {
    description: 'persona-avatars: persona in, consistent avatar photos out',
    existingBucketName: app.node.tryGetContext('bucketName') || undefined,
    runExpiryDays: Number(ctx('runExpiryDays', '7')),
    openAiSecretName: ctx('openAiSecretName', 'persona-avatars/openai-api-key'),
    architecture,
    gridConcurrency: Number(ctx('gridConcurrency', '4')),
    settings: {
      imageModel: ctx('imageModel', 'gpt-image-1.5'),
      imageFallbackModel: ctx('imageFallbackModel', 'gpt-image-2'),
      imageSize: ctx('imageSize', '1024x1024'),
      imageQuality: ctx('imageQuality', 'medium'),
      defaultImages,
      textModel: ctx('textModel', 'gpt-4.1-mini'),
      tileFormat: ctx('tileFormat', 'png'),
      publicBaseUrl: app.node.tryGetContext('publicBaseUrl') || undefined,
    },
    env: { account: process.env.CDK_DEFAULT_ACCOUNT, region: process.env.CDK_DEFAULT_REGION },
  });
  Aspects.of(app).add(new AwsSolutionsChecks({ verbose: true }));
  return { app, stack };
}
