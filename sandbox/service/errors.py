"""Error codes as the service answers them: the status of each code and the JSON error body.

Handlers and the auditor console both answer errors through ``error_body``; keeping it
here (not beside the handlers) means the console needs nothing from the HTTP module.
Only developer-facing text gets out: engine text and stack traces stay in the server log.
"""

from __future__ import annotations

import json
from typing import Any

from ..error_codes import CODES, lookup
from ..errors import EngineError, SandboxError

# Codes whose messages are written for developers and may be passed on as they are.
PUBLIC_PREFIXES = ("gate.", "budget.", "request.", "engine.", "input.", "auth.", "workspace.",
                   "limits.", "http.", "export.", "dummy.")
NOT_PUBLIC = {"export.index"}  # an operator's problem (a missing identifier index)
# Code -> HTTP status of the JSON API's codes, from the one table (sandbox/error_codes.py).
STATUS: dict[str, int] = {c: e.status for c, e in CODES.items()
                          if e.api and e.status is not None and not c.endswith(".*")}


class Problem(SandboxError):
    """An HTTP-level error with a stable code (authentication, limits, bad input)."""

    def __init__(self, code: str, message: str, hint: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, hint)
        self.code = code
        self.headers = headers or {}


class QueryTimeout(EngineError):
    """The engine ran past the query time limit (still charged)."""

    code = "engine.timeout"


def status_of(exc: SandboxError) -> int:
    """The code's status in the registry (its own or its family's, ``gate.*``); 500 for a
    code the registry gives no status."""
    entry = lookup(exc.code)
    return entry.status if entry is not None and entry.status is not None else 500


def error_body(exc: BaseException | None) -> tuple[int, dict[str, Any]]:
    """Status and JSON body for any exception; only developer-facing text gets through."""
    if isinstance(exc, SandboxError) and exc.code.startswith(PUBLIC_PREFIXES) and \
            exc.code not in NOT_PUBLIC:
        return status_of(exc), {"error": exc.to_dict()}
    if isinstance(exc, SandboxError) and exc.code == "state.error":
        return 503, {"error": {"code": "service.unavailable",
                               "message": "the service could not record the request",
                               "hint": "try again in a moment; if it persists tell the "
                                       "operator"}}
    return 500, {"error": {"code": "internal", "message": "the service hit an internal error",
                           "hint": "try again; the error was logged for the operator"}}


def dumps(body: Any) -> str:
    """JSON as answered: UTF-8 text kept readable, never NaN (a release has none)."""
    return json.dumps(body, ensure_ascii=False, default=str, allow_nan=False)


# Codes of requests that are malformed or ask for a workspace the member does not have:
# each leaves a request.invalid record. Together with the gate's and the budget's refusals
# they count against refusals_per_minute.
RECORDED = ("input.invalid", "request.conflict", "limits.body_too_large",
            "workspace.not_found", "export.dummy")


def counts_as_refusal(code: str) -> bool:
    return code.startswith("gate.") or code in RECORDED or code == "budget.exhausted"


def escaped(raw: bytes, limit: int = 512) -> str:
    """The start of an untrusted body as printable ASCII (for the audit log)."""
    text = raw[:limit].decode("utf-8", "backslashreplace")
    return text.encode("unicode_escape").decode("ascii") + ("…" if len(raw) > limit else "")

