"""`sandbox dataset`: encrypted datasets and their catalog (数据目录)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ..errors import ConfirmationRequiredError, VerifyFailedError
from .common import Context, emit, format_option, pass_ctx, print_table, record_action


@click.group()
def dataset() -> None:
    """Encrypted datasets and their catalog (数据目录)."""


@contextmanager
def ingest_progress(label: str) -> Iterator[Callable[[int], None]]:
    """A row-count callback for ingest: rows and rate on a terminal, silent when piped."""
    started = time.monotonic()
    shown = [0.0]

    def update(rows: int) -> None:
        now = time.monotonic()
        if sys.stderr.isatty() and now - shown[0] > 0.2:
            shown[0] = now
            rate = rows / max(now - started, 1e-9)
            click.echo(f"\r{label}: {rows:,} rows ({rate:,.0f} rows/s)", err=True, nl=False)

    yield update
    if sys.stderr.isatty():
        click.echo("", err=True)


@dataset.command("add")
@click.argument("name")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--spec", "spec_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="YAML spec classifying every column (see docs/dataset-spec.md).")
@pass_ctx
def dataset_add(c: Context, name: str, path: Path, spec_path: Path) -> None:
    """Encrypt a CSV or Parquet file and register it as NAME (re-adding makes a new version)."""
    from ..ingest import ingest
    from ..spec import load_spec, validate_name

    validate_name(name)
    spec = load_spec(spec_path, name_override=name)
    catalog, kms = c.catalog(), c.kms()
    with ingest_progress(f"ingesting {name}") as progress:
        dv = ingest(catalog, kms, path, spec, progress)
    record_added(c, dv)
    click.echo(f"added {dv.name} version {dv.version}: {dv.row_count:,} rows, "
               f"{len(dv.spec.identifier_columns)} identifier column(s) under their own key")


def record_added(c: Context, dv: Any) -> None:
    """Audit a dataset version just added (by `dataset add` or `demo`)."""
    record_action(c, "dataset.added", dataset=dv.name, version=dv.version, rows=dv.row_count,
           sha256=dv.files[0].sha256 if dv.files else None)


@dataset.command("list")
@format_option
@pass_ctx
def dataset_list(c: Context, fmt: str) -> None:
    """List datasets (latest version of each)."""
    catalog = c.catalog()
    rows = []
    for name in catalog.names():
        dv = catalog.get(name)
        rows.append({"name": name, "version": dv.version, "rows": dv.row_count,
                     "columns": len(dv.spec.columns), "public": dv.spec.public,
                     "title": dv.spec.title, "owner": dv.spec.owner})
    emit(rows, ["name", "version", "rows", "columns", "public", "title", "owner"], fmt)
    if not rows:
        click.echo(f"no datasets in {c.home_note()}", err=True)


@dataset.command("show")
@click.argument("name")
@click.option("--version", "version", type=click.IntRange(min=1), default=None,
              help="Version to show (default: latest).")
@format_option
@pass_ctx
def dataset_show(c: Context, name: str, version: int | None, fmt: str) -> None:
    """Show a dataset's metadata, files and column classification."""
    dv = c.catalog().get(name, version)
    if fmt == "json":
        click.echo(json.dumps(dv.to_dict(), ensure_ascii=False, indent=2))
        return
    d = dv.to_dict()
    for key in ("name", "version", "title", "description", "owner", "source", "public",
                "row_count", "created_at"):
        click.echo(f"{key + ':':<12} {d[key]}")
    click.echo("files:")
    for f in dv.files:
        click.echo(f"  {f.file_name}  {f.size:,} bytes  {f.rows:,} rows  sha256 {f.sha256}")
    click.echo("columns:")
    print_table([c.__dict__ for c in dv.spec.columns],
                 ["name", "type", "role", "grade", "description"])


@dataset.command("verify")
@click.argument("name", required=False)
@click.option("--version", "version", type=click.IntRange(min=1), default=None,
              help="Verify only this version (default: every version).")
@pass_ctx
def dataset_verify(c: Context, name: str | None, version: int | None) -> None:
    """Check every file's SHA-256 and decrypt every page; non-zero exit on any problem."""
    from ..ingest import gc_orphans
    from ..operations import verify_dataset

    catalog, kms = c.catalog(), c.kms()
    kms.active_key_id()  # a key store that cannot be used is its own error, not the data's
    targets = [catalog.get(name, version)] if name else catalog.all_versions()
    bad = key_only = 0
    for dv in targets:
        result = verify_dataset(catalog, kms, dv)
        status = "ok" if result.ok else "FAILED"
        click.echo(f"{dv.name}@{dv.version}: {status}")
        for p in result.problems:
            click.echo(f"  - {p}")
        bad += not result.ok
        key_only += not result.ok and result.key_problems == len(result.problems)
    if not name:
        for orphan in gc_orphans(catalog):
            click.echo(f"removed leftover of an interrupted ingest: {orphan}")
    if bad:
        if key_only == bad:
            hint = ("the files are intact but their master key is destroyed or not in this key "
                    f"store ({c.paths.keystore}): check SANDBOX_KEYSTORE or --keystore; data "
                    "under a destroyed key cannot be recovered: ingest it again from its source")
        else:
            hint = "restore the named files from a backup or ingest the dataset again"
        raise VerifyFailedError(f"{bad} dataset version(s) failed verification", hint)


@dataset.command("remove")
@click.argument("name")
@click.option("--version", "version", type=click.IntRange(min=1), default=None,
              help="Remove only this version (default: all versions).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def dataset_remove(c: Context, name: str, version: int | None, yes: bool) -> None:
    """Remove a dataset (or one version) from the catalog and delete its encrypted files."""
    from ..operations import remove_dataset

    catalog = c.catalog()
    catalog.get(name, version)
    what = f"{name} version {version}" if version else f"every version of {name}"
    if not yes:
        if not sys.stdin.isatty():
            raise ConfirmationRequiredError(
                f"removing {what} needs confirmation, and there is no terminal to ask on",
                f"to remove it from a script, pass --yes: sandbox dataset remove {name}"
                + (f" --version {version}" if version else "") + " --yes")
        try:
            confirmed = click.confirm(f"remove {what}?", default=False)
        except click.Abort:  # Ctrl-D or Ctrl-C at the prompt
            confirmed = False
        if not confirmed:
            raise ConfirmationRequiredError(f"nothing removed: removing {what} was not "
                                            "confirmed", "answer y, or pass --yes")
    removed = remove_dataset(catalog, name, version)
    record_action(c, "dataset.removed", dataset=name, versions=removed)
    click.echo(f"removed {name} version(s) {', '.join(map(str, removed))}")
