"""The durable ledger's own cost on each state back end, without HTTP or the engine.

python bench/bench_state.py [--rounds 300]

Runs what the service does for one query (``prior``, ``replay`` miss, ``reserve``,
``commit``, ``balance``) on a SQLite file and on a PostgreSQL database (a server started
in a temporary directory, fsync on), interleaved, and prints the median per round and the
statements sent to PostgreSQL per round: the part of the added cost per query that the
state itself makes (bench_service.py --replicas measures the whole query).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pgkit import PgServer

from sandbox.dp import Cost
from sandbox.ledger_state import StateLedger
from sandbox.policy_model import BudgetPolicy
from sandbox.state import State
from sandbox.statedb import postgres


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=300)
    args = ap.parse_args()
    sent = {"n": 0}
    execute = postgres.PgConnection.execute

    def counted(self, sql, params=()):  # type: ignore[no-untyped-def]
        sent["n"] += 1
        return execute(self, sql, params)

    postgres.PgConnection.execute = counted  # type: ignore[method-assign]
    server = PgServer(fsync=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-state-"))
    try:
        key = Ed25519PrivateKey.generate()
        ledgers = {}
        for name, where in (("sqlite", str(tmp / "state.sqlite")),
                            ("postgresql", server.create_database("bench_state"))):
            ledgers[name] = StateLedger.open(State(where, key), "ws", "p",
                                             BudgetPolicy(1e9, 0.5, "none"))
        times: dict[str, list[float]] = {name: [] for name in ledgers}
        for i in range(args.rounds):
            for name, led in ledgers.items():  # interleaved: the same machine load for both
                sent["n"] = 0
                t = time.perf_counter()
                led.prior("alice", f"r{i}")
                led.replay("alice", f"k{i}", sql="SELECT 1")
                r = led.reserve("alice", Cost(0.01, 0.0), sql="SELECT 1", request_id=f"r{i}",
                                request_digest="d")
                led.commit(r, release_id="x", response={"rows": []}, replay_key=f"k{i}",
                           request_id=f"r{i}")
                led.balance("alice")
                times[name].append((time.perf_counter() - t) * 1000)
                if name == "postgresql":
                    statements = sent["n"]
        warm = {n: t[len(t) // 10:] for n, t in times.items()}
        for name, t in warm.items():
            print(f"{name:<11} p50 {statistics.median(t):6.2f} ms per query's ledger work")
        added = statistics.median(warm["postgresql"]) - statistics.median(warm["sqlite"])
        print(f"postgresql adds {added:+.2f} ms; {statements} statements per round")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
