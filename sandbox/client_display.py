"""How the notebook client shows results: DataFrames with their release facts, and HTML
and text displays that put the noise, the intervals, the budget and DUMMY up front.

Kept apart from the HTTP client (``sandbox.client``) so each stays small; pandas is
imported only when a DataFrame is made or shown.
"""

from __future__ import annotations

import html
import math
import numbers
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

NOISE_NOTE = ("Values are differentially private: noise was added on purpose. ± is the 95% "
              "interval of that noise (rows with too few people may be suppressed).")
DUMMY_NOTE = ("DUMMY DATA: these values come from made-up tables with the scenario's schema, "
              "not from real records. They cost no budget and cannot be exported; run the "
              "query without dummy=True for a real answer.")


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


class Budget(dict[str, Any]):
    def _repr_html_(self) -> str:
        return _budget_bar(self)


class ExportStatus(dict[str, Any]):
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


class Explanation(dict[str, Any]):
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
    text = str(df.to_string())
    if df.attrs.get("dummy"):
        return f"*** DUMMY DATA (not real, free, cannot be exported) ***\n{text}"
    return text


def _html_formatter(df: Any) -> str | None:
    if isinstance(getattr(df, "attrs", None), dict) and df.attrs.get("noisy"):
        return render(df)
    html_text: str | None = df._repr_html_()
    return html_text


def _text_formatter(df: Any, p: Any, cycle: bool) -> None:
    if isinstance(getattr(df, "attrs", None), dict) and df.attrs.get("dummy"):
        p.text(render_text(df))
    else:
        p.text(repr(df))


def register_display() -> None:
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


