"""`sandbox scenario`: review scenario policies once (一类场景一审定).

Runs on the service's host as its user; a review needs the operator's hub token
(docs/workspaces.md).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click

from ..grading import DEFAULT_RULES, grade, load_rules
from ..policy import PolicyError, load_policy
from ..scenarios import Scenarios
from ..workspaces import Workspaces
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
from .query import echo_warnings


@click.group()
def scenario() -> None:
    """Review scenario policies once (一类场景一审定); workspaces then use approved versions."""


@scenario.command("review")
@click.argument("policy_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--reviewer", required=True, help="Who reviewed the policy (person or board).")
@click.option("--reference", required=True, help="Reference of the review document.")
@click.option("--accept-core", "accept_core", multiple=True, metavar="TABLE.COLUMN",
              help="Accept that the policy exposes this core column (核心数据); every core "
                   "column must be named. Repeat for each.")
@hub_url_option
@hub_token_option
@pass_ctx
def scenario_review(c: Context, policy_file: Path, reviewer: str, reference: str,
                    accept_core: tuple[str, ...], hub_url: str | None,
                    hub_token_file: Path | None) -> None:
    """Check POLICY_FILE against the catalog and store it as the next approved version.

    The grades of the columns it exposes must allow it: each core column accepted with
    --accept-core, and the floors of every grade it exposes met (per-query epsilon ceiling,
    export minimum group count and approvals; stricter ones in $SANDBOX_HOME/grading.yaml).
    """
    _hub, actor = hub_operator(hub_url, hub_token_file)
    catalog = c.catalog()
    try:
        with contextlib.suppress(PolicyError):  # the review itself names every problem
            pol = load_policy(policy_file, catalog.resolve)
            echo_warnings(pol, c)
            _echo_grades(grade(pol, catalog.resolve, DEFAULT_RULES).by_grade())
        with opened_state(c) as state:
            sv, stored = Scenarios(state).review(
                policy_file, catalog.resolve, reviewer=reviewer, reference=reference,
                actor=actor, accept_core=accept_core,
                rules=load_rules(c.paths.home / "grading.yaml"))
    finally:
        catalog.close()
    if not stored:
        click.echo(f"unchanged: {policy_file} is {sv.id} version {sv.version}, approved "
                   f"{sv.reviewed} by {clean(sv.reviewer)} ({clean(sv.reference)})")
        return
    click.echo(f"approved {sv.id} version {sv.version} (sha256 {sv.content_hash[:16]}…, "
               f"datasets {', '.join(f'{k} v{v}' for k, v in sv.datasets.items())}); "
               f"recorded in the audit log as #{sv.seq}")


def _echo_grades(by_grade: dict[str, list[str]], indent: str = "") -> None:
    """The columns a policy exposes, by grade (数据分类分级), for the reviewer to see."""
    for g in ("core", "important", "general"):
        if by_grade.get(g):
            click.echo(f"{indent}{g + ' columns':<17} {', '.join(by_grade[g])}", err=not indent)


@scenario.command("list")
@format_option
@pass_ctx
def scenario_list(c: Context, fmt: str) -> None:
    """Approved scenarios, newest version of each, and whether their file changed."""
    with opened_state(c) as state:
        store = Scenarios(state)
        rows = [store.get(i).to_dict() for i in store.ids()]
    emit(rows, ["id", "version", "title", "reviewer", "reference", "reviewed", "file"], fmt)


@scenario.command("show")
@click.argument("scenario_id")
@click.option("--version", type=int, default=None, help="A version (default: every version).")
@format_option
@pass_ctx
def scenario_show(c: Context, scenario_id: str, version: int | None, fmt: str) -> None:
    """Every approved version of a scenario (or one) and the workspaces using each."""
    with opened_state(c) as state:
        store = Scenarios(state)
        store.get(scenario_id, version)  # a clear error for an unknown id or version
        versions = [v for v in store.versions(scenario_id)
                    if version is None or v.version == version]
        using = Workspaces(state).all()
        rows = []
        for v in versions:
            d = v.to_dict()
            d["grades"], d["accepted_core"] = store.grading(v)
            d["workspaces"] = [w.name for w in using
                               if w.scenario == v.id and w.scenario_version == v.version]
            rows.append(d)
    if fmt == "json":
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for d in rows:
        click.echo(f"{d['id']} version {d['version']}: {clean(d['title'])}")
        for key in ("content_hash", "reviewer", "reference", "reviewed", "source", "file"):
            click.echo(f"  {key:<13} {clean(d[key])}")
        click.echo(f"  {'datasets':<13} "
                   + ", ".join(f"{k} v{n}" for k, n in d["datasets"].items()))
        click.echo(f"  {'workspaces':<13} {', '.join(d['workspaces']) or '-'}")
        for g in ("core", "important", "general"):
            if d["grades"].get(g):
                click.echo(f"  {g:<13} {', '.join(d['grades'][g])}")
        if d["grades"]:
            click.echo(f"  {'core accepted':<13} {', '.join(d['accepted_core']) or '-'}")

