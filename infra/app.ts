import { App, Aspects, Annotations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { PersonaAvatarsStack } from './persona-avatars-stack.ts';
import { projectContext, STACK_NAME } from './context.ts';
import { systemClock, type Clock } from '../lambdas/shared/clock.ts';
import { checkImageSettings } from '../lambdas/shared/models.ts';
import { settingsFromContext, stackSettingsFromContext } from '../lambdas/shared/settings.ts';

export { STACK_NAME };

export interface BuildOptions {
  /** Context over cdk.json's, as `cdk synth -c key=value` gives it. */
  context?: Record<string, unknown>;
  /** Bundle the Lambda code with esbuild (false: only the template and definition are wanted). */
  bundle?: boolean;
  outdir?: string;
  /**
   * Check the template against CloudFormation's resource schemas while synthesizing (default
   * true). The local runner, which only reads the state machine definitions, skips it: the check
   * takes about 2 s of every local command's start and changes nothing in the template.
   */
  validate?: boolean;
  /** Today's date, for the warnings about models past or near their shutdown (default: the system's). */
  clock?: Clock;
}

/**
 * The CDK app: one stack, configured by context. cdk.json's context comes first (the CLI passes
 * it too, and `-c` values over it), then `options.context`; every setting is read and checked
 * through the one settings schema, so a bad model, size or quality fails here, before deploying.
 */
export function buildApp(options: BuildOptions = {}) {
  const app = new App({
    context: projectContext(),
    postCliContext: { ...options.context, ...(options.bundle === false ? { 'aws:cdk:bundling-stacks': [] } : {}) },
    ...(options.outdir ? { outdir: options.outdir } : {}),
    ...(options.validate === false ? { builtinCloudFormationValidation: false } : {}),
  });
  const context = app.node.getAllContext() as Record<string, unknown>;
  const clock = options.clock ?? systemClock;
  const settings = settingsFromContext(context, clock);
  const stack = new PersonaAvatarsStack(app, STACK_NAME, {
    description: 'persona-avatars: persona in, consistent avatar photos out',
    ...stackSettingsFromContext(context),
    settings,
    env: { account: process.env.CDK_DEFAULT_ACCOUNT, region: process.env.CDK_DEFAULT_REGION },
  });
  for (const warning of checkImageSettings(settings, clock).warnings) Annotations.of(stack).addWarningV2('persona-avatars:models', warning);
  Aspects.of(app).add(new AwsSolutionsChecks({ verbose: true }));
  return { app, stack };
}
