"""Shared helpers for the benchmarks (not tests: they print figures)."""

from __future__ import annotations

import hashlib
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


def demo_data(size: str) -> Path:
    """Generate (once per version of the generator) the demo data of ``size`` under
    bench/out/: a change to sandbox/demo.py (its data or its specs) makes it again."""
    path = OUT / f"demo-{size}"
    made_by = hashlib.sha256((ROOT / "sandbox" / "demo.py").read_bytes()).hexdigest()
    stamp = path / ".generator-sha256"
    if not (path / "loans.parquet").exists() or not stamp.exists() or \
            stamp.read_text() != made_by:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "sandbox.cli", "demo-data", "--size", size,
                        "--out", str(path)], check=True, stdout=subprocess.DEVNULL)
        stamp.write_text(made_by)
    return path


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def demo_vault(tmp: Path, data: Path):  # type: ignore[no-untyped-def]
    """A fresh home and key store under ``tmp`` with the demo data of ``data`` ingested."""
    from sandbox.catalog import Catalog
    from sandbox.ingest import ingest
    from sandbox.keys import FileKeyStore
    from sandbox.settings import Paths
    from sandbox.spec import load_spec

    paths = Paths.resolve(tmp / "home", tmp / "keys")
    paths.ensure_home()
    kms = FileKeyStore(paths.keystore)
    kms.init()
    catalog = Catalog(paths.catalog_db, paths.vault_dir)
    for name in ("districts", "persons", "loans"):
        ingest(catalog, kms, data / f"{name}.parquet", load_spec(data / f"{name}.yaml"))
    return paths, catalog, kms


def demo_gate(catalog, kms, policy_name: str = "credit_underwriting"):  # type: ignore[no-untyped-def]
    """(policy, locked engine, gate) for one of the shipped policies."""
    from sandbox.engine import Engine
    from sandbox.gate import Gate
    from sandbox.policy import load_policy

    policy = load_policy(ROOT / "policies" / f"{policy_name}.yaml", catalog.resolve)
    engine = Engine.from_catalog(catalog, kms, [(t.dataset, t.version)
                                                for t in policy.tables.values()],
                                 memory_limit="8GB")
    return policy, engine, Gate(policy)
