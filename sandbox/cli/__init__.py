"""The `sandbox` command: operator and auditor commands over one home directory.

This package holds only the root group, ``main``, and the registration of the command
groups. Each group lives in its own module and imports what it shares from
``sandbox.cli.common``, never from here: so nothing imports back into the package while
it is being set up.
"""

from __future__ import annotations

from pathlib import Path

import click

from .. import __version__
from ..errors import SandboxError
from ..settings import Paths
from . import (
    audit,
    budget,
    datasets,
    demo,
    exports,
    keys,
    query,
    scenarios,
    state,
    workspaces,
)
from .common import EXIT_ERROR, Context, SandboxGroup, echo_error, home_source

__all__ = ["main"]


@click.group(cls=SandboxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sandbox")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="State directory (catalog, vault). Default: $SANDBOX_HOME or "
                   "~/.local/share/sandbox.")
@click.option("--keystore", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Key store directory, outside the home. Default: $SANDBOX_KEYSTORE or "
                   "~/.config/sandbox/keystore.")
@click.pass_context
def main(ctx: click.Context, home: Path | None, keystore: Path | None) -> None:
    """Privacy-preserving data sandbox (数据沙箱): usable but invisible data (可用不可见)."""
    try:
        ctx.obj = Context(Paths.resolve(home, keystore), home_source(home))
    except SandboxError as exc:
        echo_error(exc)
        ctx.exit(EXIT_ERROR)


COMMANDS: tuple[click.Command, ...] = (
    keys.keys,
    datasets.dataset,
    query.policy,
    query.explain_cmd,
    query.query_cmd,
    demo.demo_data,
    demo.demo,
    budget.budget,
    audit.audit_group,
    scenarios.scenario,
    workspaces.workspace,
    exports.export_group,
    state.state_group,
)
for _command in COMMANDS:
    main.add_command(_command)
