"""`sandbox demo-data` and `sandbox demo`: the synthetic city, as files or encrypted."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError
from ..keys import FileKeyStore
from .common import Context, pass_ctx
from .datasets import dataset_list, ingest_progress, record_added


@click.command("demo-data")
@click.option("--size", type=click.Choice(["tiny", "small", "large"]), default="small",
              show_default=True,
              help="tiny: 2k persons; small: 100k; large: 2M persons and 10M loans.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for the plaintext Parquet files and their specs.")
@click.option("--seed", type=int, default=20261123, show_default=True,
              help="Random seed: the same seed gives byte-identical files.")
def demo_data(size: str, out: Path, seed: int) -> None:
    """Generate a deterministic synthetic city dataset (persons, loans, districts)."""
    from ..demo import generate

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {out}: {exc.strerror or exc}",
                         "choose a writable --out directory") from None
    paths = generate(out, size=size, seed=seed)
    for p in paths:
        click.echo(str(p))


@click.command("demo")
@click.option("--size", type=click.Choice(["tiny", "small", "large"]), default="small",
              show_default=True, help="Size of the synthetic data (see demo-data).")
@pass_ctx
def demo(c: Context, size: str) -> None:
    """Set up the demo: key store, synthetic data, encrypted ingest, catalog.

    The plaintext source is generated in a temporary directory and deleted after ingest:
    only encrypted files stay in the home.
    """
    import tempfile

    from ..demo import generate
    from ..ingest import ingest
    from ..spec import load_spec

    c.paths.ensure_home()
    kms = c.kms()
    if isinstance(kms, FileKeyStore) and not kms.path.exists():
        click.echo(f"created key store {c.paths.keystore}, master key {kms.init()}")
    catalog = c.catalog()
    missing = [n for n in ("districts", "persons", "loans") if n not in catalog.names()]
    if missing:
        with tempfile.TemporaryDirectory(prefix="sandbox-demo-") as tmp:
            source = Path(tmp)
            click.echo(f"generating {size} synthetic demo data")
            generate(source, size=size)
            for n in missing:
                with ingest_progress(f"ingesting {n}") as progress:
                    dv = ingest(catalog, kms, source / f"{n}.parquet",
                                load_spec(source / f"{n}.yaml"), progress)
                record_added(c, dv)
                click.echo(f"ingested {n}: {dv.row_count:,} rows (encrypted)")
    click.get_current_context().invoke(dataset_list, fmt="table")
    from ..demo import NEXT_STEPS

    click.echo(NEXT_STEPS)

