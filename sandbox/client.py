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
import math
import numbers
import os
import uuid
from typing import TYPE_CHECKING, Any

from . import error_codes, http
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
NOISE_NOTE = ("Values are differentially private: noise was added on purpose. ± is the 95% "
              "interval of that noise (rows with too few people may be suppressed).")
DUMMY_NOTE = ("DUMMY DATA: these values come from made-up tables with the scenario's schema, "
              "not from real records. They cost no budget and cannot be exported; run the "
              "query without dummy=True for a real answer.")


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
        _register_display()

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


# -- results and display ---------------------------------------------------------------------
def to_frame(release: dict[str, Any]) -> pd.DataFrame:
    import pandas as pd

    columns = list(release["columns"])
    df = pd.DataFrame(release["rows"], columns=columns)
    df.attrs["ci95"] = {c: [row[i] for row in release["ci95"]] for i, c in enumerate(columns)}
    df.attrs["release"] = {k: release.get(k) for k in (
        "release_id", "policy", "epsilon", "delta", "mechanisms", "suppressed_groups",
        "suppressed_groups_ci95", "budget", "replayed", "dummy", "bounding")}
    df.attrs["release"]["dummy"] = bool(release.get("dummy"))
    df.attrs["noisy"] = True
    df.attrs["dummy"] = bool(release.get("dummy"))
    return df


class Budget(dict):  # type: ignore[type-arg]
    def _repr_html_(self) -> str:
        return _budget_bar(self)


class ExportStatus(dict):  # type: ignore[type-arg]
    """An export request as the service reports it to its requester."""

    def _repr_html_(self) -> str:
        checks = self.get("checks") or {}
        rows = "".join(
            f"<tr><td>{html.escape(str(r.get('rule')))}</td><td>"
            f"{html.escape(str(r.get('outcome')))}</td><td>"
            f"{html.escape(str(r.get('message', '')))}</td></tr>"
            for r in checks.get("results", []))
        return (f"<div><b>export {html.escape(str(self.get('id')))}</b>: "
                f"{html.escape(str(self.get('state')))} (checks: "
                f"{html.escape(str(checks.get('outcome')))}; approvals "
                f"{len(self.get('approvals') or [])}/{self.get('approvals_required')})"
                f"<table>{rows}</table></div>")


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and dates in exported frames."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"cannot send a {type(value).__name__}")


class Explanation(dict):  # type: ignore[type-arg]
    def _repr_html_(self) -> str:
        cost = self.get("cost", {})
        acc = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>"
                      for k, v in (self.get("accuracy") or {}).items())
        return (f"<div><b>Cost:</b> ε = {_fmt(cost.get('epsilon'))}, δ = "
                f"{_fmt(cost.get('delta'))} &nbsp; <b>Groups:</b> "
                f"{html.escape(str(self.get('groups', '')))}<br>"
                f"<table><tr><th>column</th><th>95% accuracy</th></tr>{acc}</table>"
                f"<details><summary>rewritten SQL</summary><pre>"
                f"{html.escape(str(self.get('rewritten_sql', '')))}</pre></details></div>")


def _fmt(v: Any) -> str:
    """Readable numbers: thousands separators, no exponents for everyday magnitudes."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int) or (isinstance(v, float) and abs(v) >= 100 and abs(v) < 1e15):
        return f"{v:,.0f}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _accounting_note(b: dict[str, Any]) -> str:
    """Which of the two valid accountings of the member's spending is charged, and why."""
    if not b.get("epsilon_spent"):
        return ""
    basic, z = b.get("epsilon_basic"), b.get("epsilon_zcdp")
    text = (f"Spent ε {float(b['epsilon_spent']):.4g}: the smaller of adding up your queries' "
            f"epsilons ({float(basic or 0):.4g}) and zero-concentrated DP at the budget's "
            f"delta ({'not applicable' if z is None else f'{float(z):.4g}'}). Many small "
            "queries cost less in zCDP; a few large ones by adding.")
    return f"<div style='color:#666;font-size:85%'>{html.escape(text)}</div>"


def _budget_bar(b: dict[str, Any]) -> str:
    total = float(b.get("epsilon_total") or 0)
    left = float(b.get("epsilon_remaining") or 0)
    pct = 0 if total <= 0 else max(0.0, min(100.0, 100 * left / total))
    color = "#2a7" if pct > 30 else "#e90" if pct > 10 else "#c33"
    refresh = f", refreshes on {b['refreshes_on']}" if b.get("refreshes_on") else ""
    return (f"<div style='margin:4px 0'>Budget remaining: ε {left:.4g} of {total:.4g}"
            f"{html.escape(refresh)}{_accounting_note(b)}<div style='width:240px;"
            f"height:10px;background:#eee;border-radius:3px'><div class='sandbox-budget' "
            f"style='width:{pct:.0f}%;height:10px;background:{color};border-radius:3px'></div></div></div>")


def _fmt_key(v: Any) -> str:
    """A grouping key as written: a year is 2024, not 2,024; every digit of a fraction."""
    if v is None or isinstance(v, bool) or not isinstance(v, numbers.Real):
        return "" if v is None else str(v)
    if isinstance(v, numbers.Integral):
        return str(int(v))
    f = float(v)
    if math.isfinite(f) and f.is_integer() and abs(f) < 1e15:
        return str(int(f))
    return f"{f:.15g}"


def _keys(df: pd.DataFrame) -> set[Any]:
    """Grouping keys: exact columns with no mechanism and no interval in any row."""
    ci = df.attrs.get("ci95", {})
    mechanisms = (df.attrs.get("release") or {}).get("mechanisms") or {}
    return {c for c in df.columns
            if c not in mechanisms and all(h is None for h in ci.get(c) or [])}


def _suppressed_note(rel: dict[str, Any]) -> str:
    """How many groups fell below the threshold (a noisy count, with its interval)."""
    n = rel.get("suppressed_groups") or 0
    h = rel.get("suppressed_groups_ci95")
    if h is None:
        return f" {n} group(s) were suppressed." if n else ""
    return (f" About {n:,} group(s) were suppressed (± {h:,.0f}, a noisy count of the groups "
            "below the threshold).")


def render(df: pd.DataFrame) -> str:
    """HTML of a noisy result: values ± 95% interval, epsilon spent, budget, the noise note."""
    ci = df.attrs.get("ci95", {})
    rel = df.attrs.get("release", {})
    keys = _keys(df)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for i, row in enumerate(df.itertuples(index=False)):
        cells = []
        for c, v in zip(df.columns, row, strict=True):
            hw = (ci.get(c) or [None] * len(df))[i] if c in ci else None
            text = html.escape(_fmt_key(v) if c in keys else _fmt(v))
            if hw is not None:
                text += f" <span style='color:#888'>± {html.escape(_fmt(hw))}</span>"
            cells.append(f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    extra = _suppressed_note(rel)
    cut = (rel.get("bounding") or {}).get("units_cut")
    if cut is not None:
        rows = ", ".join(f"{k} rows of {t}" for t, k in rel["bounding"]["rows_per_unit"].items())
        extra += (f" Each unit keeps at most {rows}: about {max(cut, 0):,} units (± "
                  f"{rel['bounding']['units_cut_ci95']:,.0f}) had matching rows left out, so "
                  "counts and sums can be low.")
    replay = " (stored answer of an earlier identical request; not charged again)" \
        if rel.get("replayed") else ""
    budget = _budget_bar(rel["budget"]) if rel.get("budget") else ""
    if df.attrs.get("dummy"):
        banner = (f"<div class='sandbox-dummy' style='background:#fde8c8;border:2px dashed "
                  f"#c60;padding:4px 8px;font-weight:bold'>DUMMY — {html.escape(DUMMY_NOTE)}"
                  f"</div>")
        spent = (f"ε spent: 0 (on real data this query would spend "
                 f"{_fmt(rel.get('epsilon'))}, δ {_fmt(rel.get('delta'))})")
        cls = "sandbox-result sandbox-result-dummy"
    else:
        banner, cls = "", "sandbox-result"
        spent = f"ε spent: {_fmt(rel.get('epsilon'))} (δ {_fmt(rel.get('delta'))}){replay}"
    return (f"<div class='{cls}'>{banner}<table><thead><tr>{head}</tr></thead><tbody>"
            f"{''.join(body)}</tbody></table><div style='font-size:90%'>{spent}</div>{budget}"
            f"<div style='color:#a60;font-size:90%'>⚠ {html.escape(NOISE_NOTE)}"
            f"{html.escape(extra)}</div></div>")


def render_text(df: pd.DataFrame) -> str:
    """Plain-text display of a result: a DUMMY banner above dummy results."""
    text = df.to_string()
    if df.attrs.get("dummy"):
        return f"*** DUMMY DATA (not real, free, cannot be exported) ***\n{text}"
    return text


def _html_formatter(df: Any) -> str | None:
    if isinstance(getattr(df, "attrs", None), dict) and df.attrs.get("noisy"):
        return render(df)
    return df._repr_html_()  # type: ignore[no-any-return]


def _text_formatter(df: Any, p: Any, cycle: bool) -> None:
    if isinstance(getattr(df, "attrs", None), dict) and df.attrs.get("dummy"):
        p.text(render_text(df))
    else:
        p.text(repr(df))


def _register_display() -> None:
    """Show noisy DataFrames with their intervals in IPython (other frames as usual)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None:
        return
    import pandas as pd

    ip.display_formatter.formatters["text/html"].for_type(pd.DataFrame, _html_formatter)
    ip.display_formatter.formatters["text/plain"].for_type(pd.DataFrame, _text_formatter)


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
    _register_display()
