"""Shared fixtures: isolated state directories, keys, catalog, tiny demo data, a locked engine.

Function-scoped fixtures (``paths``, ``keystore``, ``catalog``, ``ingest_demo``) give each
test its own home and key store; the environment is cleaned so a developer's own
``SANDBOX_*`` variables never leak in. Session-scoped fixtures (``demo_dir``,
``demo_tables``, ``tiny_vault``, ``engine``) are built once and must be treated as
read-only by the tests that use them.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sandbox.catalog import Catalog, DatasetVersion
from sandbox.demo import generate
from sandbox.engine import Engine
from sandbox.ingest import ingest
from sandbox.keys import FileKeyStore
from sandbox.settings import Paths
from sandbox.spec import load_spec

DEMO_DATASETS = ("persons", "loans", "districts")
ENV_VARS = (
    "SANDBOX_HOME",
    "SANDBOX_KEYSTORE",
    "SANDBOX_MASTER_KEY",
    "SANDBOX_MASTER_KEY_FILE",
    "SANDBOX_DEBUG",
    "SANDBOX_STATE",
    "SANDBOX_COOKIE_SECRET",
)


@pytest.fixture
def paths(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    """A fresh home and a separate key store directory (not created yet), set in the env."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    keystore = tmp_path / "keystore"
    monkeypatch.setenv("SANDBOX_HOME", str(home))
    monkeypatch.setenv("SANDBOX_KEYSTORE", str(keystore))
    return Paths.resolve()


@pytest.fixture
def keystore(paths: Paths) -> FileKeyStore:
    """An initialised file key store with one active master key."""
    ks = FileKeyStore(paths.keystore)
    ks.init()
    return ks


@pytest.fixture
def catalog(paths: Paths) -> Iterator[Catalog]:
    """The catalog of this test's home (the home is created)."""
    paths.ensure_home()
    cat = Catalog(paths.catalog_db, paths.vault_dir)
    yield cat
    cat.close()


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Tiny synthetic demo data (plaintext Parquet + YAML specs), generated once."""
    out = tmp_path_factory.mktemp("demo-tiny")
    generate(out, size="tiny")
    return out


@pytest.fixture(scope="session")
def demo_tables(demo_dir: pathlib.Path) -> dict[str, pa.Table]:
    """The plaintext demo sources, to compare decrypted or queried data against."""
    return {n: pq.read_table(demo_dir / f"{n}.parquet") for n in DEMO_DATASETS}


IngestDemo = Callable[..., dict[str, DatasetVersion]]


def _ingest_demo(
    catalog: Catalog,
    kms: FileKeyStore,
    demo_dir: pathlib.Path,
    names: tuple[str, ...],
    **kwargs: object,
) -> dict[str, DatasetVersion]:
    return {
        n: ingest(
            catalog, kms, demo_dir / f"{n}.parquet", load_spec(demo_dir / f"{n}.yaml"), **kwargs
        )
        for n in names
    }


@pytest.fixture
def ingest_demo(catalog: Catalog, keystore: FileKeyStore, demo_dir: pathlib.Path) -> IngestDemo:
    """``ingest_demo("persons", ...)`` encrypts demo datasets into this test's home.

    Keyword arguments go to ``sandbox.ingest.ingest`` (e.g. ``row_group_size``).
    With no names, all three demo datasets are ingested.
    """

    def run(*names: str, **kwargs: object) -> dict[str, DatasetVersion]:
        return _ingest_demo(catalog, keystore, demo_dir, names or DEMO_DATASETS, **kwargs)

    return run


@dataclass(frozen=True)
class Vault:
    """A home with all tiny demo datasets ingested (session-wide, read-only)."""

    paths: Paths
    kms: FileKeyStore
    catalog: Catalog
    versions: dict[str, DatasetVersion]

    def file_path(self, name: str, index: int = 0) -> pathlib.Path:
        dv = self.versions[name]
        return self.catalog.storage_dir(dv.name, dv.storage_id) / dv.files[index].file_name


def make_vault(base: pathlib.Path, demo_dir: pathlib.Path) -> Vault:
    """A new home and key store under ``base`` with every tiny demo dataset ingested (the
    caller closes ``vault.catalog``)."""
    paths = Paths.resolve(base / "home", base / "keystore")
    paths.ensure_home()
    kms = FileKeyStore(paths.keystore)
    kms.init()
    cat = Catalog(paths.catalog_db, paths.vault_dir)
    return Vault(paths, kms, cat, _ingest_demo(cat, kms, demo_dir, DEMO_DATASETS))


@pytest.fixture(scope="session")
def tiny_vault(tmp_path_factory: pytest.TempPathFactory, demo_dir: pathlib.Path) -> Iterator[Vault]:
    vault = make_vault(tmp_path_factory.mktemp("vault"), demo_dir)
    yield vault
    vault.catalog.close()


def make_engine(vault: Vault) -> Engine:
    """A locked engine with persons, loans and districts (latest versions) loaded."""
    return Engine.from_catalog(
        vault.catalog,
        vault.kms,
        [(n, None) for n in DEMO_DATASETS],
        memory_limit="1GB",
        threads=2,
    )


def engine_table_names(eng: Engine) -> dict[str, str]:
    """Dataset name -> the engine's table name for it (e.g. ``persons`` -> ``persons_v1``)."""
    return {t.dataset: t.name for t in eng.tables.values()}


@pytest.fixture(scope="session")
def engine(tiny_vault: Vault) -> Engine:
    """A locked engine over the tiny demo data, shared by the session: only run SELECTs."""
    return make_engine(tiny_vault)


@pytest.fixture(scope="session")
def tables(engine: Engine) -> dict[str, str]:
    """Dataset name -> engine table name in the ``engine`` (and ``fresh_engine``) fixtures."""
    return engine_table_names(engine)


@pytest.fixture
def fresh_engine(tiny_vault: Vault) -> Iterator[Engine]:
    """A locked engine of this test's own, for tests that poke at its raw connection."""
    eng = make_engine(tiny_vault)
    yield eng
    eng._con.close()


@pytest.fixture
def cli_env(paths: Paths) -> dict[str, str]:
    """Environment for running the real ``sandbox`` command on this test's home and key store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    env.update(SANDBOX_HOME=str(paths.home), SANDBOX_KEYSTORE=str(paths.keystore))
    return env


# A real PostgreSQL server for the state database's second back end (tests/pgkit.py).
from pgkit import pg_server, pg_url, state_location  # noqa: E402, F401
