"""Dummy data: develop a query for free on tables that hold nothing real.

A scenario's dummy tables have exactly the schema the policy exposes (the same engine table
names, columns and types, the privacy unit included), and their values come only from
what a member can already read in the schema:

* dimensions with declared ``keys`` take those keys; measures are drawn uniformly within
  their ``bounds``; other columns get values made from their type alone (labels
  ``<column>_01``.., small integers, dates from 2020 to 2025, true/false);
* each private table has units (``U000001``..) with a few rows each, never more than its
  ``max_rows_per_unit``; private tables share the units, so unit joins match;
* public lookup tables are generated too, one row per value of the column they are
  joined on (so the lookup key is unique and every lookup join finds its row). Their real
  rows are never read, even though the policy calls them public: the dummy path must
  never open the vault or need a key, and a lookup table's rows (its keys) are not
  declared in the schema a member sees.

Nothing is read from the catalog's data, the engine or the ledger: the tables are a pure
function of the policy (its id, content hash, tables, columns, roles, keys and bounds) and
a seed, so the same scenario version always gives the same tables.

``dummy_tables(..., marginals=...)`` is the seam for more realistic dummy data: weights per
key or per bin of a measure that an operator published with differential privacy. No
command publishes them yet, and the service passes none.

Questions asked of dummy data run through the unchanged gate (same checks, refusals, noise
and output shape) with ``DummyLedger``: nothing is reserved or charged, each answer is one
``query.dummy`` audit record and each refusal a ``query.refused`` record marked dummy.
Dummy releases carry ids starting with ``dummy-`` and are never stored, so they can
neither be replayed nor exported.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from .audit import cap_text
from .dp import Cost
from .errors import SandboxError
from .exports.items import DUMMY_PREFIX
from .gate import Executor, Gate, Release
from .ledger import Balance, Ledger, Reservation
from .policy import ColumnPolicy, Policy, TablePolicy
from .spec import ARROW_TYPES

__all__ = [
    "DUMMY_PREFIX",
    "DummyDataError",
    "DummyLedger",
    "DummyTable",
    "answer",
    "dummy_tables",
    "is_dummy_release",
]

UNITS = 2_000  # privacy units per scenario
ROWS_PER_UNIT = 6  # at most this many rows per unit (and never above max_rows_per_unit)
LABELS = 12  # values of a text or integer column without keys
SHARE = 0.8  # share of the units present in a private table other than the first
FIRST_DAY, LAST_DAY = dt.date(2020, 1, 1), dt.date(2025, 12, 31)
_INT_RANGE = {"int16": (-(2**15), 2**15 - 1), "int32": (-(2**31), 2**31 - 1),
              "int64": (-(2**53), 2**53)}  # int64: within exact doubles


class DummyDataError(SandboxError):
    """Dummy data cannot be made for this scenario (an unusual privacy unit type)."""

    code = "dummy.unavailable"


@dataclass(frozen=True)
class DummyTable:
    """One engine table of dummy data, as the engine loads it."""

    engine_table: str
    table: pa.Table
    privacy_unit: str | None


def is_dummy_release(release_id: object) -> bool:
    return isinstance(release_id, str) and release_id.startswith(DUMMY_PREFIX)


def dummy_release_id(release_id: str) -> str:
    return release_id if is_dummy_release(release_id) else DUMMY_PREFIX + release_id


# -- the generator -------------------------------------------------------------------------
def _h(*parts: object) -> int:
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


# (table alias, column) -> weights: one per declared key of a dimension, or one per
# equal-width bin of a measure's bounds. Only ever differentially private releases.
Marginals = Mapping[tuple[str, str], Sequence[float]]


def dummy_tables(policy: Policy, *, seed: int = 0, units: int = UNITS,
                 marginals: Marginals | None = None) -> list[DummyTable]:
    """The dummy engine tables of ``policy``: public facts only, deterministic per seed.

    ``marginals`` is the one seam for more realistic values: per private column, weights
    that an operator published with differential privacy (charged once to the workspace),
    so drawing from them is post-processing. Nothing else may be passed in.
    """
    base = _h(policy.id, policy.content_hash, seed)
    domains = _join_domains(policy)
    pool = _units(policy, units)
    groups: dict[str, list[TablePolicy]] = {}
    for t in policy.tables.values():  # aliases of one dataset version share a table
        groups.setdefault(t.engine_table, []).append(t)
    out: list[DummyTable] = []
    first_private = True
    for name, tables in groups.items():
        columns: dict[str, ColumnPolicy] = {}
        for t in tables:
            for c in t.columns.values():
                columns.setdefault(c.name, c)
        t = tables[0]
        rng = _streams(base, name)
        if t.public or t.privacy_unit is None:
            table = _public_table(t, columns, domains, rng)
        else:
            table = _private_table(t, columns, domains, pool, rng, first_private,
                                   marginals or {})
            first_private = False
        out.append(DummyTable(name, table, None if t.public else t.privacy_unit))
    return out


Rng = Callable[[str], np.random.Generator]


def _streams(base: int, table: str) -> Rng:
    """One random stream per column: adding a column leaves the others' values as they were."""
    return lambda column: np.random.default_rng([base, _h(table, column)])


def _units(policy: Policy, n: int) -> dict[str, list[Any]]:
    """Unit ids per unit type: the same ids in every private table, so unit joins match."""
    pool: dict[str, list[Any]] = {}
    for t in policy.tables.values():
        if t.public or t.privacy_unit is None:
            continue
        ctype = t.columns[t.privacy_unit].type
        if ctype == "string":
            pool[ctype] = [f"U{i:06d}" for i in range(1, n + 1)]
        elif ctype in _INT_RANGE:
            pool[ctype] = list(range(1, n + 1))
        else:
            raise DummyDataError(
                f"dummy data cannot be made for table {t.alias!r}: its privacy unit is a "
                f"{ctype} column", "ask the operator; query the real data with explain first")
    return pool


def _join_domains(policy: Policy) -> dict[tuple[str, str], list[Any]]:
    """The values both sides of each lookup join draw from: the declared keys of either
    side, else labels named after the private side's column (the same on both sides)."""
    out: dict[tuple[str, str], list[Any]] = {}
    for j in policy.joins:
        if j.kind != "lookup":
            continue
        priv, pub = (j.right, j.left) if policy.tables[j.left[0]].public else (j.left, j.right)
        pc, uc = policy.tables[priv[0]].columns[priv[1]], policy.tables[pub[0]].columns[pub[1]]
        out[priv] = out[pub] = list(pc.keys or uc.keys or _labels(pc, priv[1]))
    return out


def _labels(col: ColumnPolicy, name: str) -> list[Any]:
    """Values of a column without keys, from its type alone."""
    if col.type == "string":
        return [f"{name}_{i:02d}" for i in range(1, LABELS + 1)]
    if col.type in _INT_RANGE:
        return list(range(1, LABELS + 1))
    if col.type == "float64":
        return [float(i) for i in range(1, LABELS + 1)]
    if col.type == "bool":
        return [True, False]
    if col.type == "date":
        return [dt.date(y, 1, 1) for y in range(FIRST_DAY.year, LAST_DAY.year + 1)]
    return [dt.datetime(y, 1, 1) for y in range(FIRST_DAY.year, LAST_DAY.year + 1)]


def _probabilities(weights: Sequence[float] | None, k: int, what: str) -> np.ndarray | None:
    """Normalised weights (noisy ones may be negative: clipped to 0); None for uniform."""
    if weights is None:
        return None
    w = np.clip(np.asarray(weights, dtype=float), 0.0, None)
    if len(w) != k or not np.all(np.isfinite(w)):
        raise DummyDataError(f"the published marginal of {what} has {len(w)} weights for "
                             f"{k} values", "publish the marginals again for this scenario")
    return None if w.sum() <= 0 else w / w.sum()


def _column(col: ColumnPolicy, n: int, rng: np.random.Generator,
            domain: list[Any] | None, weights: Sequence[float] | None = None) -> pa.Array:
    """``n`` values of one column: keys, bounds or the type's own range (weighted by a
    published marginal when there is one), never data."""
    atype = ARROW_TYPES[col.type]
    values = domain if domain is not None else list(col.keys) if col.keys else None
    if values is not None:
        p = _probabilities(weights, len(values), col.name)
        picks = rng.choice(len(values), n, p=p)
        return pa.array([values[i] for i in picks], atype)
    if col.role == "measure" and col.bounds is not None:
        lo, hi = col.bounds
        if weights is not None:  # a bin by its weight, then uniform within the bin
            p = _probabilities(weights, len(weights), col.name)
            k = len(weights)
            bins = rng.choice(k, n, p=p)
            x = np.clip(lo + (bins + rng.random(n)) * (hi - lo) / k, lo, hi)
            if col.type in _INT_RANGE:
                tlo, thi = _INT_RANGE[col.type]
                x = np.clip(np.round(x), max(math.ceil(lo), tlo), min(math.floor(hi), thi))
                return pa.array(x.astype(np.int64), atype)
            return pa.array(np.round(x, 4), atype)
        if col.type in _INT_RANGE:
            tlo, thi = _INT_RANGE[col.type]
            ilo, ihi = max(math.ceil(lo), tlo), min(math.floor(hi), thi)
            if ilo > ihi:  # no integer within the bounds: the nearest one
                ilo = ihi = min(max(round((lo + hi) / 2), tlo), thi)
            return pa.array(rng.integers(ilo, ihi, n, endpoint=True), atype)
        return pa.array(np.clip(np.round(rng.uniform(lo, hi, n), 4), lo, hi), atype)
    if col.type == "date":
        span = (LAST_DAY - FIRST_DAY).days
        days = rng.integers(0, span, n, endpoint=True)
        return pa.array([FIRST_DAY + dt.timedelta(days=int(d)) for d in days], atype)
    if col.type == "timestamp":
        start = dt.datetime.combine(FIRST_DAY, dt.time())
        span = int((LAST_DAY - FIRST_DAY).days * 86_400)
        secs = rng.integers(0, span, n, endpoint=True)
        return pa.array([start + dt.timedelta(seconds=int(s)) for s in secs], atype)
    if col.type == "float64":
        return pa.array(np.round(rng.uniform(0, 100, n), 2), atype)
    labels = _labels(col, col.name)
    return pa.array([labels[i] for i in rng.integers(0, len(labels), n)], atype)


def _private_table(t: TablePolicy, columns: dict[str, ColumnPolicy],
                   domains: dict[tuple[str, str], list[Any]], pool: dict[str, list[Any]],
                   rng: Rng, everyone: bool, marginals: Marginals) -> pa.Table:
    assert t.privacy_unit is not None
    ids = pool[columns[t.privacy_unit].type]
    r = rng(t.privacy_unit)
    present = ids if everyone else [u for u, keep in zip(ids, r.random(len(ids)) < SHARE,
                                                         strict=True) if keep]
    most = min(t.max_rows_per_unit, ROWS_PER_UNIT)
    counts = r.integers(1, most, len(present), endpoint=True) if most > 1 else \
        np.ones(len(present), dtype=np.int64)
    unit_values = [u for u, k in zip(present, counts, strict=True) for _ in range(int(k))]
    n = len(unit_values)
    arrays, fields = [], []
    for c in columns.values():
        atype = ARROW_TYPES[c.type]
        if c.name == t.privacy_unit:
            arrays.append(pa.array(unit_values, atype))
        else:
            arrays.append(_column(c, n, rng(c.name), domains.get((t.alias, c.name)),
                                  marginals.get((t.alias, c.name))))
        fields.append(pa.field(c.name, atype))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _public_table(t: TablePolicy, columns: dict[str, ColumnPolicy],
                  domains: dict[tuple[str, str], list[Any]], rng: Rng) -> pa.Table:
    """One row per value of the joined column (unique, so lookup joins cannot multiply
    rows); other columns drawn as usual."""
    keyed = [c for c in columns if (t.alias, c) in domains]
    main = keyed[0] if keyed else next(iter(columns))
    rows = domains.get((t.alias, main)) or list(columns[main].keys or
                                                _labels(columns[main], main))
    n = len(rows)
    arrays, fields = [], []
    for c in columns.values():
        atype = ARROW_TYPES[c.type]
        if c.name == main:
            arrays.append(pa.array(rows, atype))
        elif (t.alias, c.name) in domains:  # a second joined column: its domain, in order
            values = domains[(t.alias, c.name)]
            arrays.append(pa.array([values[i % len(values)] for i in range(n)], atype))
        else:
            arrays.append(_column(c, n, rng(c.name), None))
        fields.append(pa.field(c.name, atype))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


# -- answering from dummy data -------------------------------------------------------------
@dataclass
class DummyLedger:
    """The ledger of questions asked of dummy data: nothing is reserved, charged or kept
    for replay. An answer is one ``query.dummy`` audit record and a refusal a
    ``query.refused`` record marked dummy, both written to ``state`` when given (the
    service's state database) and kept in ``records``. ``balance`` is the member's real
    balance (``real``), untouched."""

    workspace: str
    state: Any = None
    real: Ledger | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    _asked: dict[str, tuple[str, Cost]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, kind: str, member: str, **fields: Any) -> None:
        with self._lock:
            self.records.append({"kind": kind, "member": member, **fields})
        if self.state is not None:  # attributed as the real ledger's records are
            self.state.record(kind, workspace=self.workspace, member=member,
                              **getattr(self.real, "attribution", {}), **fields)

    def balance(self, member: str) -> Balance:
        if self.real is None:
            raise SandboxError("no budget to report for dummy data alone")
        return self.real.balance(member)

    def replay(self, member: str, replay_key: str, **_: object) -> dict[str, Any] | None:
        return None  # every dummy question is answered afresh, free

    def reserve(self, member: str, cost: Cost, *, sql: str = "", **_: object) -> Reservation:
        r = Reservation(uuid.uuid4().hex, member, 0.0, 0.0)
        with self._lock:
            self._asked[r.id] = (sql, cost)
        return r

    def _close(self, reservation: Reservation, **fields: Any) -> None:
        with self._lock:
            sql, cost = self._asked.pop(reservation.id, ("", Cost(0.0, 0.0)))
        asked = cap_text(sql)
        self._record("query.dummy", reservation.member, sql=asked.text,
                     sql_sha256=asked.sha256, sql_length=asked.length,
                     noise_epsilon=cost.epsilon, noise_delta=cost.delta, epsilon=0.0,
                     delta=0.0, **fields)

    def commit(self, reservation: Reservation, *, release_id: str = "", rows: int = 0,
               **_: object) -> None:
        self._close(reservation, release_id=dummy_release_id(release_id), rows=rows,
                    error_code=None)

    def fail(self, reservation: Reservation, error_code: str) -> None:
        self._close(reservation, release_id=None, rows=None, error_code=error_code)

    def cancel(self, reservation: Reservation) -> None:
        with self._lock:
            self._asked.pop(reservation.id, None)

    def refused(self, member: str, sql: str, rule: str, message: str) -> None:
        asked = cap_text(sql)
        self._record("query.refused", member, sql=asked.text, sql_sha256=asked.sha256,
                     sql_length=asked.length, rule=rule, message=cap_text(message).text,
                     dummy=True)


def answer(gate: Gate, sql: str, *, member: str, ledger: DummyLedger, executor: Executor,
           epsilon: float | None = None, timeout_s: float | None = None) -> Release:
    """The gate's answer over dummy data (``executor`` holds only ``dummy_tables``),
    labelled dummy: same checks, refusals, noise and shape, no budget spent."""
    release = gate.answer(sql, member=member, ledger=ledger, executor=executor,
                          epsilon=epsilon, timeout_s=timeout_s)
    release.release_id = dummy_release_id(release.release_id)
    release.dummy = True
    return release


def columns_of(tables: Sequence[DummyTable]) -> dict[str, list[tuple[str, pa.DataType]]]:
    """Engine table -> (column, Arrow type), for review and tests."""
    return {d.engine_table: [(f.name, f.type) for f in d.table.schema] for d in tables}
