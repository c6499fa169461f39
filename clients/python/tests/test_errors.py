"""Error reasons map to types: decoding (unit) and what a real jobd returns."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from harness import eventually
from jobd.v1 import errors_pb2
from jobd.v1 import worker_service_pb2 as wpb

import jobd
from jobd import errors
from jobd.client import claim_request


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


# -- against a real jobd ---------------------------------------------------------------------


async def test_an_unknown_method_is_unimplemented(client: jobd.Client) -> None:
    missing = client._channel.unary_unary("/jobd.v1.JobService/NoSuchMethod")
    with pytest.raises(grpc.aio.AioRpcError) as raw:
        await missing(b"")
    error = errors.from_rpc_error(raw.value)
    assert isinstance(error, jobd.Unimplemented)


async def test_a_refusal_is_a_jobd_error_with_its_code(client: jobd.Client) -> None:
    with pytest.raises(jobd.JobdError) as refused:
        await client.submit("bad queue name!", "k")
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_each_reason_jobd_gives_maps_to_its_type(client: jobd.Client, queue: str) -> None:
    async def raises(cls: type[jobd.JobdError], call: object) -> jobd.JobdError:
        with pytest.raises(cls) as caught:
            await call  # type: ignore[misc]
        return caught.value

    e = await raises(jobd.InvalidRequest, client.submit("bad queue name!", "k"))
    assert e.metadata.get("field")
    e = await raises(jobd.PayloadTooLarge, client.submit(queue, "k", b"x" * (1024 * 1024 + 1)))
    assert e.metadata.get("limit") == str(1024 * 1024)

    job = await client.submit(queue, "k", b"a", idempotency_key="same")
    e = await raises(
        jobd.IdempotencyConflict, client.submit(queue, "k", b"b", idempotency_key="same")
    )
    assert e.metadata.get("key") == "same"

    unknown = job.id[: -len(job.id.split(".")[-1])] + "01" + "0" * 24
    await raises(jobd.JobNotFound, client.get(unknown))
    e = await raises(jobd.PastLastEvent, _drain(client.watch(job.id, after_sequence=99)))
    assert e.metadata.get("last_sequence") == "1"

    claimed = await client.call(
        "ClaimJobs", claim_request([queue], "w", 1, wait=1, lease=60, ack_timeout=60)
    )
    token = claimed.jobs[0].lease_token
    bogus = wpb.HeartbeatRequest(job_id=job.id, lease_token="not-a-token-" + uuid.uuid4().hex)
    await raises(jobd.LeaseTokenUnknown, client.call("Heartbeat", bogus))
    await client.cancel(job.id)
    late = wpb.CompleteJobRequest(job_id=job.id, lease_token=token)
    await raises(jobd.JobCancelled, client.call("CompleteJob", late))

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
    e = await raises(jobd.LeaseStale, client.call("Heartbeat", unacked))
    assert e.metadata == {"state": "QUEUED"}

    done = await client.submit(queue, "k", b"c")
    claimed = await client.call(
        "ClaimJobs", claim_request([queue], "w", 1, wait=1, lease=60, ack_timeout=60)
    )
    await client.call(
        "CompleteJob",
        wpb.CompleteJobRequest(job_id=done.id, lease_token=claimed.jobs[0].lease_token),
    )
    e = await raises(jobd.JobFinished, client.cancel(done.id))
    assert e.metadata.get("state")


async def _drain(events: object) -> None:
    async for _ in events:  # type: ignore[attr-defined]
        pass
