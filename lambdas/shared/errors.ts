/**
 * Named errors the state machine matches on (Step Functions reads `errorType`, which the
 * Lambda runtime takes from `error.name`). Infra imports these names, so a rename breaks
 * the build instead of silently dropping a Retry or Catch.
 */
export const ErrorNames = {
  InvalidPersona: 'InvalidPersona',
  ContentPolicyViolation: 'ContentPolicyViolation',
  RateLimited: 'RateLimited',
  ImageTimeout: 'ImageTimeout',
  UpstreamError: 'UpstreamError',
  GridLayoutMismatch: 'GridLayoutMismatch',
  IdentityMismatch: 'IdentityMismatch',
  ConfigurationError: 'ConfigurationError',
  RunAlreadyPublished: 'RunAlreadyPublished',
  BudgetExhausted: 'BudgetExhausted',
  NotDrawnInBatch: 'NotDrawnInBatch',
} as const;

export type ErrorName = (typeof ErrorNames)[keyof typeof ErrorNames];

export class AvatarError extends Error {
  constructor(name: ErrorName, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = name;
  }
}

export class InvalidPersona extends AvatarError {
  readonly field: string;
  /** What is wrong with the field, without it. */
  readonly reason: string;
  constructor(field: string, reason: string) {
    // The name says it is the persona: the message says which field and why, once.
    super(ErrorNames.InvalidPersona, `${field}: ${reason}`);
    this.field = field;
    this.reason = reason;
  }
}

export class ContentPolicyViolation extends AvatarError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorNames.ContentPolicyViolation, message, options);
  }
}

export class RateLimited extends AvatarError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorNames.RateLimited, message, options);
  }
}

export class ImageTimeout extends AvatarError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorNames.ImageTimeout, message, options);
  }
}

export class UpstreamError extends AvatarError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorNames.UpstreamError, message, options);
  }
}

/**
 * What becomes of a grid refused for its layout or its person (infra/error-policy.ts,
 * retryGridAttempt): true of every attempt, the last included.
 */
export const REDRAWN = 'a refused grid is drawn at most three times in all, then the run fails';

export class GridLayoutMismatch extends AvatarError {
  constructor(message: string) {
    super(ErrorNames.GridLayoutMismatch, message);
  }
}

export class IdentityMismatch extends AvatarError {
  constructor(message: string) {
    super(ErrorNames.IdentityMismatch, message);
  }
}

export class ConfigurationError extends AvatarError {
  constructor(message: string) {
    super(ErrorNames.ConfigurationError, message);
  }
}

/** A run's folder already holds other avatars: a published run is never rewritten. */
export class RunAlreadyPublished extends AvatarError {
  constructor(message: string) {
    super(ErrorNames.RunAlreadyPublished, message);
  }
}

/** An image call would pass a spending cap: refused before it is paid for, never retried. */
export class BudgetExhausted extends AvatarError {
  constructor(message: string) {
    super(ErrorNames.BudgetExhausted, message);
  }
}

/**
 * Batch mode: an image the persona's run needs was not drawn by OpenAI's Batch API (its batch
 * expired or failed, every try of its line failed): never drawn synchronously instead, never
 * retried; running the batch file again draws only what is missing.
 */
export class NotDrawnInBatch extends AvatarError {
  constructor(message: string) {
    super(ErrorNames.NotDrawnInBatch, message);
  }
}

/** On AWS, a Lambda error's Cause is its JSON `{errorType, errorMessage, trace}`; locally, the message. */
export function causeMessage(cause: string | undefined): string {
  if (!cause) return '';
  try {
    const parsed = JSON.parse(cause) as { errorMessage?: unknown };
    if (typeof parsed.errorMessage === 'string') return parsed.errorMessage;
  } catch {
    // A plain message already.
  }
  return cause;
}
