"""The service's configuration file: every key validated, every problem named by file:line.

    home: /path/home            # else $SANDBOX_HOME
    keystore: /path/keystore    # else $SANDBOX_KEYSTORE
    state: postgresql://...     # else $SANDBOX_STATE, else <home>/state.sqlite
    limits: {max_sql_chars: 20000, max_body_bytes: 65536, per_member_concurrency: 2,
             query_timeout_s: 30, memory_limit: "4GB"}

Workspaces are not configured here: they are records in the state database, made by
operators with `sandbox scenario review` and `sandbox workspace create` (docs/workspaces.md).

``LIMITS`` documents each limit once (name, default, help); docs/service.md lists them.
"""

from __future__ import annotations

import math
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError
from ..statedb.base import is_url
from ..yamlio import LineDict, line_of, load_yaml

TOP_KEYS = ("home", "keystore", "state", "limits")
MEMORY_RE = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")


@dataclass(frozen=True)
class Limit:
    name: str
    default: Any
    kind: type
    help: str


LIMITS: tuple[Limit, ...] = (
    Limit("max_sql_chars", 20000, int,
          "Longest SQL text accepted; longer queries are refused with gate.too_large (400)."),
    Limit("max_body_bytes", 65536, int,
          "Largest request body of every route but export submissions. A body is read only "
          "after the token is checked; one announced larger (Content-Length) gets "
          "limits.body_too_large (413) unread, a chunked one is cut off at the limit."),
    Limit("max_export_bytes", 48 << 20, int,
          "Largest body of an export submission or resubmission (items base64-encoded), "
          "streamed in after the token is checked; larger ones get limits.body_too_large "
          "(413). The export rules limit the items themselves."),
    Limit("export_hit_limit", 3, int,
          "Export requests of one member the identifier scan may block within "
          "export_hit_window_s; after that the member's further export requests are refused "
          "with export.held (403), a message that does not say why."),
    Limit("export_hit_window_s", 2592000.0, float,
          "The window, in seconds (30 days), in which export_hit_limit counts."),
    Limit("export_quota_bytes", 64 << 20, int,
          "Bytes of export items one member may have in requests awaiting a decision "
          "(submitted, checked or returned; every revision; all workspaces). A submission or "
          "resubmission that would go over gets limits.export_quota (403); withdrawn and "
          "rejected requests free their share."),
    Limit("queries_per_minute", 120, int,
          "Explain and query requests one member may send per minute (a burst of this many, "
          "then at the steady rate); more get limits.rate (429) with Retry-After."),
    Limit("refusals_per_minute", 30, int,
          "Refused or malformed requests one member may make per minute (gate refusals, "
          "budget refusals, invalid bodies, unknown workspaces). Each leaves an audit "
          "record; past the limit the member's explain, query and export requests get "
          "limits.rate (429) with Retry-After until the allowance refills."),
    Limit("exports_per_hour", 20, int,
          "Export submissions and resubmissions one member may send per hour; more get "
          "limits.rate (429) with Retry-After."),
    Limit("header_timeout_s", 10.0, float,
          "Seconds a connection may take to send its request headers (and may stay idle "
          "between requests); slower connections are closed."),
    Limit("body_timeout_s", 60.0, float,
          "Seconds a request may take to send its body; slower connections are closed."),
    Limit("per_member_concurrency", 2, int,
          "Requests one member may have in flight at once (any endpoint, body upload "
          "included); more get limits.concurrency (429)."),
    Limit("query_timeout_s", 30.0, float,
          "Engine time per query; a query past it is interrupted, still charged, and "
          "answered with engine.timeout (504)."),
    Limit("memory_limit", "4GB", str, "DuckDB memory limit of the one shared engine."),
    Limit("engine_threads", 2, int, "DuckDB threads of the engine."),
    Limit("workers", 8, int, "Worker threads running gate work (each has its own state "
          "database connection)."),
    Limit("auth_cache_s", 30, int, "Seconds a token's identity, groups and scopes are "
          "cached; a revoked or expired token may work this long."),
    Limit("recover_after_s", 90.0, float,
          "At start, reservations older than this are closed as interrupted (charged, "
          "never refunded). Must exceed the longest query of any other process sharing "
          "the state database. When it exceeds query_timeout_s, every replica also closes "
          "such reservations while running (every recover_after_s / 3 seconds, at most 30), "
          "so those of a replica that died are closed by the others."),
)


@dataclass(frozen=True)
class ServiceConfig:
    path: Path
    home: Path | None
    keystore: Path | None
    limits: dict[str, Any] = field(default_factory=dict)
    state: str | None = None  # a postgresql:// URL or a SQLite file (absolute)

    def limit(self, name: str) -> Any:
        return self.limits[name]


def _fail(path: Path, line: int, message: str, hint: str) -> ConfigError:
    return ConfigError(f"{path}:{line}: {message}", hint)


def _path(cfg: Path, doc: LineDict, key: str) -> Path | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(cfg, line_of(doc, key), f"'{key}' must be a directory path",
                    f"e.g. {key}: /srv/sandbox/{key}, or leave it out to use the environment")
    p = Path(value).expanduser()
    return p if p.is_absolute() else (cfg.parent / p)


def _state(cfg: Path, doc: LineDict) -> str | None:
    """The state database: a PostgreSQL URL as written, or a SQLite file (relative to the
    configuration file)."""
    value = doc.get("state")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(cfg, line_of(doc, "state"), "'state' must be a postgresql:// URL or a "
                    "SQLite file path", "e.g. state: postgresql://sandbox@db:5432/sandbox, "
                    "or leave it out to use $SANDBOX_STATE or <home>/state.sqlite")
    value = value.strip()
    if is_url(value):
        return value
    if "://" in value:
        raise _fail(cfg, line_of(doc, "state"), f"'state' names an unknown kind of database "
                    f"({value.split('://', 1)[0]}://)",
                    "use a postgresql:// URL, or a SQLite file path")
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (cfg.parent / p))


def _limit_value(cfg: Path, doc: LineDict, lim: Limit) -> Any:
    value = doc[lim.name]
    line = line_of(doc, lim.name)
    if lim.kind is str:
        if not isinstance(value, str) or not MEMORY_RE.match(value.strip()):
            raise _fail(cfg, line, f"limits.{lim.name} must be a size like \"4GB\"",
                        "write a number followed by B, KB, MB, GB or TB, in quotes")
        return value.strip()
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value) or value < 0 or (value == 0 and lim.name != "recover_after_s"):
        raise _fail(cfg, line, f"limits.{lim.name} must be a positive number, not {value!r}",
                    f"the default is {lim.default}")
    if lim.kind is int:
        if value != int(value):
            raise _fail(cfg, line, f"limits.{lim.name} must be a whole number, not {value!r}",
                        f"the default is {lim.default}")
        return int(value)
    return float(value)


def load_config(path: Path) -> ServiceConfig:
    """Read and validate the service configuration (raises ConfigError naming file:line)."""
    path = Path(path).absolute()
    try:
        doc = load_yaml(path, "service configuration")
    except InputError as exc:
        raise ConfigError(exc.message, exc.hint) from None
    if not isinstance(doc, LineDict):
        raise _fail(path, line_of(doc) or 1, "the configuration must be a mapping",
                    "see docs/service.md for an example")
    for key in doc:
        if key == "workspaces":
            raise _fail(path, line_of(doc, key), "workspaces are no longer configured here",
                        "they are records now: approve the policy with `sandbox scenario "
                        "review`, then `sandbox workspace create` (docs/workspaces.md)")
        if key not in TOP_KEYS:
            raise _fail(path, line_of(doc, key), f"unknown key '{key}'",
                        f"allowed keys: {', '.join(TOP_KEYS)}")
    home, keystore = _path(path, doc, "home"), _path(path, doc, "keystore")
    ldoc = doc.get("limits", LineDict())
    if ldoc is None:
        ldoc = LineDict()
    if not isinstance(ldoc, LineDict):
        raise _fail(path, line_of(doc, "limits"), "'limits' must be a mapping",
                    "e.g. limits: {query_timeout_s: 30}")
    known = {lim.name: lim for lim in LIMITS}
    limits = {lim.name: lim.default for lim in LIMITS}
    for key in ldoc:
        if key not in known:
            raise _fail(path, line_of(ldoc, key), f"unknown limit '{key}'",
                        f"known limits: {', '.join(known)}")
        limits[key] = _limit_value(path, ldoc, known[key])
    return ServiceConfig(path, home, keystore, limits, _state(path, doc))


COOKIE_SECRET_MIN = 32


def cookie_secret() -> bytes:
    """What signs the console's cookies: $SANDBOX_COOKIE_SECRET, shared by every replica so
    that a sign-in on one works on all; unset, random per process (a restart signs
    auditors out, and the hub's OAuth signs them in again)."""
    text = os.environ.get("SANDBOX_COOKIE_SECRET", "")
    if not text:
        return secrets.token_bytes(32)
    if len(text.strip()) < COOKIE_SECRET_MIN:
        raise ConfigError(f"SANDBOX_COOKIE_SECRET is shorter than {COOKIE_SECRET_MIN} "
                          "characters", "generate one with python -c \"import secrets;"
                          "print(secrets.token_urlsafe(48))\"")
    return text.strip().encode("utf-8")


def limits_table() -> str:
    """The limits table of docs/service.md, made from ``LIMITS`` (a test keeps the two
    equal: regenerate with ``python -c "from sandbox.service.config import limits_table;
    print(limits_table())"``)."""
    rows = ["| limit | default | meaning |", "| --- | --- | --- |"]
    for lim in LIMITS:
        d = lim.default
        default = f'"{d}"' if isinstance(d, str) else str(int(d) if float(d).is_integer()
                                                             else d)
        rows.append(f"| `{lim.name}` | {default} | {lim.help} |")
    return "\n".join(rows)
