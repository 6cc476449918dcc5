import { Duration } from 'aws-cdk-lib';
import { JitterType, type RetryProps } from 'aws-cdk-lib/aws-stepfunctions';
import { ErrorNames } from '../lambdas/shared/errors.ts';

/**
 * How the workflow answers each named error. Read top to bottom:
 *
 *  - Lambda service hiccups (throttles included): retried quickly, as AWS recommends.
 *  - RateLimited: retried with exponential backoff and full jitter, long enough (about six
 *    minutes in all) to ride out a per-minute limit.
 *  - (Not an error) an image call's turn minutes away: the stage answers when it comes, and a
 *    Wait state waits for it (workflow.ts, turnLoop), however long, first come first served.
 *  - ImageTimeout, UpstreamError: retried a few times.
 *  - BudgetExhausted: never retried: the call would pass a spending cap, and nothing was paid.
 *  - ContentPolicyViolation: never retried as-is; caught, rewritten once into a safer prompt
 *    (see workflow.ts), then the persona fails.
 *  - GridLayoutMismatch, IdentityMismatch: the grid is generated again, at most twice more.
 *  - InvalidPersona, ConfigurationError: never retried; the run fails at once.
 *
 * Every failure that gets through is caught, recorded under avatars/{id}/failures/ and
 * ends the run in a Fail state named after it.
 */
export const LAMBDA_SERVICE_ERRORS = [
  'Lambda.ServiceException',
  'Lambda.AWSLambdaException',
  'Lambda.SdkClientException',
  'Lambda.TooManyRequestsException',
  'Lambda.ClientExecutionTimeoutException',
];

export const retryLambdaService: RetryProps = {
  errors: LAMBDA_SERVICE_ERRORS,
  interval: Duration.seconds(2),
  maxAttempts: 6,
  backoffRate: 2,
  jitterStrategy: JitterType.FULL,
};

export const retryRateLimited: RetryProps = {
  errors: [ErrorNames.RateLimited],
  interval: Duration.seconds(10),
  maxAttempts: 6,
  backoffRate: 2,
  maxDelay: Duration.seconds(120),
  jitterStrategy: JitterType.FULL,
};

export const retryTransient: RetryProps = {
  errors: [ErrorNames.ImageTimeout, ErrorNames.UpstreamError],
  interval: Duration.seconds(5),
  maxAttempts: 3,
  backoffRate: 2,
  jitterStrategy: JitterType.FULL,
};

export const retryGridAttempt: RetryProps = {
  errors: [ErrorNames.GridLayoutMismatch, ErrorNames.IdentityMismatch],
  interval: Duration.seconds(1),
  maxAttempts: 2,
  backoffRate: 1,
};

/** Stages that only touch S3 and the runtime: Lambda service errors only. */
export const plainStageRetries = [retryLambdaService];

/** Stages that call the image or text API. */
export const apiStageRetries = [retryLambdaService, retryRateLimited, retryTransient];

/**
 * A batch starting a persona's execution: Step Functions' own limits pass. The integration names
 * the service's exception without "Exception" (StartExecution: ExecutionLimitExceeded).
 */
export const retryStartExecution: RetryProps = {
  errors: ['StepFunctions.ExecutionLimitExceeded', 'StepFunctions.AWSStepFunctionsException', 'StepFunctions.SdkClientException'],
  interval: Duration.seconds(5),
  maxAttempts: 6,
  backoffRate: 2,
  jitterStrategy: JitterType.FULL,
};
