//! Retries with exponential backoff and full jitter, for the calls that are safe to repeat
//! (docs/api.md: every call but a submission without an idempotency key, which the client gives
//! one before retrying it).
import { status as Status } from '@grpc/grpc-js';
import { setTimeout as sleep } from 'node:timers/promises';

import { JobdError, toJobdError } from './errors';
import { durationMs, serviceConfig } from './proto';

/**
 * How calls that fail with UNAVAILABLE are retried. The defaults are the retry policy of the
 * published service config (docs/service-config.json).
 */
export interface RetryPolicy {
  /** Attempts in all, the first included; 1 turns retries off. Default 5. */
  maxAttempts: number;
  /** Delay before the first retry, in ms. Default 100. */
  initialBackoffMs: number;
  /** Longest delay, in ms. Default 2000. */
  maxBackoffMs: number;
  /** Growth per retry. Default 2. */
  multiplier: number;
  /** Called before each retry (for logs or metrics), with the error that caused it. */
  onRetry?: (error: JobdError, retry: number) => void;
}

/** The service config's retry policy (the first one it has), as a RetryPolicy. */
export function defaultRetry(): RetryPolicy {
  const policy = serviceConfig().methodConfig.find((config) => config.retryPolicy)?.retryPolicy;
  if (!policy) return { maxAttempts: 5, initialBackoffMs: 100, maxBackoffMs: 2000, multiplier: 2 };
  return {
    maxAttempts: policy.maxAttempts,
    initialBackoffMs: durationMs(policy.initialBackoff),
    maxBackoffMs: durationMs(policy.maxBackoff),
    multiplier: policy.backoffMultiplier,
  };
}

/** Whether a failed call may be repeated: jobd, Redis or the connection was unavailable. */
export function isRetryable(error: JobdError): boolean {
  return error.code === Status.UNAVAILABLE;
}

/** The delay before retry number `retry` (0-based): full jitter over the exponential bound. */
export function backoffDelay(policy: RetryPolicy, retry: number): number {
  const bound = Math.min(policy.maxBackoffMs, policy.initialBackoffMs * policy.multiplier ** retry);
  return Math.random() * bound;
}

/** Runs `call` until it succeeds, fails with a status not worth retrying, or runs out of attempts. */
export async function withRetry<T>(policy: RetryPolicy, call: () => Promise<T>, signal?: AbortSignal): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (thrown) {
      const error = toJobdError(thrown);
      if (!isRetryable(error) || attempt >= policy.maxAttempts || signal?.aborted) throw error;
      policy.onRetry?.(error, attempt);
      await sleep(backoffDelay(policy, attempt - 1), undefined, signal ? { signal } : undefined).catch(() => {
        throw error;
      });
    }
  }
}
