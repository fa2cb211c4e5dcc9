"""The notebook client of the sandbox service: schemas, explain, noisy answers, budget.

    from sandbox.client import Sandbox
    sb = Sandbox()                      # the only workspace, or Sandbox("credit-demo")
    sb.tables(); sb.describe("loans")
    sb.explain("SELECT purpose, count(*) FROM loans GROUP BY purpose")
    df = sb.sql("SELECT purpose, count(*) AS n FROM loans GROUP BY purpose", epsilon=0.5)
    df.attrs["ci95"], df.attrs["release"]; sb.budget()
    sb.export({"by_purpose": df, "chart.png": "chart.png"}, title=..., purpose=...)
    sb.exports(); sb.download(export_id)   # the signed bundle once an auditor approved

    %load_ext sandbox.client            # then a %%dpsql [--epsilon E] [--workspace W] cell

Dummy data, to develop for free: ``Sandbox(..., dummy=True)``, ``sb.sql(..., dummy=True)``
or ``%%dpsql --dummy`` run the whole gate (same checks, refusals, noise and shape) on
tables that hold nothing real, at no budget cost. Such results say DUMMY in their display
and ``df.attrs["dummy"]``, and are never exported: write the analysis on dummy data, check
``sb.explain`` for the cost, then run it once for real.

The service is found at ``$SANDBOX_SERVICE_URL`` (the hub sets it for every server), else
derived from ``$JUPYTERHUB_API_URL`` (``.../hub/api`` -> ``.../services/sandbox/``); the
token is ``$JUPYTERHUB_API_TOKEN``. Only the standard library is used for HTTP; pandas is
imported when a DataFrame is made. Errors from the service become one exception class
per family (``QueryRefused`` for ``gate.*``, ``BudgetExhausted`` for ``budget.*``, ...),
each showing its code, message and hint.
"""

from __future__ import annotations

import html
import json
import os
import uuid
from typing import TYPE_CHECKING, Any

from . import error_codes, http
from .client_display import (
    Budget,
    Explanation,
    ExportStatus,
    register_display,
    render,
    render_text,
    to_frame,
)
from .display import caret
from .errors import SandboxError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "AuthError", "BudgetExhausted", "ExportError", "ExportRefused", "InvalidRequest",
    "LimitExceeded", "QueryFailed", "QueryRefused", "RequestConflict", "Sandbox",
    "SandboxServiceError", "ServiceUnavailable", "WorkspaceError", "WorkspaceRefused", "render",
    "render_text",
]

RETRIES = 3
RETRY_STATUS = http.RETRY_STATUS
class SandboxServiceError(SandboxError):
    """An error answered by the sandbox service (or reaching it failed)."""

    code = "service.error"

    def __init__(self, code: str, message: str, hint: str | None = None,
                 status: int | None = None, line: int | None = None,
                 column: int | None = None) -> None:
        super().__init__(message, hint)
        self.code, self.status, self.line, self.column = code, status, line, column
        self.sql: str | None = None  # the refused query, set by the client that sent it

    def _where(self) -> str:
        return f" (line {self.line}, column {self.column})" if self.line else ""

    def _caret(self) -> list[str]:
        """The refused SQL line and a caret under the refused part, when both are known."""
        if self.sql is None or not isinstance(self.line, int) or \
                not isinstance(self.column, int):
            return []
        return caret(self.sql, self.line, self.column)

    def __str__(self) -> str:
        text = f"[{self.code}] {self.message}{self._where()}"
        text += "".join(f"\n  {line}" for line in self._caret())
        return f"{text}\nhint: {self.hint}" if self.hint else text

    def _repr_html_(self) -> str:
        hint = f"<br><b>hint:</b> {html.escape(self.hint)}" if self.hint else ""
        shown = self._caret()
        pre = (f"<pre style='margin:4px 0'>{html.escape(chr(10).join(shown))}</pre>"
               if shown else "")
        return (f"<div style='border-left:4px solid #c00;padding:4px 8px'><b>"
                f"{html.escape(self.code)}</b>: {html.escape(self.message)}"
                f"{html.escape(self._where())}{pre}{hint}</div>")


class AuthError(SandboxServiceError):
    """auth.*: the token is missing, invalid, expired or lacks the sandbox scope."""


class WorkspaceRefused(SandboxServiceError):
    """workspace.*: unknown workspace, or not a member of its hub group."""


class QueryRefused(SandboxServiceError):
    """gate.*: the gate refused the query (nothing was run or charged); rephrase it."""


class BudgetExhausted(SandboxServiceError):
    """budget.*: the query costs more than the remaining privacy budget."""


class RequestConflict(SandboxServiceError):
    """request.*: this request id is still running, or failed after being charged."""


class LimitExceeded(SandboxServiceError):
    """limits.*: body too large or too many requests at once."""


class InvalidRequest(SandboxServiceError):
    """input.* and http.*: the request itself was malformed."""


class QueryFailed(SandboxServiceError):
    """engine.*: execution failed or timed out (the query was charged)."""


class ServiceUnavailable(SandboxServiceError):
    """The service could not be reached or failed internally."""


class ExportRefused(SandboxServiceError):
    """export.*: an export request was refused (malformed, too large, wrong state, revoked)."""


# The earlier names, kept for notebooks that catch them (the server has classes of these
# names too, so the client's own classes are named differently).
WorkspaceError = WorkspaceRefused
ExportError = ExportRefused

# Code prefix -> exception class, from the one table of codes (sandbox/error_codes.py).
FAMILIES: dict[str, type[SandboxServiceError]] = {
    prefix: globals()[name] for prefix, name in error_codes.FAMILIES.items()}


def error_from(status: int, body: Any) -> SandboxServiceError:
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict) or not isinstance(err.get("code"), str):
        return ServiceUnavailable("service.bad_response",
                                  f"the service answered HTTP {status} without an error body",
                                  "try again; if it persists tell the operator", status)
    code = err["code"]
    cls = FAMILIES.get(code.split(".", 1)[0], SandboxServiceError)
    return cls(code, str(err.get("message", "")), err.get("hint"), status, err.get("line"),
               err.get("column"))


def service_url(env: dict[str, str] | None = None) -> str:
    """The service's root URL (ending in '/') from the environment."""
    env = dict(os.environ) if env is None else env
    url = env.get("SANDBOX_SERVICE_URL")
    if not url:
        api = env.get("JUPYTERHUB_API_URL")
        if not api or not api.rstrip("/").endswith("/hub/api"):
            raise ServiceUnavailable(
                "service.not_configured", "cannot find the sandbox service",
                "set SANDBOX_SERVICE_URL (the hub normally sets it), e.g. "
                "http://127.0.0.1:10101/services/sandbox/")
        url = api.rstrip("/")[: -len("hub/api")] + "services/sandbox/"
    return url if url.endswith("/") else url + "/"


class Sandbox:
    """One workspace of the sandbox service, called with the notebook's hub token."""

    def __init__(self, workspace: str | None = None, *, url: str | None = None,
                 token: str | None = None, timeout: float = 120.0,
                 retries: int = RETRIES, backoff_s: float = 0.5, dummy: bool = False) -> None:
        root = url or service_url()
        root = root if root.endswith("/") else root + "/"
        self.base = root if root.endswith("api/v1/") else root + "api/v1/"
        self.token = token or os.environ.get("JUPYTERHUB_API_TOKEN", "")
        if not self.token:
            raise AuthError("auth.required", "no hub token in this environment",
                            "run inside a hub notebook, or pass token= / set "
                            "JUPYTERHUB_API_TOKEN")
        self.timeout, self.retries, self.backoff_s = timeout, retries, backoff_s
        self.dummy = bool(dummy)  # the default of sql() and query(): answer from dummy data
        names = [w["name"] for w in self.workspaces()]
        if workspace is None:
            if len(names) != 1:
                raise WorkspaceRefused(
                    "workspace.choose", "you are a member of "
                    + (f"{len(names)} workspaces: {', '.join(names)}" if names else
                       "no workspace"),
                    "pass one: Sandbox(workspace=...)" if names else
                    "ask the operator to add you to a workspace's hub group")
            workspace = names[0]
        elif workspace not in names:
            raise WorkspaceRefused("workspace.forbidden", f"you are not a member of workspace "
                                 f"{workspace!r}", f"your workspaces: {', '.join(names) or 'none'}")
        self.workspace = workspace
        self._schema: dict[str, Any] | None = None
        register_display()

    def __repr__(self) -> str:
        dummy = ", dummy=True" if self.dummy else ""
        return f"Sandbox(workspace={self.workspace!r}, url={self.base!r}{dummy})"

    # -- HTTP -----------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              raw: bool = False) -> tuple[Any, dict[str, str]]:
        """JSON call with retries on connection errors, 502 and 503 (same body, same id);
        ``raw`` returns the answer's bytes (a bundle) instead of JSON."""
        data = None if body is None else json.dumps(body, default=_plain).encode()
        headers = {"Authorization": f"token {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            resp = http.send(method, self.base + path, headers=headers, body=data,
                             timeout=self.timeout, retry=http.Retry(self.retries, self.backoff_s))
        except http.Unreachable as exc:
            raise ServiceUnavailable("service.unreachable",
                                     f"cannot reach the sandbox service ({exc.reason})",
                                     "try again in a moment; if it persists tell the "
                                     "operator") from None
        if not resp.ok:
            try:
                payload = resp.json()
            except ValueError:
                payload = None
            raise error_from(resp.status, payload)
        return (resp.body if raw else resp.json()), resp.headers

    def _ws(self, what: str) -> str:
        return f"workspaces/{self.workspace}/{what}"

    # -- API ------------------------------------------------------------------------------
    def workspaces(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "workspaces")[0])

    def schema(self) -> dict[str, Any]:
        if self._schema is None:
            self._schema = dict(self._call("GET", self._ws("schema"))[0])
        return self._schema

    def tables(self) -> pd.DataFrame:
        import pandas as pd

        rows = [{"table": alias, "description": t["description"],
                 "privacy_unit": t["privacy_unit"], "public": t["public"],
                 "max_rows_per_unit": t["max_rows_per_unit"],
                 "columns": ", ".join(c["name"] for c in t["columns"])}
                for alias, t in self.schema()["tables"].items()]
        return pd.DataFrame(rows)

    def describe(self, table: str) -> pd.DataFrame:
        import pandas as pd

        tables = self.schema()["tables"]
        if table not in tables:
            raise InvalidRequest("input.invalid", f"there is no table {table!r}",
                                 f"tables: {', '.join(tables)}")
        return pd.DataFrame(tables[table]["columns"],
                            columns=["name", "type", "role", "bounds", "keys", "description"])

    def explain(self, sql: str, epsilon: float | None = None) -> Explanation:
        body: dict[str, Any] = {"sql": sql}
        if epsilon is not None:
            body["epsilon"] = epsilon
        return Explanation(self._asking(sql, "explain", body)[0])

    def _asking(self, sql: str, what: str, body: dict[str, Any]) -> tuple[Any, dict[str, str]]:
        """POST a query; a refusal keeps the SQL, so it can show a caret under the part
        the gate refused."""
        try:
            return self._call("POST", self._ws(what), body)
        except QueryRefused as exc:
            exc.sql = sql
            raise

    def query(self, sql: str, epsilon: float | None = None,
              request_id: str | None = None, dummy: bool | None = None) -> dict[str, Any]:
        """The raw release (dict); retried with the same request id, so charged once.
        ``dummy`` (default: the client's) answers from dummy data, free."""
        body: dict[str, Any] = {"sql": sql, "request_id": request_id or uuid.uuid4().hex}
        if epsilon is not None:
            body["epsilon"] = epsilon
        if self.dummy if dummy is None else dummy:
            body["dummy"] = True
        result, headers = self._asking(sql, "query", body)
        result = dict(result)
        result["replayed"] = headers.get("Sandbox-Replayed") == "true"
        return result

    def sql(self, sql: str, epsilon: float | None = None,
            dummy: bool | None = None) -> pd.DataFrame:
        """Noisy values as a DataFrame; ``attrs["ci95"]`` per cell, ``attrs["release"]``.
        With ``dummy=True`` (or a ``Sandbox(..., dummy=True)``) the answer comes from dummy
        data: the same checks, refusals, noise and columns, no budget spent, labelled
        ``attrs["dummy"]`` and never exportable."""
        return to_frame(self.query(sql, epsilon, dummy=dummy))

    def budget(self) -> Budget:
        return Budget(self._call("GET", self._ws("budget"))[0])

    # -- exports (the only way anything leaves) -------------------------------------------
    def export(self, items: Any, *, title: str | None = None, purpose: str | None = None,
               resubmit: str | None = None) -> ExportStatus:
        """Ask to take results out: DataFrames (from ``sb.sql`` or derived from them) and
        files (CSV, Parquet, PNG, SVG, TXT, JSON). ``items`` is a dict name -> DataFrame,
        path or bytes, or a list of DataFrames and paths. Checked at once; an auditor
        decides; ``download`` fetches the signed bundle once it is released. A request
        returned for changes is sent again with ``resubmit=export_id``."""
        from .exports.wire import ExportDummyError, FileItem, FrameItem, item_to_dict

        named = items.items() if isinstance(items, dict) else [
            (None, it) for it in (items if isinstance(items, list | tuple) else [items])]
        payload = []
        for i, (name, it) in enumerate(named, start=1):
            if hasattr(it, "columns") and hasattr(it, "itertuples"):
                try:
                    item: Any = FrameItem.from_pandas(str(name or f"table{i}"), it)
                except ExportDummyError as exc:
                    raise ExportRefused(exc.code, exc.message, exc.hint) from None
            elif isinstance(it, bytes | bytearray):
                if not name:
                    raise InvalidRequest("input.invalid", "bytes need a file name",
                                         'pass a dict: {"notes.txt": data}')
                item = FileItem(str(name), bytes(it))
            elif isinstance(it, str | os.PathLike):
                path = os.fspath(it)
                with open(path, "rb") as fh:
                    item = FileItem(str(name or os.path.basename(path)), fh.read())
            else:
                raise InvalidRequest("input.invalid", f"cannot export a {type(it).__name__}",
                                     "pass DataFrames, file paths or bytes")
            payload.append(item_to_dict(item))
        body: dict[str, Any] = {"items": payload}
        body.update({k: v for k, v in (("title", title), ("purpose", purpose)) if v is not None})
        if resubmit is not None:
            return ExportStatus(self._call("POST", self._ws(f"exports/{resubmit}/resubmit"),
                                           body)[0])
        body["request_id"] = uuid.uuid4().hex
        return ExportStatus(self._call("POST", self._ws("exports"), body)[0])

    def exports(self) -> pd.DataFrame:
        """Your export requests here and their states (revoked ones say so)."""
        import pandas as pd

        rows = [{"id": r["id"], "title": r["title"], "state": r["state"],
                 "checks": (r.get("checks") or {}).get("outcome"),
                 "approvals": f"{len(r['approvals'])}/{r['approvals_required']}",
                 "updated": r["updated"]}
                for r in self._call("GET", self._ws("exports"))[0]]
        return pd.DataFrame(rows, columns=["id", "title", "state", "checks", "approvals",
                                           "updated"])

    def export_status(self, export_id: str) -> ExportStatus:
        return ExportStatus(self._call("GET", self._ws(f"exports/{export_id}"))[0])

    def withdraw(self, export_id: str, comment: str = "") -> ExportStatus:
        return ExportStatus(self._call("POST", self._ws(f"exports/{export_id}/withdraw"),
                                       {"comment": comment})[0])

    def download(self, export_id: str, path: str | None = None) -> str:
        """Save the signed bundle of a released export; returns the file's path. Anyone can
        check it with `sandbox export verify FILE`."""
        data, _ = self._call("GET", self._ws(f"exports/{export_id}/bundle"), raw=True)
        path = path or f"export-{export_id}.zip"
        with open(path, "wb") as fh:
            fh.write(data)
        return path


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and dates in exported frames."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"cannot send a {type(value).__name__}")


# -- %%dpsql --------------------------------------------------------------------------------
_clients: dict[str | None, Sandbox] = {}


def dpsql(line: str, cell: str) -> pd.DataFrame:
    """%%dpsql [--epsilon E] [--workspace W] [--dummy]: answer the cell's SQL with noise
    (with --dummy from dummy data, free)."""
    import argparse
    import shlex

    parser = argparse.ArgumentParser(prog="%%dpsql", add_help=False)
    parser.add_argument("--epsilon", type=float, default=None)
    parser.add_argument("--workspace", default=None)
    parser.add_argument("--dummy", action="store_true")
    try:
        args = parser.parse_args(shlex.split(line))
    except SystemExit:
        raise InvalidRequest("input.invalid", f"bad %%dpsql options: {line!r}",
                             "use %%dpsql [--epsilon 0.5] [--workspace NAME] [--dummy]") from None
    client = _clients.get(args.workspace)
    if client is None:
        client = _clients[args.workspace] = Sandbox(args.workspace)
    return client.sql(cell, epsilon=args.epsilon, dummy=True if args.dummy else None)


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magic_function(dpsql, magic_kind="cell", magic_name="dpsql")
    register_display()
