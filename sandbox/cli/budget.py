"""`sandbox budget`: privacy budgets of workspace members (show, grant, set)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import InputError, SandboxError, suggest
from ..workspaces import WorkspaceNotFoundError
from .common import (
    Context,
    clean,
    current_actor,
    format_option,
    hub_operator,
    hub_token_option,
    hub_url_option,
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
    kinds = _ledger_kinds(state)
    if workspace is not None:
        _known_ledger(state, workspace)
    for name in [workspace] if workspace else _workspace_names(state):
        ledger = SqliteLedger.existing(state, name)
        members = ledger.members()
        if member is not None:
            members = [member] if workspace or member in members else []
        for m in members:
            rows.append({"workspace": name, "kind": kinds[name], "member": m,
                         **ledger.balance(m).to_dict()})
    return rows


def _balance_table_row(r: dict[str, Any]) -> dict[str, Any]:
    return {"workspace": clean(r["workspace"]), "kind": r["kind"], "member": clean(r["member"]),
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
    """Show total, spent and remaining epsilon and delta per workspace and member.

    KIND tells provisioned workspaces (served to members) from ad-hoc ledgers (charged by
    `sandbox query`, named adhoc:NAME)."""
    with opened_state(c) as state:
        rows = _balance_rows(state, workspace, member)
    if fmt == "json":
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    print_table([_balance_table_row(r) for r in rows],
                 ["workspace", "kind", "member", "eps_total", "eps_spent", "eps_remaining",
                  "delta_total", "delta_spent", "delta_remaining", "refreshes_on", "accounting"])


class UnknownMemberError(SandboxError):
    code = "workspace.unknown_member"


def _ledger_kinds(state: Any) -> dict[str, str]:
    """Ledger name -> 'workspace' (provisioned by an operator) or 'ad-hoc' (CLI queries)."""
    return {name: "ad-hoc" if st == "ad-hoc" else "workspace"
            for name, st in state.con.execute("SELECT name, state FROM workspaces")}


def _known_ledger(state: Any, name: str) -> str:
    kinds = _ledger_kinds(state)
    if name not in kinds:
        raise WorkspaceNotFoundError(f"there is no workspace or ledger {name!r}",
                                     suggest(name, kinds, "workspaces and ledgers"))
    return kinds[name]


def _change_budget(c: Context, workspace: str, member: str, epsilon: float | None,
                   delta: float | None, add: bool, new_member: bool, hub_url: str | None,
                   hub_token_file: Path | None) -> None:
    """A provisioned workspace's budgets change only for its members and with the
    operator's hub token (no token, no change); an ad-hoc ledger's, for members it has
    seen unless ``new_member`` says the name is meant."""
    from ..ledger import SqliteLedger
    from ..workspaces import Workspaces

    with opened_state(c) as state:
        kind = _known_ledger(state, workspace)
        ledger = SqliteLedger.existing(state, workspace)
        if kind == "workspace":
            members = Workspaces(state).get(workspace).members
            if member not in members:
                raise UnknownMemberError(f"{member!r} is not a member of {workspace!r}",
                                         suggest(member, members, "members") + "; add them "
                                         "first with `sandbox workspace add-member`")
            actor = hub_operator(hub_url, hub_token_file)[1]
        else:
            seen = ledger.members()
            if member not in seen and not new_member:
                raise UnknownMemberError(
                    f"{member!r} has no budget or charges in {workspace!r}",
                    suggest(member, seen, "members") + "; add --new-member to grant a "
                    "budget to someone who has not asked yet")
            actor = current_actor()
        if add and delta is not None and ledger.balance(member).delta_total + delta >= 1:
            raise InputError("the delta total would reach 1 or more, which protects nothing",
                             "grant a small delta, e.g. --delta 1e-6")
        b = ledger.set_budget(member, epsilon=epsilon, delta=delta, add=add, actor=actor)
    verb = "granted more budget to" if add else "set the budget of"
    click.echo(f"{verb} {clean(member)} in {workspace}: epsilon total {b.epsilon_total:.4g} "
               f"(spent {b.epsilon_spent:.4g}, remaining {b.epsilon_remaining:.4g}), delta "
               f"total {b.delta_total:.3g}; recorded in the audit log")


def _change_options(fn: Any) -> Any:
    """--new-member and the hub options (the token a provisioned workspace needs)."""
    fn = click.option("--new-member", is_flag=True,
                      help="The member has not asked yet (an ad-hoc ledger only): grant "
                           "anyway.")(fn)
    return hub_url_option(hub_token_option(fn))


workspace_required = click.option("--workspace", required=True,
                                  help="Workspace of the member (see `sandbox budget show`).")


@budget.command("grant")
@workspace_required
@member_option(True, "Member who gets more budget.")
@click.option("--epsilon", type=float, required=True, help="Epsilon to add to the total.")
@click.option("--delta", type=float, default=None, help="Delta to add to the total (default: 0).")
@_change_options
@pass_ctx
def budget_grant(c: Context, workspace: str, member: str, epsilon: float,
                 delta: float | None, new_member: bool, hub_url: str | None,
                 hub_token_file: Path | None) -> None:
    """Add epsilon (and delta) to a member's budget; recorded in the audit log.

    A provisioned workspace needs the operator's hub token (--hub-token-file or
    $JUPYTERHUB_API_TOKEN) and one of its members."""
    _change_budget(c, workspace, member, epsilon, delta, True, new_member, hub_url,
                   hub_token_file)


@budget.command("set")
@workspace_required
@member_option(True, "Member whose budget is set.")
@click.option("--epsilon", type=float, default=None, help="New epsilon total.")
@click.option("--delta", type=float, default=None, help="New delta total (below 1).")
@_change_options
@pass_ctx
def budget_set(c: Context, workspace: str, member: str, epsilon: float | None,
               delta: float | None, new_member: bool, hub_url: str | None,
               hub_token_file: Path | None) -> None:
    """Set a member's epsilon and/or delta totals; recorded in the audit log.

    A provisioned workspace needs the operator's hub token (--hub-token-file or
    $JUPYTERHUB_API_TOKEN) and one of its members."""
    if epsilon is None and delta is None:
        raise InputError("nothing to set", "give --epsilon, --delta or both")
    _change_budget(c, workspace, member, epsilon, delta, False, new_member, hub_url,
                   hub_token_file)

