"""Per-member rate limits, kept in the service process (no tornado, no state database).

Each limit is a token bucket: ``count`` requests per ``window_s``, refilled continuously,
so a member may burst up to ``count`` and then goes on at the steady rate. Refusals are
counted per window so that the audit log gets a record at the 1st, 2nd, 4th, 8th, ...
refused request of a window, not one per request of a flood.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    """``count`` requests per ``window_s`` seconds; ``name`` is the configuration key."""

    name: str
    count: int
    window_s: float

    @property
    def per_second(self) -> float:
        return self.count / self.window_s


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class _Hits:
    started: float
    count: int = 0


class RateLimiter:
    """Token buckets per (member, limit). Not thread-safe: the event loop owns it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._hits: dict[tuple[str, str], _Hits] = {}

    def _bucket(self, member: str, rate: Rate) -> _Bucket:
        now = self.clock()
        b = self._buckets.get((member, rate.name))
        if b is None:
            b = self._buckets[(member, rate.name)] = _Bucket(float(rate.count), now)
        else:
            b.tokens = min(float(rate.count), b.tokens + (now - b.updated) * rate.per_second)
            b.updated = now
        return b

    def wait(self, member: str, rate: Rate) -> float:
        """Seconds until one request is allowed (0 when it is allowed now); takes nothing."""
        b = self._bucket(member, rate)
        return 0.0 if b.tokens >= 1 else (1 - b.tokens) / rate.per_second

    def take(self, member: str, rate: Rate) -> None:
        """Count one request against the limit (the bucket may go below zero: a refusal
        that happened while the bucket was empty still delays the next request)."""
        self._bucket(member, rate).tokens -= 1

    def refused(self, member: str, rate: Rate) -> int | None:
        """Count one request refused by ``rate``; the running count of this window when it
        is a power of two (write an audit record), else None."""
        now = self.clock()
        h = self._hits.get((member, rate.name))
        if h is None or now - h.started >= rate.window_s:
            h = self._hits[(member, rate.name)] = _Hits(now)
        h.count += 1
        return h.count if h.count & (h.count - 1) == 0 else None


def retry_after(seconds: float) -> str:
    """The value of a Retry-After header: whole seconds, at least 1."""
    return str(max(1, int(seconds + 0.999)))
