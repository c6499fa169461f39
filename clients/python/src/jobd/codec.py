"""Payloads and results as bytes: how Python values become them, and times become protobuf."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

#: Seconds as a float, or a timedelta.
Seconds = float | int | timedelta


def encode(value: Any) -> bytes:
    """bytes-like as they are, str as UTF-8, None as empty, anything else as JSON (UTF-8)."""
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":")).encode()


def seconds(value: Seconds) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def duration(value: Seconds) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(timedelta(seconds=seconds(value)))
    return d


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(value)
    return t
