//! Typed errors: every non-OK status from jobd carries a google.rpc.ErrorInfo (domain "jobd")
//! whose `reason` picks the class here. Client code matches on classes (or `reason`), never on
//! message text. A status without ErrorInfo (one the gRPC stack made, a connection refused, say)
//! gets its code's name as the reason.
import { Metadata, status as Status, type ServiceError } from '@grpc/grpc-js';
import * as protobuf from 'protobufjs';

/** The base of every error a jobd call raises. */
export class JobdError extends Error {
  /** The gRPC status code (`@grpc/grpc-js`'s `status`). */
  readonly code: Status;
  /** jobd's stable reason, e.g. `LEASE_EXPIRED`; the code's name when the status had no ErrorInfo. */
  readonly reason: string;
  /** The ErrorInfo's metadata, e.g. `{ field: "jobs[0].queue" }`. */
  readonly metadata: Readonly<Record<string, string>>;

  constructor(code: Status, reason: string, message: string, metadata: Record<string, string> = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.reason = reason;
    this.metadata = metadata;
  }
}

export class InvalidRequestError extends JobdError {}
export class PayloadTooLargeError extends JobdError {}
export class MessageTooLargeError extends JobdError {}
export class BudgetExhaustedError extends JobdError {}
export class JobNotFoundError extends JobdError {}
export class IdempotencyConflictError extends JobdError {}
export class LeaseExpiredError extends JobdError {}
export class LeaseStaleError extends JobdError {}
export class LeaseTokenUnknownError extends JobdError {}
export class JobFinishedError extends JobdError {}
export class JobCancelledError extends JobdError {}
export class PastLastEventError extends JobdError {}
export class RedisUnavailableError extends JobdError {}
export class RedisOutOfMemoryError extends JobdError {}
export class ShuttingDownError extends JobdError {}
export class UnauthenticatedError extends JobdError {}
export class PermissionDeniedError extends JobdError {}
export class DeadlineExceededError extends JobdError {}
export class InternalError extends JobdError {}
/** UNAVAILABLE made by the gRPC stack: no connection, or one lost. */
export class UnavailableError extends JobdError {}
/** CANCELLED made by the gRPC stack: the call was cancelled on this side. */
export class CancelledError extends JobdError {}
export class UnimplementedError extends JobdError {}

type ErrorClass = new (code: Status, reason: string, message: string, metadata?: Record<string, string>, options?: { cause?: unknown }) => JobdError;

/** Each reason's class; a reason not listed gives a plain JobdError with the reason kept. */
export const ERROR_CLASSES: Readonly<Record<string, ErrorClass>> = {
  INVALID_REQUEST: InvalidRequestError,
  PAYLOAD_TOO_LARGE: PayloadTooLargeError,
  MESSAGE_TOO_LARGE: MessageTooLargeError,
  BUDGET_EXHAUSTED: BudgetExhaustedError,
  JOB_NOT_FOUND: JobNotFoundError,
  IDEMPOTENCY_CONFLICT: IdempotencyConflictError,
  LEASE_EXPIRED: LeaseExpiredError,
  LEASE_STALE: LeaseStaleError,
  LEASE_TOKEN_UNKNOWN: LeaseTokenUnknownError,
  JOB_FINISHED: JobFinishedError,
  JOB_CANCELLED: JobCancelledError,
  PAST_LAST_EVENT: PastLastEventError,
  REDIS_UNAVAILABLE: RedisUnavailableError,
  REDIS_OUT_OF_MEMORY: RedisOutOfMemoryError,
  SHUTTING_DOWN: ShuttingDownError,
  UNAUTHENTICATED: UnauthenticatedError,
  PERMISSION_DENIED: PermissionDeniedError,
  DEADLINE_EXCEEDED: DeadlineExceededError,
  INTERNAL: InternalError,
  UNAVAILABLE: UnavailableError,
  CANCELLED: CancelledError,
  UNIMPLEMENTED: UnimplementedError,
};

/** The ErrorInfo domain jobd uses; ErrorInfo of other domains (a proxy's) is ignored. */
export const ERROR_DOMAIN = 'jobd';

const STATUS_DETAILS_KEY = 'grpc-status-details-bin';
const ERROR_INFO_TYPE = 'type.googleapis.com/google.rpc.ErrorInfo';

// google.rpc.Status and google.rpc.ErrorInfo, as published in googleapis.
const rpcTypes = protobuf.Root.fromJSON(<protobuf.INamespace>{
  nested: {
    google: {
      nested: {
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'Any', id: 3 },
              },
            },
            Any: { fields: { type_url: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } },
            ErrorInfo: {
              fields: {
                reason: { type: 'string', id: 1 },
                domain: { type: 'string', id: 2 },
                metadata: <protobuf.IMapField>{ keyType: 'string', type: 'string', id: 3 },
              },
            },
          },
        },
      },
    },
  },
});
const StatusType = rpcTypes.lookupType('google.rpc.Status');
const ErrorInfoType = rpcTypes.lookupType('google.rpc.ErrorInfo');

/** jobd's ErrorInfo decoded from a `grpc-status-details-bin` value, if it holds one. */
export function decodeErrorInfo(details: Uint8Array): { reason: string; metadata: Record<string, string> } | undefined {
  let decoded: { details?: { type_url?: string; value?: Uint8Array }[] };
  try {
    decoded = StatusType.toObject(StatusType.decode(details), { defaults: true }) as typeof decoded;
  } catch {
    return undefined;
  }
  for (const any of decoded.details ?? []) {
    if (any.type_url !== ERROR_INFO_TYPE || !any.value) continue;
    try {
      const info = ErrorInfoType.toObject(ErrorInfoType.decode(any.value), { defaults: true }) as {
        reason: string;
        domain: string;
        metadata?: Record<string, string>;
      };
      if (info.domain === ERROR_DOMAIN && info.reason) return { reason: info.reason, metadata: { ...info.metadata } };
    } catch {
      // A malformed detail is skipped; the status code still says enough.
    }
  }
  return undefined;
}

/** The typed error for a status from a call. */
export function errorFromStatus(code: Status, details: string, metadata?: Metadata, cause?: unknown): JobdError {
  let reason = Status[code] ?? 'UNKNOWN';
  let info: Record<string, string> = {};
  const raw = metadata?.get(STATUS_DETAILS_KEY)[0];
  if (raw instanceof Uint8Array) {
    const decoded = decodeErrorInfo(raw);
    if (decoded) {
      reason = decoded.reason;
      info = decoded.metadata;
    }
  }
  const Class = ERROR_CLASSES[reason] ?? JobdError;
  return new Class(code, reason, details || reason, info, { cause });
}

/** A gRPC ServiceError (or anything else thrown by a call) as a JobdError. */
export function toJobdError(error: unknown): JobdError {
  if (error instanceof JobdError) return error;
  if (isServiceError(error)) return errorFromStatus(error.code, error.details, error.metadata, error);
  const message = error instanceof Error ? error.message : String(error);
  return new JobdError(Status.UNKNOWN, 'UNKNOWN', message, {}, { cause: error });
}

function isServiceError(error: unknown): error is ServiceError {
  return error instanceof Error && typeof (error as Partial<ServiceError>).code === 'number' && 'metadata' in error;
}

/** Thrown by a handler to fail its job for good (`retryable: false`), attempts left or not. */
export class NonRetryableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'NonRetryableError';
  }
}

/** A job waited for ended without a result: it FAILED, or was CANCELLED. */
export class JobOutcomeError extends Error {
  constructor(
    message: string,
    readonly jobId: string,
    readonly attempt: number,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** `submitAndWait`'s job FAILED; `error` is the last attempt's error as the worker gave it. */
export class JobFailedError extends JobOutcomeError {
  constructor(jobId: string, attempt: number, readonly error: string) {
    super(`job ${jobId} failed after ${attempt} attempt(s): ${error}`, jobId, attempt);
  }
}

/** `submitAndWait`'s job was CANCELLED; `reason` is the one given to `cancel`. */
export class JobWasCancelledError extends JobOutcomeError {
  constructor(jobId: string, attempt: number, readonly reason: string) {
    super(`job ${jobId} was cancelled${reason ? `: ${reason}` : ''}`, jobId, attempt);
  }
}
