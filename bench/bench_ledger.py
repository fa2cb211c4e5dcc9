"""Ledger and audit-log benchmark: durable appends, verification, added latency.

    python bench/bench_ledger.py [--records 1000000]

Appends: one record per transaction, WAL with synchronous=FULL (each append is
durable before the next starts). Verification: a log of ``--records`` records
(built in large transactions to save time) is re-hashed from its bodies, chain,
tree heads and checkpoints. Added latency: the same DP query answered with the
durable SQLite ledger versus an in-memory ledger.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import Timer, demo_data, demo_gate, demo_vault, median

from sandbox.ledger import InMemoryLedger, SqliteLedger
from sandbox.state import State


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--appends", type=int, default=2_000)
    ap.add_argument("--queries", type=int, default=30)
    args = ap.parse_args()
    key = Ed25519PrivateKey.generate()
    print("== ledger and audit log benchmark ==")
    with tempfile.TemporaryDirectory() as tmp:
        state = State(Path(tmp) / "state.sqlite", key)
        with Timer() as t:
            for i in range(args.appends):
                state.record("audit.read", actor="bench", what="bench", filters={"i": i})
        print(f"durable appends (one transaction each, synchronous=FULL): "
              f"{args.appends / t.seconds:,.0f} records/s")

        big = State(Path(tmp) / "big.sqlite", key)
        with Timer() as t_build:
            done = 0
            while done < args.records:
                n = min(20_000, args.records - done)
                with big.transaction() as con:
                    for i in range(n):
                        big.append(con, "query.refused", workspace="w", member=f"m{i % 50}",
                                   sql="SELECT name FROM persons", rule="gate.unknown_column",
                                   message="column 'name' is not available")
                done += n
        cp = big.checkpoint()
        with Timer() as t_verify:
            report = big.verify(external=cp)
        assert report.ok, report.problems
        print(f"verify a log of {report.records:,} records ({report.checkpoints} signed "
              f"checkpoints): {t_verify.seconds:.1f} s (built in {t_build.seconds:.0f} s, "
              f"{(Path(tmp) / 'big.sqlite').stat().st_size / 2**20:.0f} MiB)")

        paths, catalog, kms = demo_vault(Path(tmp) / "demo", demo_data("small"))
        policy, engine, gate = demo_gate(catalog, kms)
        sql = "SELECT district, count(*), avg(income) FROM persons GROUP BY district"
        durable = SqliteLedger.open(State(paths.state_db, key), "bench", policy.id,
                                    policy.budget)
        durable.set_budget("bench", epsilon=1e9, delta=0.5)
        memory = InMemoryLedger(1e9, 0.5)
        times: dict[str, list[float]] = {"memory": [], "durable": []}
        for _ in range(args.queries):
            for label, ledger in (("memory", memory), ("durable", durable)):
                with Timer() as t:
                    gate.answer(sql, member="bench", ledger=ledger, executor=engine)
                times[label].append(t.seconds)
        m, d = median(times["memory"]), median(times["durable"])
        print(f"added latency of the durable ledger per answered query (median of "
              f"{args.queries}, small demo data): {(d - m) * 1000:.1f} ms "
              f"({m * 1000:.1f} ms in memory, {d * 1000:.1f} ms durable)")


if __name__ == "__main__":
    main()
