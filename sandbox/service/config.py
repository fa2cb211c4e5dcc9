"""The service's configuration file: every key validated, every problem named by file:line.

    home: /path/home            # else $SANDBOX_HOME
    keystore: /path/keystore    # else $SANDBOX_KEYSTORE
    workspaces:                 # hub group -> scenario policy
      - name: credit-demo
        group: credit-analysts
        policy: policies/credit_underwriting.yaml   # relative to this file
    limits: {max_sql_chars: 20000, max_body_bytes: 65536, per_member_concurrency: 2,
             query_timeout_s: 30, memory_limit: "4GB"}

``LIMITS`` documents each limit once (name, default, help); docs/service.md lists them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError
from ..yamlio import LineDict, LineList, line_of, load_yaml

TOP_KEYS = ("home", "keystore", "workspaces", "limits")
WORKSPACE_KEYS = ("name", "group", "policy")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
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
          "Largest request body accepted; larger bodies get limits.body_too_large (413)."),
    Limit("per_member_concurrency", 2, int,
          "Explain and query requests one member may have running at once; more get "
          "limits.concurrency (429)."),
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
          "the state database."),
)


@dataclass(frozen=True)
class WorkspaceConfig:
    name: str
    group: str
    policy: Path
    line: int


@dataclass(frozen=True)
class ServiceConfig:
    path: Path
    home: Path | None
    keystore: Path | None
    workspaces: tuple[WorkspaceConfig, ...]
    limits: dict[str, Any] = field(default_factory=dict)

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
        if key not in TOP_KEYS:
            raise _fail(path, line_of(doc, key), f"unknown key '{key}'",
                        f"allowed keys: {', '.join(TOP_KEYS)}")
    home, keystore = _path(path, doc, "home"), _path(path, doc, "keystore")
    wdocs = doc.get("workspaces")
    if not isinstance(wdocs, LineList) or not wdocs:
        raise _fail(path, line_of(doc, "workspaces") if "workspaces" in doc else doc.line,
                    "'workspaces' must be a non-empty list",
                    "add '- {name: ..., group: ..., policy: ...}' entries")
    workspaces: list[WorkspaceConfig] = []
    seen: set[str] = set()
    for i, w in enumerate(wdocs):
        wline = wdocs.item_lines[i]
        if not isinstance(w, LineDict):
            raise _fail(path, wline, f"workspace #{i + 1} must be a mapping",
                        "write {name: ..., group: ..., policy: ...}")
        for key in w:
            if key not in WORKSPACE_KEYS:
                raise _fail(path, line_of(w, key), f"unknown workspace key '{key}'",
                            f"allowed keys: {', '.join(WORKSPACE_KEYS)}")
        for key in WORKSPACE_KEYS:
            value = w.get(key)
            if not isinstance(value, str) or not value.strip():
                raise _fail(path, line_of(w, key) if key in w else w.line,
                            f"workspace #{i + 1} needs a text '{key}'",
                            "every workspace has a name, a hub group and a policy file")
        for key in ("name", "group"):
            if not NAME_RE.match(w[key]):
                raise _fail(path, line_of(w, key), f"invalid workspace {key} {w[key]!r}",
                            "use 1-64 letters, digits, '.', '_' or '-', starting with a "
                            "letter or digit")
        if w["name"] in seen:
            raise _fail(path, line_of(w, "name"), f"duplicate workspace name {w['name']!r}",
                        "give each workspace a unique name")
        seen.add(w["name"])
        pol = Path(w["policy"]).expanduser()
        pol = pol if pol.is_absolute() else path.parent / pol
        if not pol.is_file():
            raise _fail(path, line_of(w, "policy"), f"policy file not found: {pol}",
                        "give a path that is absolute or relative to this configuration")
        workspaces.append(WorkspaceConfig(w["name"], w["group"], pol, line_of(w, "policy")))
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
    return ServiceConfig(path, home, keystore, tuple(workspaces), limits)
