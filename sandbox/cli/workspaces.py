"""`sandbox workspace`: provision and manage workspaces.

They run on the service's host, as the service's user (they write the state database and
read the catalog), and every change needs the operator's JupyterHub token: it proves the
operator role (``custom:sandbox:admin``), names the actor in the audit log, and is what
changes the hub's users and groups. docs/workspaces.md explains the choice.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from ..hubsync import HubClient, sync
from ..scenarios import Scenarios
from ..settings import templates_dir
from ..workspaces import WorkspaceRecord, Workspaces
from .common import (
    Context,
    clean,
    emit,
    format_option,
    hub_operator,
    hub_token_option,
    hub_url_option,
    opened_state,
    pass_ctx,
)


def _members(text: str) -> list[str]:
    return [m for m in re.split(r"[,\s]+", text or "") if m]


@click.group()
def workspace() -> None:
    """Provision and manage workspaces: a reviewed scenario, members, budgets, an expiry."""


def _report(rec: WorkspaceRecord, verb: str) -> None:
    click.echo(f"{verb} workspace {rec.name}: {rec.effective_state()}, scenario "
               f"{rec.scenario} v{rec.scenario_version}, members "
               f"{', '.join(rec.members) or '-'}, expires {rec.expires}")
    if rec.hub_status == "failed":
        click.secho(f"warning: the hub is not in step: {clean(rec.hub_error)}", fg="yellow",
                    err=True)
        click.echo(f"hint: fix the hub, then run `sandbox workspace sync {rec.name}`", err=True)
        click.get_current_context().exit(2)


def _mirror(c: Context, hub: HubClient, actor: str, name: str,
            stop: tuple[str, ...] = ()) -> WorkspaceRecord:
    with opened_state(c) as state:
        return sync(Workspaces(state), hub, name, actor, stop)


def provision_templates(c: Context, rec: WorkspaceRecord, policy_text: str) -> list[Path]:
    """The scenario's walk-through, set to this workspace, where the hub copies it from
    (``$SANDBOX_HOME/templates/<workspace>/``) into each member's home at server start."""
    import yaml

    doc = yaml.safe_load(policy_text) or {}
    scenario_id = str(doc.get("id", rec.scenario)) if isinstance(doc, dict) else rec.scenario
    src = templates_dir() / "scenarios" / f"{scenario_id}.ipynb"
    if not src.is_file():
        click.echo(f"note: no walk-through {src} for this scenario; members get the common "
                   "templates only (set SANDBOX_TEMPLATES to the templates directory)", err=True)
        return []
    out = c.paths.home / "templates" / rec.name
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = src.read_text(encoding="utf-8").replace("__WORKSPACE__", rec.name)
    dest = out / f"{rec.name}.ipynb"
    dest.write_text(text, encoding="utf-8")
    return [dest]


@workspace.command("create")
@click.argument("name")
@click.option("--scenario", "scenario_id", required=True, help="Approved scenario id.")
@click.option("--scenario-version", type=int, default=None,
              help="Approved version (default: the newest).")
@click.option("--members", required=True, help="Comma-separated hub user names.")
@click.option("--budget-epsilon", type=float, required=True, help="Epsilon budget per member.")
@click.option("--budget-delta", type=float, default=None,
              help="Delta budget per member (default: the scenario's).")
@click.option("--expires", required=True, help="Last day of use, YYYY-MM-DD (UTC).")
@hub_url_option
@hub_token_option
@pass_ctx
def workspace_create(c: Context, name: str, scenario_id: str, scenario_version: int | None,
                     members: str, budget_epsilon: float, budget_delta: float | None,
                     expires: str, hub_url: str | None, hub_token_file: Path | None) -> None:
    """Record a workspace, then create its hub group and any missing hub users."""
    hub, actor = hub_operator(hub_url, hub_token_file)
    with opened_state(c) as state:
        rec = Workspaces(state).create(name, scenario=scenario_id, version=scenario_version,
                                       members=_members(members), epsilon=budget_epsilon,
                                       delta=budget_delta, expires=expires, actor=actor)
        sv = Scenarios(state).get(rec.scenario, rec.scenario_version)
    provision_templates(c, rec, sv.text)
    _report(_mirror(c, hub, actor, name), "created")


@workspace.command("sync")
@click.argument("name")
@hub_url_option
@hub_token_option
@pass_ctx
def workspace_sync(c: Context, name: str, hub_url: str | None,
                   hub_token_file: Path | None) -> None:
    """Mirror the records into the hub again (after a hub failure)."""
    hub, actor = hub_operator(hub_url, hub_token_file)
    _report(_mirror(c, hub, actor, name), "synced")


def _row(rec: WorkspaceRecord) -> dict[str, Any]:
    d = rec.to_dict()
    return {**d, "members": ", ".join(rec.members), "scenario":
            f"{rec.scenario} v{rec.scenario_version}", "hub": rec.hub_status or "-",
            "epsilon": rec.epsilon}


@workspace.command("list")
@format_option
@pass_ctx
def workspace_list(c: Context, fmt: str) -> None:
    """Every workspace with its state, scenario, expiry and members."""
    with opened_state(c) as state:
        recs = Workspaces(state).all()
    if fmt == "json":
        click.echo(json.dumps([r.to_dict() for r in recs], ensure_ascii=False, indent=2))
    else:
        emit([_row(r) for r in recs],
              ["name", "state", "scenario", "expires", "epsilon", "hub", "members"], fmt)


@workspace.command("show")
@click.argument("name")
@format_option
@pass_ctx
def workspace_show(c: Context, name: str, fmt: str) -> None:
    """State, scenario, hub status, and each member's budget spent and remaining."""
    with opened_state(c) as state:
        store = Workspaces(state)
        rec = store.get(name)
        ledger = store.ledger(rec)
        budgets = {m: ledger.balance(m).to_dict() for m in rec.members}
        former = [m for m in ledger.members() if m not in rec.members]
        sv = Scenarios(state).get(rec.scenario, rec.scenario_version)
    doc = {**rec.to_dict(), "scenario_file": sv.file_status(), "budgets": budgets,
           "former_members": former}
    if fmt == "json":
        click.echo(json.dumps(doc, ensure_ascii=False, indent=2))
        return
    click.echo(f"workspace {rec.name}: {doc['state']}")
    click.echo(f"  scenario   {rec.scenario} version {rec.scenario_version} "
               f"({sv.title}); file: {sv.file_status()}")
    click.echo(f"  expires    {rec.expires} (end of day, UTC)")
    click.echo(f"  created    {rec.created}")
    hub = rec.hub_status or "-"
    if rec.hub_status == "failed":
        hub += f": {clean(rec.hub_error)} (run `sandbox workspace sync {rec.name}`)"
    elif rec.hub_status == "pending":
        hub += " (records changed; the hub has not been updated yet: `sandbox workspace sync`)"
    click.echo(f"  hub        {hub}")
    click.echo("  members    epsilon spent / total (remaining), delta total")
    for m, b in budgets.items():
        click.echo(f"    {m:<12} {b['epsilon_spent']:.4g} / {b['epsilon_total']:.4g} "
                   f"({b['epsilon_remaining']:.4g}), {b['delta_total']:.3g}")
    if former:
        click.echo(f"  former members (their charges stay): {', '.join(former)}")


def _simple(command: str, help_text: str, action: str, verb: str,
            extra: list[Any] | None = None) -> None:
    """Register a `workspace <command> NAME` that changes the records, then the hub."""

    @click.argument("name")
    @hub_url_option
    @hub_token_option
    @pass_ctx
    def cmd(c: Context, /, name: str, hub_url: str | None, hub_token_file: Path | None,
            **kwargs: Any) -> None:
        hub, actor = hub_operator(hub_url, hub_token_file)
        with opened_state(c) as state:
            getattr(Workspaces(state), action)(name, actor=actor, **kwargs)
        _report(_mirror(c, hub, actor, name), verb)

    cmd.__doc__ = help_text
    for option in reversed(extra or []):
        cmd = option(cmd)
    workspace.command(command)(cmd)


_simple("suspend", "Refuse every query until `resume` (servers keep running).", "suspend",
        "suspended", extra=[click.option("--reason", default="", help="Why (recorded).")])
_simple("resume", "Answer queries again after `suspend`.", "resume", "resumed")
_simple("close", "Refuse every query for good, freeze the ledger, stop the servers of members "
        "with no other open workspace. Nothing is deleted from the audit log.", "close",
        "closed")
_simple("extend", "Move the expiry to another day.", "extend", "extended",
        extra=[click.option("--expires", required=True, help="New last day, YYYY-MM-DD.")])
_simple("upgrade", "Serve another approved version of the scenario (after a re-review).",
        "upgrade", "upgraded", extra=[click.option("--version", type=int, default=None,
                                                    help="Version (default: newest).")])


def _member_command(command: str, help_text: str, action: str, verb: str,
                    stop: bool = False) -> None:
    @click.argument("name")
    @click.argument("member")
    @hub_url_option
    @hub_token_option
    @pass_ctx
    def cmd(c: Context, name: str, member: str, hub_url: str | None,
            hub_token_file: Path | None) -> None:
        hub, actor = hub_operator(hub_url, hub_token_file)
        with opened_state(c) as state:
            getattr(Workspaces(state), action)(name, member, actor=actor)
        _report(_mirror(c, hub, actor, name, (member,) if stop else ()), verb)

    cmd.__doc__ = help_text
    workspace.command(command)(cmd)


_member_command("add-member", "Add MEMBER (a hub user, created if missing).", "add_member",
                "updated")
_member_command("remove-member", "Remove MEMBER: their next query is refused; their server is "
                "stopped if they have no other open workspace.", "remove_member", "updated",
                stop=True)


@workspace.command("set-budget")
@click.argument("name")
@click.argument("member")
@click.option("--epsilon", type=float, default=None, help="New epsilon total.")
@click.option("--delta", type=float, default=None, help="New delta total (below 1).")
@hub_url_option
@hub_token_option
@pass_ctx
def workspace_set_budget(c: Context, name: str, member: str, epsilon: float | None,
                         delta: float | None, hub_url: str | None,
                         hub_token_file: Path | None) -> None:
    """Set one member's budget totals (spent stays as it is)."""
    _hub, actor = hub_operator(hub_url, hub_token_file)
    with opened_state(c) as state:
        store = Workspaces(state)
        rec = store.set_budget(name, member, epsilon=epsilon, delta=delta, actor=actor)
        b = store.ledger(rec).balance(member)
    click.echo(f"set the budget of {member} in {name}: epsilon total {b.epsilon_total:.4g} "
               f"(spent {b.epsilon_spent:.4g}, remaining {b.epsilon_remaining:.4g}), delta "
               f"total {b.delta_total:.3g}; recorded in the audit log")
