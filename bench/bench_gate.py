"""Gate benchmark: overhead from parse to plan, and DP answers vs plain DuckDB.

    python bench/bench_gate.py [--size large|small]

Overhead is the median time of ``Gate.check`` (parse, allowlist, resolve,
analyse, rewrite, privacy plan) over a suite of analyst queries, cold (first
time each query's plan is calibrated) and warm. End to end, each DP answer
(rewrite, bounded execution, noise, post-processing) is compared with the same
exact aggregate run directly by plain DuckDB on the same data in memory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import Timer, demo_data, demo_gate, demo_vault, median
from test_gate_answers import ANALYST_QUERIES

from sandbox.ledger import InMemoryLedger

J = "persons p JOIN loans l ON p.person_id = l.person_id"
END_TO_END = {
    "grouped COUNT": "SELECT purpose, count(*) FROM loans GROUP BY purpose",
    "grouped SUM": "SELECT status, sum(amount) FROM loans GROUP BY status",
    "grouped AVG": "SELECT district, avg(income) FROM persons GROUP BY district",
    "grouped COUNT/SUM/AVG": "SELECT purpose, count(*), sum(amount), avg(amount) FROM loans "
                             "GROUP BY purpose",
    "join COUNT/AVG": f"SELECT p.district, count(*), avg(l.amount) FROM {J} GROUP BY p.district",
    "MEDIAN (quantile)": "SELECT median(income) FROM persons",
    "grouped QUANTILE_CONT": "SELECT district, quantile_cont(credit_score, 0.9) FROM persons "
                             "GROUP BY district",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="large", choices=["tiny", "small", "large"])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    data = demo_data(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        _, catalog, kms = demo_vault(Path(tmp), data)
        _, engine, gate = demo_gate(catalog, kms)
        print(f"== gate benchmark, {args.size} demo data ==")

        cold, warm = [], []
        for sql in ANALYST_QUERIES:
            with Timer() as t:
                gate.check(sql)
            cold.append(t.seconds)
            runs = []
            for _ in range(args.repeat):
                with Timer() as t:
                    gate.check(sql)
                runs.append(t.seconds)
            warm.append(median(runs))
        print(f"gate overhead, parse to plan, over {len(ANALYST_QUERIES)} queries: median "
              f"{median(warm) * 1000:.2f} ms warm (target < 5 ms), {median(cold) * 1000:.2f} ms "
              f"cold (first calibration of each plan); slowest warm "
              f"{max(warm) * 1000:.2f} ms")

        plain = duckdb.connect(config={"threads": 2, "memory_limit": "8GB"})
        plain.execute("ATTACH ':memory:' AS v (COMPRESS)")
        for name in ("persons", "loans"):
            cols = catalog.get(name).spec.analytic_columns
            plain.execute(f"CREATE TABLE v.{name} AS SELECT {', '.join(cols)} FROM "
                          f"read_parquet('{data / name}.parquet')")
        plain.execute("CHECKPOINT v")
        plain.execute("USE v")
        ledger = InMemoryLedger(1e9, 1.0)
        print(f"end to end (median of {args.repeat}), DP answer vs the same exact aggregate "
              "in plain DuckDB (target <= 1.5x for grouped COUNT/SUM/AVG):")
        for label, sql in END_TO_END.items():
            def dp_answer(sql: str = sql) -> None:
                # a new member each time: the same member's same question is a free replay
                gate.answer(sql, member=uuid.uuid4().hex, ledger=ledger, executor=engine)

            def exact(sql: str = sql) -> None:
                plain.execute(sql).fetchall()

            times = {}
            for what, fn in (("dp", dp_answer), ("plain", exact)):
                fn()
                runs = []
                for _ in range(args.repeat):
                    with Timer() as t:
                        fn()
                    runs.append(t.seconds)
                times[what] = median(runs)
            print(f"  {label:<24} DP {times['dp'] * 1000:7.1f} ms   plain "
                  f"{times['plain'] * 1000:7.1f} ms   ratio {times['dp'] / times['plain']:.2f}x")


if __name__ == "__main__":
    main()
