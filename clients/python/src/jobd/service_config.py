"""The published gRPC service config (docs/service-config.json, packaged at build time).

It says, per method, the default deadline and whether UNAVAILABLE may be retried (the calls
that are safe to repeat as they are). The client applies both itself rather than through
gRPC's built-in retries, so that every retry is logged and a submission with an idempotency
key can be retried too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class MethodConfig:
    timeout: float | None
    retry: dict[str, Any] | None


def _seconds(text: str) -> float:
    return float(text.rstrip("s"))


def load() -> tuple[dict[str, MethodConfig], dict[str, Any]]:
    """Per method name ("GetJob"), its config; and the (shared) retry policy."""
    text = resources.files("jobd").joinpath("service_config.json").read_text()
    raw: dict[str, Any] = json.loads(text)
    methods: dict[str, MethodConfig] = {}
    policy: dict[str, Any] = {}
    for entry in raw["methodConfig"]:
        timeout = _seconds(entry["timeout"]) if "timeout" in entry else None
        retry = entry.get("retryPolicy")
        if retry and "UNAVAILABLE" in retry.get("retryableStatusCodes", []):
            policy = retry
        else:
            retry = None
        for name in entry["name"]:
            methods[name["method"]] = MethodConfig(timeout, retry)
    return methods, policy


METHODS, RETRY_POLICY = load()
