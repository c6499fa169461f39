"""Retry policies: exponential backoff with jitter, defaulting to the published service config."""

from __future__ import annotations

import random
from dataclasses import dataclass

from . import service_config


def _seconds(text: str) -> float:
    return float(str(text).rstrip("s"))


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for UNAVAILABLE, on calls that are safe to repeat.

    Delay before retry n (from 0): min(initial * multiplier**n, max), times a random factor in
    [1 - jitter, 1]. `max_attempts` counts the first try. The defaults are the published
    service config's (docs/service-config.json): 5 attempts, 0.1 s doubling to 2 s.
    """

    max_attempts: int = int(service_config.RETRY_POLICY.get("maxAttempts", 5))
    initial: float = _seconds(service_config.RETRY_POLICY.get("initialBackoff", "0.1s"))
    multiplier: float = float(service_config.RETRY_POLICY.get("backoffMultiplier", 2))
    max: float = _seconds(service_config.RETRY_POLICY.get("maxBackoff", "2s"))
    jitter: float = 0.2

    def delay(self, retry: int) -> float:
        base = min(self.initial * self.multiplier**retry, self.max)
        return base * (1.0 - self.jitter * random.random())


NO_RETRY = RetryPolicy(max_attempts=1)

#: The backoff of a broken stream's resumes, for as long as `Client(watch_resume=...)` allows
#: (60 s); `max_attempts` bounds only a `submit_and_wait` submission sent again.
RESUME_POLICY = RetryPolicy(max_attempts=10)
