"""`sandbox budget`: privacy budgets of workspace members (show, grant, set)."""

from __future__ import annotations

import json
from typing import Any

import click

from ..errors import InputError
from .common import (
    Context,
    clean,
    current_actor,
    format_option,
    member_option,
    opened_state,
    pass_ctx,
    print_table,
)


@click.group()
def budget() -> None:
    """Privacy budgets (隐私预算) of workspace members: show, grant, set."""


def _workspace_names(state: Any) -> list[str]:
    return [r[0] for r in state.con.execute("SELECT name FROM workspaces ORDER BY 1")]


def _balance_rows(state: Any, workspace: str | None,
                  member: str | None) -> list[dict[str, Any]]:
    from ..ledger import SqliteLedger

    rows = []
    for name in [workspace] if workspace else _workspace_names(state):
        ledger = SqliteLedger.existing(state, name)
        members = ledger.members()
        if member is not None:
            members = [member] if workspace or member in members else []
        for m in members:
            rows.append({"workspace": name, "member": m, **ledger.balance(m).to_dict()})
    return rows


def _balance_table_row(r: dict[str, Any]) -> dict[str, Any]:
    return {"workspace": clean(r["workspace"]), "member": clean(r["member"]),
            "eps_total": f"{r['epsilon_total']:.4g}", "eps_spent": f"{r['epsilon_spent']:.4g}",
            "eps_remaining": f"{r['epsilon_remaining']:.4g}",
            "delta_total": f"{r['delta_total']:.3g}", "delta_spent": f"{r['delta_spent']:.3g}",
            "delta_remaining": f"{r['delta_remaining']:.3g}",
            "refreshes_on": r["refreshes_on"] or "never",
            "accounting": "zcdp (basic {:.4g})".format(r["epsilon_basic"])
            if r.get("accounting") == "zcdp" else "basic"}


@budget.command("show")
@click.option("--workspace", default=None, help="Only this workspace (default: every workspace).")
@member_option(False, "Only this member (default: every member with a budget or charges).")
@format_option
@pass_ctx
def budget_show(c: Context, workspace: str | None, member: str | None, fmt: str) -> None:
    """Show total, spent and remaining epsilon and delta per workspace and member."""
    with opened_state(c) as state:
        rows = _balance_rows(state, workspace, member)
    if fmt == "json":
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    print_table([_balance_table_row(r) for r in rows],
                 ["workspace", "member", "eps_total", "eps_spent", "eps_remaining",
                  "delta_total", "delta_spent", "delta_remaining", "refreshes_on", "accounting"])


def _change_budget(c: Context, workspace: str, member: str, epsilon: float | None,
                   delta: float | None, add: bool) -> None:
    from ..ledger import SqliteLedger

    with opened_state(c) as state:
        ledger = SqliteLedger.existing(state, workspace)
        if add and delta is not None and ledger.balance(member).delta_total + delta >= 1:
            raise InputError("the delta total would reach 1 or more, which protects nothing",
                             "grant a small delta, e.g. --delta 1e-6")
        b = ledger.set_budget(member, epsilon=epsilon, delta=delta, add=add, actor=current_actor())
    verb = "granted more budget to" if add else "set the budget of"
    click.echo(f"{verb} {clean(member)} in {workspace}: epsilon total {b.epsilon_total:.4g} "
               f"(spent {b.epsilon_spent:.4g}, remaining {b.epsilon_remaining:.4g}), delta "
               f"total {b.delta_total:.3g}; recorded in the audit log")


workspace_required = click.option("--workspace", required=True,
                                  help="Workspace of the member (see `sandbox budget show`).")


@budget.command("grant")
@workspace_required
@member_option(True, "Member who gets more budget.")
@click.option("--epsilon", type=float, required=True, help="Epsilon to add to the total.")
@click.option("--delta", type=float, default=None, help="Delta to add to the total (default: 0).")
@pass_ctx
def budget_grant(c: Context, workspace: str, member: str, epsilon: float,
                 delta: float | None) -> None:
    """Add epsilon (and delta) to a member's budget; recorded in the audit log."""
    _change_budget(c, workspace, member, epsilon, delta, add=True)


@budget.command("set")
@workspace_required
@member_option(True, "Member whose budget is set.")
@click.option("--epsilon", type=float, default=None, help="New epsilon total.")
@click.option("--delta", type=float, default=None, help="New delta total (below 1).")
@pass_ctx
def budget_set(c: Context, workspace: str, member: str, epsilon: float | None,
               delta: float | None) -> None:
    """Set a member's epsilon and/or delta totals; recorded in the audit log."""
    if epsilon is None and delta is None:
        raise InputError("nothing to set", "give --epsilon, --delta or both")
    _change_budget(c, workspace, member, epsilon, delta, add=False)

