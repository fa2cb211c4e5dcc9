"""`sandbox state`: where the state database is, and moving it from SQLite to PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError
from .common import Context, pass_ctx


@click.group("state")
def state_group() -> None:
    """The state database (ledger, audit log, workspaces): SQLite or PostgreSQL."""


@state_group.command("migrate")
@click.option("--to", "target", required=True, metavar="URL",
              help="The PostgreSQL database to copy into (postgresql://USER@HOST:PORT/DB; "
                   "give the password by PGPASSWORD or ~/.pgpass, not in the URL). It must "
                   "be empty.")
@click.option("--from", "source", default=None, type=click.Path(dir_okay=False,
                                                                path_type=Path),
              help="The SQLite state file to copy (default: this home's, or SANDBOX_STATE).")
@pass_ctx
def state_migrate(c: Context, target: str, source: Path | None) -> None:
    """Copy a SQLite state into an empty PostgreSQL database and verify its audit log.

    Stop the service first (writes made during the copy would not be copied). Nothing is
    kept unless the copy's audit log verifies with the source's records and root hash;
    the SQLite file is left as it was. Then point every replica and command at the URL
    (SANDBOX_STATE, or state: in the service configuration).
    """
    from ..state import State
    from ..state_copy import copy_state
    from ..statedb import describe, is_url

    if not is_url(target):
        raise InputError(f"--to {target!r} is not a postgresql:// URL",
                         "e.g. --to postgresql://sandbox@db.internal:5432/sandbox")
    src = source if source is not None else c.paths.state_db
    if is_url(src):
        raise InputError(f"the state is already in PostgreSQL ({describe(src)})",
                         "give the SQLite file to copy with --from FILE")
    if not Path(src).is_file():
        raise InputError(f"there is no SQLite state at {src}",
                         "give the file to copy with --from FILE")
    signer = c.kms().audit_signing_key()
    source_state = State(src, signer)
    try:
        target_state = State(target, signer)
        try:
            report = copy_state(source_state, target_state)
        finally:
            target_state.close()
    finally:
        source_state.close()
    click.echo(f"copied {src} to {describe(target)}:")
    for table, n in report.rows.items():
        if n:
            click.echo(f"  {table:<18} {n:>10,} rows")
    click.echo(f"audit log:           {report.target.records:,} records, "
               f"{report.target.checkpoints} checkpoints checked")
    click.echo(f"root hash:           {report.target.root_hash}")
    click.echo("ok: verified on both sides")
    click.echo(f"next: set SANDBOX_STATE={describe(target)} (or state: in the service "
               "configuration) for every replica and command")
