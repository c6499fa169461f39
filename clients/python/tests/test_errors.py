"""Error reasons map to types: decoding (unit) and what a real jobd returns."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from typing import TypeVar

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from harness import DUE_INDEX, Jobd, Stack, eventually, job_key
from jobd.v1 import errors_pb2
from jobd.v1 import job_service_pb2 as jpb
from jobd.v1 import worker_service_pb2 as wpb

import jobd
from jobd import errors
from jobd.client import _resumable, claim_request

E = TypeVar("E", bound=jobd.JobdError)


def status_bytes(reason: str, domain: str = "jobd", **metadata: str) -> bytes:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata))
    status = status_pb2.Status(code=9, message="m", details=[detail])
    return bytes(status.SerializeToString())


@pytest.mark.parametrize("reason", sorted(errors.ERROR_TYPES))
def test_every_reason_decodes_to_its_own_type(reason: str) -> None:
    error = errors.from_status(
        grpc.StatusCode.FAILED_PRECONDITION, "msg", status_bytes(reason, k="v")
    )
    assert type(error) is errors.ERROR_TYPES[reason]
    assert error.reason == reason
    assert error.metadata == {"k": "v"}
    assert error.message == "msg"
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.detailed


def test_the_types_are_distinct_and_cover_the_documented_reasons() -> None:
    documented = {
        "INVALID_REQUEST", "PAYLOAD_TOO_LARGE", "MESSAGE_TOO_LARGE", "BUDGET_EXHAUSTED",
        "JOB_NOT_FOUND", "IDEMPOTENCY_CONFLICT", "LEASE_EXPIRED", "LEASE_STALE",
        "LEASE_TOKEN_UNKNOWN", "JOB_FINISHED", "JOB_CANCELLED", "PAST_LAST_EVENT",
        "REDIS_UNAVAILABLE", "REDIS_OUT_OF_MEMORY", "SHUTTING_DOWN", "UNAUTHENTICATED",
        "PERMISSION_DENIED", "DEADLINE_EXCEEDED", "INTERNAL",
    }  # fmt: skip
    assert documented <= set(errors.ERROR_TYPES)
    assert len(set(errors.ERROR_TYPES.values())) == len(errors.ERROR_TYPES)


def test_every_reason_of_the_proto_has_its_type() -> None:
    reasons = {
        name
        for name in errors_pb2.ErrorReason.keys()  # noqa: SIM118
        if name != "ERROR_REASON_UNSPECIFIED"
    }
    assert reasons
    missing = reasons - set(errors.ERROR_TYPES)
    assert not missing


def test_an_unknown_reason_is_the_base_type_with_the_reason_kept() -> None:
    error = errors.from_status(grpc.StatusCode.ABORTED, "m", status_bytes("NEW_REASON", x="1"))
    assert type(error) is errors.JobdError
    assert error.reason == "NEW_REASON"
    assert error.metadata == {"x": "1"}


def test_without_error_info_the_code_names_the_reason() -> None:
    plain = errors.from_status(grpc.StatusCode.UNAVAILABLE, "connection refused", None)
    assert type(plain) is errors.Unavailable
    assert not plain.detailed
    other_domain = errors.from_status(
        grpc.StatusCode.NOT_FOUND, "m", status_bytes("JOB_NOT_FOUND", domain="elsewhere")
    )
    assert type(other_domain) is errors.JobdError
    assert other_domain.reason == "NOT_FOUND"
    garbage = errors.from_status(grpc.StatusCode.INTERNAL, "m", b"\xff\xfe not a status")
    assert type(garbage) is errors.Internal


def test_unavailable_reasons_are_retried_as_unavailable() -> None:
    for reason in ["REDIS_UNAVAILABLE", "REDIS_OUT_OF_MEMORY", "SHUTTING_DOWN"]:
        error = errors.from_status(grpc.StatusCode.UNAVAILABLE, "m", status_bytes(reason))
        assert isinstance(error, errors.Unavailable)


def test_a_stream_broken_by_the_transport_is_resumed_one_jobd_refused_is_not() -> None:
    resumable = [
        errors.from_status(grpc.StatusCode.UNAVAILABLE, "connection refused"),
        errors.from_status(grpc.StatusCode.UNAVAILABLE, "m", status_bytes("SHUTTING_DOWN")),
        errors.from_status(grpc.StatusCode.CANCELLED, "RST_STREAM"),
        errors.from_status(grpc.StatusCode.INTERNAL, "RST_STREAM with code 2"),
        errors.from_status(grpc.StatusCode.UNKNOWN, "Stream removed"),
    ]
    for error in resumable:
        assert _resumable(error), error
    refused = [
        errors.from_status(grpc.StatusCode.INTERNAL, "internal error", status_bytes("INTERNAL")),
        errors.from_status(grpc.StatusCode.NOT_FOUND, "m", status_bytes("JOB_NOT_FOUND")),
        errors.from_status(grpc.StatusCode.DEADLINE_EXCEEDED, "m"),
    ]
    for error in refused:
        assert not _resumable(error), error


# -- against a real jobd ---------------------------------------------------------------------
# Every reason of errors.proto, provoked from a real jobd and Redis, raises its type with the
# metadata the proto documents. UNAUTHENTICATED and PERMISSION_DENIED: test_security.py;
# REDIS_UNAVAILABLE: test_resilience.py.


async def refused(cls: type[E], call: Awaitable[object]) -> E:
    """The error of type `cls` that `call` raises, with jobd's ErrorInfo (not one made here)."""
    with pytest.raises(cls) as caught:
        await call
    assert caught.value.detailed, caught.value
    return caught.value


async def test_an_unknown_method_is_unimplemented(client: jobd.Client) -> None:
    missing = client._channel.unary_unary("/jobd.v1.JobService/NoSuchMethod")
    with pytest.raises(grpc.aio.AioRpcError) as raw:
        await missing(b"")
    error = errors.from_rpc_error(raw.value)
    assert isinstance(error, jobd.Unimplemented)


async def test_a_refusal_is_a_jobd_error_with_its_code(client: jobd.Client) -> None:
    with pytest.raises(jobd.JobdError) as caught:
        await client.submit("bad queue name!", "k")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_each_reason_jobd_gives_maps_to_its_type(client: jobd.Client, queue: str) -> None:
    e: jobd.JobdError = await refused(jobd.InvalidRequest, client.submit("bad queue name!", "k"))
    assert e.metadata.get("field")
    e = await refused(jobd.PayloadTooLarge, client.submit(queue, "k", b"x" * (1024 * 1024 + 1)))
    assert e.metadata.get("limit") == str(1024 * 1024)

    job = await client.submit(queue, "k", b"a", idempotency_key="same")
    e = await refused(
        jobd.IdempotencyConflict, client.submit(queue, "k", b"b", idempotency_key="same")
    )
    assert e.metadata.get("key") == "same"

    unknown = job.id[: -len(job.id.split(".")[-1])] + "01" + "0" * 24
    await refused(jobd.JobNotFound, client.get(unknown))
    e = await refused(jobd.PastLastEvent, _drain(client.watch(job.id, after_sequence=99)))
    assert e.metadata.get("last_sequence") == "1"

    claimed = await client.call(
        "ClaimJobs", claim_request([queue], "w", 1, wait=1, lease=60, ack_timeout=60)
    )
    token = claimed.jobs[0].lease_token
    bogus = wpb.HeartbeatRequest(job_id=job.id, lease_token="not-a-token-" + uuid.uuid4().hex)
    await refused(jobd.LeaseTokenUnknown, client.call("Heartbeat", bogus))
    await client.cancel(job.id)
    late = wpb.CompleteJobRequest(job_id=job.id, lease_token=token)
    await refused(jobd.JobCancelled, client.call("CompleteJob", late))

    other = queue + "-ack"
    expiring = await client.submit(other, "k", b"e")
    claimed = await client.call(
        "ClaimJobs", claim_request([other], "w", 1, wait=1, lease=60, ack_timeout=1)
    )
    assert claimed.jobs[0].job.id == expiring.id
    await eventually(
        lambda: client.get(expiring.id),
        lambda j: j.state == jobd.JobState.JOB_STATE_QUEUED,
        10,
        "the unacknowledged job to go back to its queue",
    )
    unacked = wpb.HeartbeatRequest(job_id=expiring.id, lease_token=claimed.jobs[0].lease_token)
    e = await refused(jobd.LeaseStale, client.call("Heartbeat", unacked))
    assert e.metadata == {"state": "QUEUED"}

    done = await client.submit(queue, "k", b"c")
    claimed = await client.call(
        "ClaimJobs", claim_request([queue], "w", 1, wait=1, lease=60, ack_timeout=60)
    )
    await client.call(
        "CompleteJob",
        wpb.CompleteJobRequest(job_id=done.id, lease_token=claimed.jobs[0].lease_token),
    )
    e = await refused(jobd.JobFinished, client.cancel(done.id))
    assert e.metadata.get("state")


async def test_a_claim_past_its_deadline_is_lease_expired(
    stack: Stack, client: jobd.Client, queue: str
) -> None:
    await client.submit_many(jobd.JobSpec(queue, "k") for _ in range(2))
    claimed = await client.call(
        "ClaimJobs", claim_request([queue], "w", 2, wait=1, lease=2, ack_timeout=2)
    )
    unacked, acked = claimed.jobs
    lease = wpb.HeartbeatRequest(job_id=acked.job.id, lease_token=acked.lease_token)
    await client.call("Heartbeat", lease)  # acknowledged: its lease runs out instead
    # jobd's sweeper ends a claim within moments of its deadline (LEASE_STALE from then on);
    # LEASE_EXPIRED answers in between. The queue's entry in the due index, moved to +inf once
    # the claim has written its deadline there, keeps the sweeper away until the test is done.
    await eventually(
        lambda: asyncio.sleep(0, stack.redis.command("ZSCORE", DUE_INDEX, queue)),
        lambda score: score not in ("", "inf"),
        5,
        "the claim's deadline in the due index",
    )
    stack.redis.command("ZADD", DUE_INDEX, "XX", "+inf", queue)
    jobs = [await client.get(unacked.job.id), await client.get(acked.job.id)]
    ends = max(jobs[0].ack_deadline.ToMilliseconds(), jobs[1].lease_expires_at.ToMilliseconds())
    await eventually(
        lambda: asyncio.sleep(0, time.time() * 1000), lambda now: now > ends, 10, "the deadlines"
    )

    silent = wpb.HeartbeatRequest(job_id=unacked.job.id, lease_token=unacked.lease_token)
    e = await refused(jobd.LeaseExpired, client.call("Heartbeat", silent))
    assert e.code == grpc.StatusCode.FAILED_PRECONDITION
    assert e.metadata == {"deadline": "ack"}
    late = wpb.CompleteJobRequest(job_id=acked.job.id, lease_token=acked.lease_token)
    e = await refused(jobd.LeaseExpired, client.call("CompleteJob", late))
    assert e.metadata == {"deadline": "lease"}

    stack.redis.command("ZADD", DUE_INDEX, "XX", "0", queue)  # the sweeper's turn
    await eventually(
        lambda: asyncio.gather(client.get(unacked.job.id), client.get(acked.job.id)),
        lambda now: all(j.state != jobd.JobState.JOB_STATE_RUNNING for j in now),
        10,
        "the sweeper to end both claims",
    )


async def test_a_full_redis_is_redis_out_of_memory(own_stack: Stack, queue: str) -> None:
    redis = own_stack.redis
    async with jobd.Client(own_stack.target, retry=jobd.RetryPolicy(max_attempts=1)) as client:
        redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        redis.command("CONFIG", "SET", "maxmemory", "1")
        e = await refused(jobd.RedisOutOfMemory, client.submit(queue, "k"))
        assert isinstance(e, jobd.Unavailable), "retried like any UNAVAILABLE"
        assert e.code == grpc.StatusCode.UNAVAILABLE
        assert e.metadata == {}
        redis.command("CONFIG", "SET", "maxmemory", "0")
        stats = await client.call("GetQueueStats", jpb.GetQueueStatsRequest(queue=queue))
        assert stats.queued == 0, "the refused submission wrote nothing"
        await client.submit(queue, "k")


async def test_a_spent_budget_is_budget_exhausted(stack: Stack, queue: str) -> None:
    narrow = Jobd(stack.redis, "--max-watch-streams", "1")
    try:
        async with jobd.Client(narrow.target) as client:
            job = await client.submit(queue, "k")
            first = client.watch(job.id)
            assert (await anext(first)).sequence == 1  # the one stream, open and following
            e = await refused(jobd.BudgetExhausted, anext(client.watch(job.id)))
            assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert e.metadata == {"budget": "max-watch-streams", "limit": "1"}
            await first.aclose()
    finally:
        narrow.close()


async def test_a_request_over_its_methods_limit_is_message_too_large(
    client: jobd.Client,
) -> None:
    e = await refused(jobd.MessageTooLarge, client.get("q." + "x" * 70_000))
    assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert e.metadata == {"method": "jobd.v1.JobService/GetJob", "limit": str(64 * 1024)}


async def test_a_deadline_that_passes_in_jobd_is_deadline_exceeded(
    client: jobd.Client, queue: str
) -> None:
    # grpcio ends a call at its own deadline locally, at the instant jobd would, and without
    # ErrorInfo. This call has no deadline of grpcio's and sends grpc-timeout itself, so the
    # status that arrives is jobd's.
    claim = claim_request([queue], "w", 1, wait=10, lease=None, ack_timeout=None)
    started = time.monotonic()
    call = client.workers.ClaimJobs(claim, metadata=[("grpc-timeout", "300m")])
    with pytest.raises(grpc.aio.AioRpcError) as raw:
        await asyncio.wait_for(call, 5)
    e = errors.from_rpc_error(raw.value)
    assert type(e) is jobd.DeadlineExceeded
    assert e.detailed
    assert e.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert e.metadata == {}
    assert time.monotonic() - started >= 0.3


async def test_a_corrupt_job_is_internal(stack: Stack, client: jobd.Client, queue: str) -> None:
    job = await client.submit(queue, "k")
    stack.redis.command("HSET", job_key(job.id), "state", "no-such-state")
    e = await refused(jobd.Internal, client.get(job.id))
    assert e.code == grpc.StatusCode.INTERNAL
    assert e.metadata == {}
    assert e.message == "internal error", "the cause goes to jobd's log only"


async def test_a_stream_ended_by_a_shutdown_is_shutting_down(own_stack: Stack, queue: str) -> None:
    async with jobd.Client(own_stack.target, watch_resume=0) as client:
        job = await client.submit(queue, "k")
        events = client.watch(job.id)
        assert (await anext(events)).sequence == 1
        stopping = asyncio.create_task(asyncio.to_thread(own_stack.jobd.stop))
        e = await refused(jobd.ShuttingDown, anext(events))
        await stopping
    assert isinstance(e, jobd.Unavailable), "resumed like any UNAVAILABLE"
    assert e.code == grpc.StatusCode.UNAVAILABLE
    assert e.metadata == {}


async def _drain(events: object) -> None:
    async for _ in events:  # type: ignore[attr-defined]
        pass
