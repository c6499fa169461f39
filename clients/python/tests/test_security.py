"""Bearer tokens over TLS, and client certificates (mTLS)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Stack, jobd_binary
from pki import Pki

import jobd


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    p = Pki()
    p.authority("ca")
    p.issue("ca", "server", "IP:127.0.0.1,DNS:localhost")
    p.issue("ca", "client", "URI:spiffe://test/client")
    yield p
    p.remove()


def new_token(name: str, roles: list[str], queues: list[str]) -> tuple[str, str]:
    args = [jobd_binary(), "token", "new", "--name", name]
    args += [a for r in roles for a in ("--role", r)]
    args += [a for q in queues for a in ("--queue", q)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    token, entry = out.split("\n", 1)
    return token.strip(), entry


@pytest.fixture(scope="module")
def token_stack(pki: Pki) -> Iterator[tuple[Stack, str]]:
    token, entry = new_token("app", ["submitter", "operator"], ["sec.*"])
    auth = Path(pki.path("auth.toml"))
    auth.write_text(entry)
    s = Stack(
        "--tls-cert-file", pki.path("server.crt"), "--tls-key-file", pki.path("server.key"),
        "--auth-file", str(auth),
    )  # fmt: skip
    yield s, token
    s.close()


async def test_a_token_over_tls_is_accepted_and_its_queues_enforced(
    pki: Pki, token_stack: tuple[Stack, str]
) -> None:
    stack, token = token_stack
    async with jobd.Client(stack.target, token=token, ca_file=pki.path("ca.crt")) as client:
        job = await client.submit("sec.a", "k", b"p")
        assert (await client.get(job.id)).payload == b"p"
        with pytest.raises(jobd.PermissionDenied) as denied:
            await client.submit("other", "k")
        assert denied.value.detailed
        assert denied.value.metadata == {"method": "jobd.v1.JobService/SubmitJob", "queue": "other"}
    async with jobd.Client(stack.target, ca_file=pki.path("ca.crt")) as anonymous:
        with pytest.raises(jobd.Unauthenticated) as refused:
            await anonymous.submit("sec.a", "k")
        assert refused.value.detailed
    async with jobd.Client(stack.target, token="jobd_" + "0" * 64, ca_file=pki.path("ca.crt")) as c:
        with pytest.raises(jobd.Unauthenticated):
            await c.get(job.id)


async def test_a_client_certificate_is_an_identity(pki: Pki) -> None:
    stack = Stack(
        "--tls-cert-file", pki.path("server.crt"), "--tls-key-file", pki.path("server.key"),
        "--tls-client-ca-file", pki.path("ca.crt"),
    )  # fmt: skip
    try:
        async with jobd.Client(
            stack.target,
            ca_file=pki.path("ca.crt"),
            cert_file=pki.path("client.crt"),
            key_file=pki.path("client.key"),
        ) as client:
            job = await client.submit("m", "k", b"mtls")
            assert (await client.get(job.id)).payload == b"mtls"
        no_cert = jobd.Client(
            stack.target, ca_file=pki.path("ca.crt"), retry=jobd.RetryPolicy(max_attempts=1)
        )
        async with no_cert:
            with pytest.raises(jobd.Unavailable):
                await no_cert.get(job.id)
    finally:
        stack.close()
