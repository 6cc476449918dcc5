/**
 * The Lambda side of every stage: its handler, built once per container around the stage's core.
 * Kept apart from stage.ts, which the local runner loads too, so only functions load the tracer.
 */
import { Logger } from '@aws-lambda-powertools/logger';
import { Tracer } from '@aws-lambda-powertools/tracer';
import type { Context } from 'aws-lambda';
import { awsClientWrappers } from './aws-clients.ts';
import { callTimeout, correlationOf, depsFromEnv, loggedStage, type ClientFactory, type Deps, type StageCore } from './stage.ts';

/**
 * Wraps a stage core as a Lambda handler: builds its clients once per container, tags logs with
 * stage and persona, and lets named errors through unchanged for the state machine to match.
 */
export function lambdaHandler<E, R, K extends keyof Deps>(stage: string, core: StageCore<E, R, K>, clients: ClientFactory[] = []) {
  const logger = new Logger({ serviceName: 'persona-avatars', persistentKeys: { stage } });
  // The functions trace actively: each invocation is a subsegment named for its stage, its AWS
  // and OpenAI calls (fetch) subsegments of it, annotated with the run (off outside Lambda).
  const tracer = new Tracer({ serviceName: 'persona-avatars' });
  awsClientWrappers.push((client) => tracer.captureAWSv3Client(client));
  let base: Promise<Deps> | undefined;
  return async (event: E, context: Context): Promise<R> => {
    // A failed set-up (a throttled secret fetch, say) is not kept: the next call tries again.
    base ??= depsFromEnv(process.env, logger, clients).catch((error: unknown) => {
      base = undefined;
      throw error;
    });
    const deps = await base;
    logger.addContext(context);
    const remaining = context.getRemainingTimeInMillis();
    const call: Deps = {
      ...deps,
      // An image call may first wait IMAGE_TURN_WAIT_MS for its turn.
      imageTimeoutMs: callTimeout(deps.settings.imageTimeoutMs, remaining - deps.settings.imageTurnWaitMs),
      textTimeoutMs: callTimeout(deps.settings.textTimeoutMs, remaining),
      // A minute to save and settle before the Lambda's end.
      deadline: Date.now() + remaining - 60_000,
    };
    const keys = correlationOf(event);
    logger.appendKeys(keys);
    const segment = tracer.getSegment();
    const subsegment = segment?.addNewSubsegment(`## ${stage}`);
    if (subsegment) tracer.setSegment(subsegment);
    tracer.annotateColdStart();
    for (const [key, value] of Object.entries(keys)) tracer.putAnnotation(key, value);
    try {
      return await loggedStage(stage, core, event, call);
    } catch (error) {
      subsegment?.addError(error as Error);
      throw error;
    } finally {
      subsegment?.close();
      if (segment) tracer.setSegment(segment);
      logger.removeKeys(Object.keys(keys));
    }
  };
}
