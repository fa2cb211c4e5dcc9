"""Vault benchmark: ingest throughput, engine load vs plain DuckDB, a grouped aggregate.

    python bench/bench_vault.py [--size large|small]

Ingest runs in a child process so its peak RSS is its own. Engine load decrypts
the analytic columns with pyarrow into a compressed in-memory DuckDB; the
comparison loads the same plaintext Parquet columns into the same kind of
database in the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, demo_data, median

from sandbox.catalog import Catalog
from sandbox.engine import Engine
from sandbox.keys import FileKeyStore
from sandbox.settings import Paths

INGEST = """
import json, resource, sys, time
from pathlib import Path
from sandbox.catalog import Catalog
from sandbox.ingest import ingest
from sandbox.keys import FileKeyStore
from sandbox.settings import Paths
from sandbox.spec import load_spec
paths = Paths.resolve(sys.argv[1], sys.argv[2])
src = Path(sys.argv[3])
cat = Catalog(paths.catalog_db, paths.vault_dir)
t = time.perf_counter()
dv = ingest(cat, FileKeyStore(paths.keystore), src, load_spec(src.with_suffix('.yaml')))
print(json.dumps({"seconds": time.perf_counter() - t, "rows": dv.row_count,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

QUERY = ("SELECT purpose, count(*) AS n, sum(amount) AS total, avg(amount) AS mean "
         "FROM loans GROUP BY purpose")


def _batches(catalog, kms, dv):  # type: ignore[no-untyped-def]
    from sandbox.vault import open_encrypted, read_batches

    base = catalog.storage_dir(dv.name, dv.storage_id)
    for f in dv.files:
        ref = dv.file_ref(f)
        pf = open_encrypted(base / f.file_name, ref, list(f.keys), kms)
        yield from read_batches(pf, ref, dv.spec.analytic_columns)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="large", choices=["tiny", "small", "large"])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    data = demo_data(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        paths = Paths.resolve(Path(tmp) / "home", Path(tmp) / "keys")
        paths.ensure_home()
        FileKeyStore(paths.keystore).init()
        print(f"== vault benchmark, {args.size} demo data ==")
        for name in ("persons", "loans"):
            src = data / f"{name}.parquet"
            out = subprocess.run([sys.executable, "-c", INGEST, str(paths.home),
                                  str(paths.keystore), str(src)], check=True,
                                 capture_output=True, text=True)
            r = json.loads(out.stdout)
            mb = src.stat().st_size / 2**20
            print(f"ingest {name}: {r['rows']:,} rows in {r['seconds']:.1f} s = "
                  f"{r['rows'] / r['seconds']:,.0f} rows/s, {mb / r['seconds']:.1f} MB/s of "
                  f"source Parquet, peak RSS {r['peak_rss_mib']:.0f} MiB")

        catalog = Catalog(paths.catalog_db, paths.vault_dir)
        kms = FileKeyStore(paths.keystore)
        dv = catalog.get("loans")
        cols = dv.spec.analytic_columns

        plain = duckdb.connect(config={"threads": 2, "memory_limit": "8GB"})
        plain.execute("ATTACH ':memory:' AS v (COMPRESS)")
        with Timer() as t_plain:
            plain.execute(f"CREATE TABLE v.loans AS SELECT {', '.join(cols)} FROM "
                          f"read_parquet('{data / 'loans.parquet'}')")
            plain.execute("CHECKPOINT v")
        bare = Engine(memory_limit="8GB", threads=2)
        with Timer() as t_enc:
            bare.load_arrow("loans", dv.spec.arrow_schema(cols), _batches(catalog, kms, dv),
                            "loans", dv.version, privacy_unit=None)
            bare._con.execute("CHECKPOINT vault")
        del bare
        engine = Engine(memory_limit="8GB", threads=2)
        with Timer() as t_full:
            engine.load_dataset(catalog, kms, dv, "loans_plain_rank_free")
            engine._con.execute("CHECKPOINT vault")
        print(f"load loans ({dv.row_count:,} rows, {len(cols)} analytic columns) into a "
              f"compressed in-memory DuckDB: plaintext Parquet {t_plain.seconds:.2f} s; "
              f"encrypted (decrypt + load) {t_enc.seconds:.2f} s = "
              f"{t_enc.seconds / t_plain.seconds:.2f}x (target <= 1.5x); with the random rank "
              f"of rows per unit the gate uses {t_full.seconds:.2f} s")
        engine.lock()

        def timed(fn) -> float:  # type: ignore[no-untyped-def]
            fn()
            runs = []
            for _ in range(args.repeat):
                with Timer() as t:
                    fn()
                runs.append(t.seconds)
            return median(runs)

        q_engine = timed(lambda: engine.execute(QUERY.replace("FROM loans",
                                                              "FROM loans_plain_rank_free")))
        q_plain_mem = timed(lambda: plain.execute(QUERY.replace("FROM loans",
                                                                "FROM v.loans")).fetchall())
        q_parquet = timed(lambda: plain.execute(QUERY.replace(
            "FROM loans", f"FROM read_parquet('{data / 'loans.parquet'}')")).fetchall())
        print(f"grouped COUNT/SUM/AVG over loans (median of {args.repeat}): engine "
              f"{q_engine * 1000:.0f} ms; plain DuckDB in-memory {q_plain_mem * 1000:.0f} ms; "
              f"plain DuckDB over plaintext Parquet {q_parquet * 1000:.0f} ms")


if __name__ == "__main__":
    main()
