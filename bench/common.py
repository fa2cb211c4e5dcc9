"""Shared helpers for the benchmarks (not tests: they print figures)."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


def demo_data(size: str) -> Path:
    """Generate (once) the demo data of ``size`` under bench/out/."""
    path = OUT / f"demo-{size}"
    if not (path / "loans.parquet").exists():
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "sandbox.cli", "demo-data", "--size", size,
                        "--out", str(path)], check=True, stdout=subprocess.DEVNULL)
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
