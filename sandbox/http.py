"""The one HTTP client of the sandbox's outgoing calls, with one retry policy.

The notebook client (to the service) and the operator commands (to the hub) both call
through ``send``. It uses the standard library only, so a notebook kernel needs nothing
more, and retries exactly what cannot have been acted on: a connection that failed, and
the answers 502 and 503 of a proxy or a service not ready. Callers send the same body
again, so a retried call must be idempotent or carry its own request id.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

RETRY_STATUS = (502, 503)


@dataclass(frozen=True)
class Retry:
    """Up to ``retries`` more attempts, waiting ``backoff_s``, then twice as long each time."""

    retries: int = 3
    backoff_s: float = 0.5

    def delay(self, attempt: int) -> float:
        return self.backoff_s * 2 ** (attempt - 1)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body as JSON (``None`` when empty); ValueError when it is not JSON."""
        return json.loads(self.body or b"null")


class Unreachable(Exception):
    """No answer after every attempt; ``reason`` says why, ``kind`` names the failure."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.reason, self.kind = reason, kind


def send(method: str, url: str, *, headers: dict[str, str] | None = None,
         body: bytes | None = None, timeout: float = 30.0,
         retry: Retry | None = None) -> Response:
    """One call; every status is returned (never raised). Connection failures, 502 and
    503 are tried again under ``retry``; after the last attempt its answer is returned, or
    ``Unreachable`` raised when there was none."""
    retry = retry or Retry()
    failure: Unreachable | None = None
    for attempt in range(retry.retries + 1):
        if attempt:
            time.sleep(retry.delay(attempt))
        req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return Response(resp.status, resp.read(), dict(resp.headers.items()))
        except urllib.error.HTTPError as exc:
            answer = Response(exc.code, exc.read(),
                              dict(exc.headers.items()) if exc.headers else {})
            if exc.code not in RETRY_STATUS or attempt == retry.retries:
                return answer
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            failure = Unreachable(str(getattr(exc, "reason", exc)), type(exc).__name__)
    assert failure is not None
    raise failure
