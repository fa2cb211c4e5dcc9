"""`sandbox export`: the auditor's review queue, decisions, and bundle verification.

Decisions run like the operator's commands (docs/workspaces.md): on the service's host as
its user, with the auditor's own hub token, which must carry ``custom:sandbox:review`` and
names the reviewer. `sandbox export verify` needs neither: anyone can check a bundle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import InputError
from ..hubsync import REVIEW_SCOPE, HubClient, operator

if TYPE_CHECKING:
    from ..exports import ExportStore
    from ..state import State

from .common import (
    Context,
    clean,
    emit,
    format_option,
    hub_token_option,
    hub_url_option,
    opened_state,
    pass_ctx,
)


@click.group("export")
def export_group() -> None:
    """Review export requests (the only way results leave) and verify signed bundles."""


def _store(state: State) -> ExportStore:
    from ..exports import ExportStore

    return ExportStore(state)


def _reviewer(hub_url: str | None, token_file: Path | None) -> str:
    return operator(HubClient.from_env(hub_url, token_file), REVIEW_SCOPE)


@export_group.command("list")
@click.option("--workspace", default=None, help="Only this workspace.")
@click.option("--state", "states", multiple=True,
              help="Only these states (repeatable), e.g. --state checked for the queue.")
@format_option
@pass_ctx
def export_list(c: Context, workspace: str | None, states: tuple[str, ...], fmt: str) -> None:
    """Export requests, newest first, with their check outcome and approvals."""
    from ..exports.store import FLAGGED

    with opened_state(c) as state:
        reqs = _store(state).list(workspace=workspace, states=list(states) or None)
    rows = [{"id": r.id, "workspace": r.workspace, "requester": r.requester,
             "title": clean(r.title, 40), "state": r.state,
             "checks": r.report.outcome if r.report else "-",
             "flagged": FLAGGED if r.flagged else "",
             "approvals": f"{len(r.approvals)}/{r.approvals_required}",
             "updated": r.updated[:19]} for r in reqs]
    emit(rows, ["id", "workspace", "requester", "title", "state", "checks", "flagged",
                 "approvals", "updated"], fmt)


@export_group.command("show")
@click.argument("export_id")
@format_option
@pass_ctx
def export_show(c: Context, export_id: str, fmt: str) -> None:
    """One request as a reviewer sees it: items, every check result, decisions."""
    with opened_state(c) as state:
        doc = _store(state).get(export_id).to_dict("reviewer")
    if fmt == "json":
        click.echo(json.dumps(doc, ensure_ascii=False, indent=2, default=str))
        return
    click.echo(f"export {doc['id']}: {doc['state']} (revision {doc['revision']})")
    click.echo(f"  workspace  {doc['workspace']}   requester {doc['requester']}")
    click.echo(f"  title      {clean(doc['title'])}")
    click.echo(f"  purpose    {clean(doc['purpose'])}")
    click.echo(f"  approvals  {', '.join(doc['approvals']) or '-'} "
               f"({len(doc['approvals'])}/{doc['approvals_required']})")
    for it in doc["items"]:
        click.echo(f"  item       {clean(it['name'])} ({it['media_type']}, {it['size']} bytes"
                   + ("" if it["kept"] else "; content not kept") + ")")
    flag = doc.get("flagged")
    if flag:
        from ..exports.store import FLAGGED

        click.echo(f"  flagged    {FLAGGED}: {flag['strong']} place(s) matched, "
                   f"{flag['weak']} name(s) in running text"
                   + ("; it can only be rejected (do not tell the requester why)"
                      if flag["strong"] else ""))
    checks = doc.get("checks") or {}
    click.echo(f"  checks     {checks.get('outcome', '-')} (rules {checks.get('rules_version')})")
    for r in checks.get("results", []):
        click.echo(f"    {r['outcome']:<7} {r['rule']}: {clean(r.get('message', ''))}")
    for e in doc["events"]:
        click.echo(f"  {e['time'][:19]} {e['event']} by {e['actor']}"
                   + (f": {clean(e['comment'])}" if e.get("comment") else ""))


def _decision(command: str, decision: str, help_text: str, comment_required: bool) -> None:
    @click.argument("export_id")
    @click.option("--comment", default="", required=comment_required,
                  help="What the requester is told (required unless approving).")
    @hub_url_option
    @hub_token_option
    @pass_ctx
    def cmd(c: Context, export_id: str, comment: str, hub_url: str | None,
            hub_token_file: Path | None) -> None:
        reviewer = _reviewer(hub_url, hub_token_file)
        with opened_state(c) as state:
            req = _store(state).review(export_id, reviewer, decision, comment)
        click.echo(f"export {req.id}: {req.state} ({len(req.approvals)}/"
                   f"{req.approvals_required} approvals); recorded in the audit log")

    cmd.__doc__ = help_text
    export_group.command(command)(cmd)


_decision("approve", "approve", "Approve a checked request; released (signed bundle) once "
          "the approvals the policy asks for are in. Never your own request.", False)
_decision("reject", "reject", "Reject a checked request (with --comment).", True)
_decision("return", "return", "Return a checked request to its requester for changes "
          "(with --comment).", True)


@export_group.command("revoke")
@click.argument("export_id")
@click.option("--comment", required=True, help="Why; shown to the requester.")
@hub_url_option
@hub_token_option
@pass_ctx
def export_revoke(c: Context, export_id: str, comment: str, hub_url: str | None,
                  hub_token_file: Path | None) -> None:
    """Revoke a released export: logged and shown to the requester; no more downloads."""
    reviewer = _reviewer(hub_url, hub_token_file)
    with opened_state(c) as state:
        req = _store(state).revoke(export_id, reviewer, comment)
    click.echo(f"export {req.id}: {req.state}; recorded in the audit log")


@export_group.command("verify")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--public-key", default=None, metavar="HEX",
              help="The audit log's public key to trust (`sandbox audit verify` prints it); "
                   "default: the key the bundle names.")
@format_option
def export_verify(bundle: Path, public_key: str | None, fmt: str) -> None:
    """Check a bundle's signature, every file's hash and its audit-log inclusion proof."""
    from ..exports import verify_bundle

    if not bundle.is_file():
        raise InputError(f"bundle file {bundle} not found", "give the path of the .zip")
    report = verify_bundle(bundle, public_key)
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), indent=2))
    elif report.ok:
        click.echo(f"OK: export {report.export_id}, {len(report.files)} file(s), signed by "
                   f"{report.signing_key}, release record #{report.record_seq} in the log")
    else:
        click.secho(f"FAILED: {bundle}", fg="red", err=True)
        for problem in report.problems:
            click.echo(f"  - {problem}", err=True)
    if not report.ok:
        click.get_current_context().exit(2)
