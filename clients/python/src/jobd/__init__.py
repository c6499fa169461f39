"""jobd: an asyncio client and worker runtime for jobd.

client = jobd.Client("127.0.0.1:50051")
worker = jobd.Worker(client, queue="emails", concurrency=8)

@worker.handler("welcome")
async def welcome(job: jobd.JobContext) -> str:
    return f"sent to {job.json()['to']}"

await worker.run()
"""

from .client import Client, Job, JobEvent
from .context import JobContext
from .errors import (
    ERROR_TYPES,
    BudgetExhausted,
    Cancelled,
    DeadlineExceeded,
    IdempotencyConflict,
    Internal,
    InvalidRequest,
    JobCancelled,
    JobdError,
    JobFailed,
    JobFinished,
    JobNotFound,
    JobOutcomeError,
    JobWasCancelled,
    LeaseExpired,
    LeaseStale,
    LeaseTokenUnknown,
    MessageTooLarge,
    NonRetryableError,
    PastLastEvent,
    PayloadTooLarge,
    PermissionDenied,
    RedisOutOfMemory,
    RedisUnavailable,
    ShuttingDown,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from .retry import RetryPolicy
from .spec import Backoff, JobSpec
from .v1.job_pb2 import EventType, JobState
from .worker import Worker

__all__ = [
    "ERROR_TYPES",
    "Backoff",
    "BudgetExhausted",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "EventType",
    "IdempotencyConflict",
    "Internal",
    "InvalidRequest",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobEvent",
    "JobFailed",
    "JobFinished",
    "JobNotFound",
    "JobOutcomeError",
    "JobSpec",
    "JobState",
    "JobWasCancelled",
    "JobdError",
    "LeaseExpired",
    "LeaseStale",
    "LeaseTokenUnknown",
    "MessageTooLarge",
    "NonRetryableError",
    "PastLastEvent",
    "PayloadTooLarge",
    "PermissionDenied",
    "RedisOutOfMemory",
    "RedisUnavailable",
    "RetryPolicy",
    "ShuttingDown",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Worker",
]
