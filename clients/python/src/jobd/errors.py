"""Typed errors: one exception class per jobd error reason, decoded from `google.rpc.ErrorInfo`.

jobd attaches a `google.rpc.Status` holding one `ErrorInfo` (domain "jobd") to every non-OK
status, in the `grpc-status-details-bin` trailer. The reason picks the class; client code never
parses message text. A status without ErrorInfo (one the gRPC framework made, or an older jobd)
is typed by its code's name, the reason jobd itself gives such statuses.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "jobd"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class JobdError(Exception):
    """A call to jobd failed. Subclasses name the reason; unknown reasons stay this type."""

    reason_name: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "UNKNOWN",
        metadata: Mapping[str, str] | None = None,
        detailed: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        #: True when jobd gave the reason (an ErrorInfo); False when it is the code's name.
        self.detailed = detailed

    def __str__(self) -> str:
        return f"{self.reason} ({self.code.name}): {self.message}"


class InvalidRequest(JobdError):
    """A missing or bad field; `metadata["field"]` names it."""

    reason_name = "INVALID_REQUEST"


class PayloadTooLarge(JobdError):
    """A payload or result over the limit; `metadata["field"]`, `metadata["limit"]`."""

    reason_name = "PAYLOAD_TOO_LARGE"


class MessageTooLarge(JobdError):
    """A request message over its method's size limit, not read; `metadata["method"]`,
    `metadata["limit"]` (bytes)."""

    reason_name = "MESSAGE_TOO_LARGE"


class BudgetExhausted(JobdError):
    """A budget of jobd or of the caller's principal is spent (open streams, waiting claims,
    bytes in flight, …); retry later. `metadata["budget"]` (the setting), `metadata["limit"]`."""

    reason_name = "BUDGET_EXHAUSTED"


class JobNotFound(JobdError):
    """An unknown job, or one whose retention passed."""

    reason_name = "JOB_NOT_FOUND"


class IdempotencyConflict(JobdError):
    """The idempotency key belongs to a job a different request made; `metadata["key"]`."""

    reason_name = "IDEMPOTENCY_CONFLICT"


class LeaseExpired(JobdError):
    """The claim's deadline passed; `metadata["deadline"]` is "lease" or "ack"."""

    reason_name = "LEASE_EXPIRED"


class LeaseStale(JobdError):
    """The token is not the job's current one; `metadata["state"]` is the job's state now."""

    reason_name = "LEASE_STALE"


class LeaseTokenUnknown(JobdError):
    """A lease token jobd never issued."""

    reason_name = "LEASE_TOKEN_UNKNOWN"


class JobFinished(JobdError):
    """The job already finished; `metadata["state"]`."""

    reason_name = "JOB_FINISHED"


class JobCancelled(JobdError):
    """The call concerns a job that was cancelled (a worker's lease on it is void)."""

    reason_name = "JOB_CANCELLED"


class PastLastEvent(JobdError):
    """WatchJob's after_sequence is past the job's last event; `metadata["last_sequence"]`."""

    reason_name = "PAST_LAST_EVENT"


class Unavailable(JobdError):
    """jobd is unreachable (the framework's UNAVAILABLE); safe calls are retried."""

    reason_name = "UNAVAILABLE"


class RedisUnavailable(Unavailable):
    """Redis did not answer in time; nothing is known to have been written."""

    reason_name = "REDIS_UNAVAILABLE"


class RedisOutOfMemory(Unavailable):
    """Redis is full; the call wrote nothing."""

    reason_name = "REDIS_OUT_OF_MEMORY"


class ShuttingDown(Unavailable):
    """The jobd replica is shutting down; another one (or the same, restarted) will answer."""

    reason_name = "SHUTTING_DOWN"


class Unauthenticated(JobdError):
    """No credentials, or credentials jobd does not recognise."""

    reason_name = "UNAUTHENTICATED"


class PermissionDenied(JobdError):
    """The caller lacks the role or queue; `metadata["method"]`, `metadata["queue"]`."""

    reason_name = "PERMISSION_DENIED"


class DeadlineExceeded(JobdError):
    """The call's deadline passed before it ended."""

    reason_name = "DEADLINE_EXCEEDED"


class Internal(JobdError):
    """An internal error in jobd; the cause is in its log."""

    reason_name = "INTERNAL"


class Cancelled(JobdError):
    """The call was cancelled (by this process, or by the transport)."""

    reason_name = "CANCELLED"


class Unimplemented(JobdError):
    """The method is unknown to this jobd."""

    reason_name = "UNIMPLEMENTED"


def _all_subclasses(cls: type[JobdError]) -> list[type[JobdError]]:
    found: list[type[JobdError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


#: The exception class for each reason jobd gives.
ERROR_TYPES: dict[str, type[JobdError]] = {
    cls.reason_name: cls for cls in _all_subclasses(JobdError) if cls.reason_name
}


def error_info(details: bytes | None) -> error_details_pb2.ErrorInfo | None:
    """The jobd ErrorInfo in a serialized `google.rpc.Status`, if it holds one."""
    if not details:
        return None
    status = status_pb2.Status()
    try:
        status.ParseFromString(details)
    except Exception:  # a malformed trailer: type the error by its code
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == DOMAIN:
                return info
    return None


def from_status(code: grpc.StatusCode, message: str, details: bytes | None = None) -> JobdError:
    """The typed error for a status with its `grpc-status-details-bin` bytes."""
    info = error_info(details)
    if info is None:
        reason, metadata = code.name, {}
    else:
        reason, metadata = info.reason, dict(info.metadata)
    cls = ERROR_TYPES.get(reason, JobdError)
    return cls(message, code=code, reason=reason, metadata=metadata, detailed=info is not None)


def from_rpc_error(error: grpc.RpcError) -> JobdError:
    """The typed error for a failed call (grpc.aio.AioRpcError or grpc.Call)."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    details: bytes | None = None
    trailers = error.trailing_metadata() or ()
    for key, value in trailers:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            details = value
    typed = from_status(code, message, details)
    typed.__cause__ = error
    return typed


class JobOutcomeError(Exception):
    """The job ended without a result (raised by `submit_and_wait`)."""

    def __init__(self, job_id: str, message: str, attempt: int) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.attempt = attempt


class JobFailed(JobOutcomeError):
    """The job FAILED; `error` is the error its last attempt reported."""

    def __init__(self, job_id: str, error: str, attempt: int) -> None:
        super().__init__(job_id, f"job {job_id} failed: {error}", attempt)
        self.error = error


class JobWasCancelled(JobOutcomeError):
    """The job was CANCELLED; `reason` is the reason given to CancelJob."""

    def __init__(self, job_id: str, reason: str, attempt: int) -> None:
        super().__init__(job_id, f"job {job_id} was cancelled: {reason}", attempt)
        self.reason = reason


class NonRetryableError(Exception):
    """Raised by a handler: the job fails for good (FailJob with retryable=false)."""
