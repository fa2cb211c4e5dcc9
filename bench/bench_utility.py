"""Utility benchmark: the gate's accuracy beside OpenDP's own APIs at the same epsilon.

    python bench/bench_utility.py [--size small] [--releases 20] [--mechanism laplace]
                                  [--seed 7] [--only NAME]

Every query shape is answered ``--releases`` times by ``Gate.answer`` on the encrypted
demo data, and as many times by a peer written directly against OpenDP's core API
(``opendp.prelude``; OpenDP's Polars API needs a polars version this project does not
install), with the same epsilon, delta, clamping bounds and contribution bound (1 row
per person in ``persons``, at most 6 loans per person). Both are compared with the true
answer of plain DuckDB over the plaintext Parquet files, with no bounding at all.

The policy is written by this script into a temporary directory: person-level privacy,
epsilon 1 per query, delta 1e-7, Laplace (or ``--mechanism gaussian``), income in
[0, 1e6], loan amounts in [0, 2e6], age in [18, 90], public keys for district, loan term
and status, ``issued_on`` without keys. A second copy without district keys answers the
private-key shape. The notes under the table give each side's split of epsilon, noise
scales and thresholds, so a difference in accuracy can be traced to its cause.

Columns, pooled over every release and every released cell of a shape:

* ``rel err``: median of |noisy - true| / |true| (cells whose true value is 0 are left out);
* ``dropped``: share of the true groups missing from the answer (private keys are
  released only above a noisy threshold);
* ``cov true``: share of cells whose 95% interval (``Release.ci95``) holds the true value;
* ``cov noise`` (gate only): share of cells whose interval holds the value the gate
  would release without noise (its rewritten SQL run on the engine), i.e. the coverage of
  the noise alone, without the bias of clamping and contribution bounding;
* ``ms``: median time of one answer (the gate: parse to release, ledger included; the
  peer: its OpenDP transformations and measurements, calibration cached after the first).

The gate's noise is drawn by OpenDP's CSPRNG and its per-person row choice is random at
engine load, so ``--seed`` fixes only the peer's choice of 6 loans per person.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import opendp.prelude as dp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, demo_data, demo_vault

from sandbox.demo import DISTRICTS, SIZES
from sandbox.engine import Engine
from sandbox.gate import Gate, _noisy_table
from sandbox.ledger import InMemoryLedger
from sandbox.policy import load_policy

dp.enable_features("contrib")
OPENDP_VERSION = version("opendp")

EPSILON = 1.0
DELTA = 1e-7
LOANS_PER_PERSON = 6
AGE = (18, 90)
INCOME = (0, 1_000_000)
AMOUNT = (0, 2_000_000)
DISTRICT_KEYS = [d.name for d in DISTRICTS]
TERMS = [6, 12, 24, 36, 60, 120, 240, 360]
STATUSES = ["current", "repaid", "overdue", "default"]
DECADE_EDGES = list(range(20, 100, 10))  # bins of [18, 90]: 10s (18-19), 20s, ..., 90

POLICY = """\
policy_version: 1
id: utility-bench
title: Utility benchmark
tables:
  persons:
    dataset: persons
    version: 1
    privacy_unit: person_id
    max_rows_per_unit: 1
    columns:
      district: {district}
      age: {{role: measure, bounds: [{age[0]}, {age[1]}]}}
      income: {{role: measure, bounds: [{income[0]}, {income[1]}]}}
  loans:
    dataset: loans
    version: 1
    privacy_unit: person_id
    max_rows_per_unit: {loans}
    columns:
      amount: {{role: measure, bounds: [{amount[0]}, {amount[1]}]}}
      term_months: {{role: dimension, keys: {terms}}}
      status: {{role: dimension, keys: {statuses}}}
      issued_on: {{role: dimension, keys: {{from: 2015-01-01, to: 2026-12-31, step: day}}}}
joins:
  - [persons.person_id, loans.person_id]
privacy:
  epsilon_default: {epsilon}
  epsilon_max: {epsilon}
  delta: {delta:.1e}
  max_groups_per_unit: {loans}
  mechanism: {mechanism}
budget:
  epsilon: 1000000
  delta: 0.5
"""


def policy_text(mechanism: str, district_keys: bool) -> str:
    """The benchmark's policy; without district keys, districts are private group keys."""
    keys = ", ".join('"' + k + '"' for k in DISTRICT_KEYS)
    district = f"{{role: dimension, keys: [{keys}]}}" if district_keys else "dimension"
    return POLICY.format(district=district, age=AGE, income=INCOME, amount=AMOUNT,
                         loans=LOANS_PER_PERSON, terms=TERMS,
                         statuses="[" + ", ".join(STATUSES) + "]", epsilon=EPSILON,
                         delta=DELTA, mechanism=mechanism)


Cells = dict[Any, list[tuple[float | None, float | None]]]  # group -> (value, ci95) per column


def norm_key(v: Any) -> Any:
    """One spelling per group key: DuckDB gives 10.0 for floor(age / 10) * 10 and a
    timestamp for date_trunc of a date."""
    if isinstance(v, Decimal):
        v = float(v)
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def num(v: Any) -> float | None:
    return None if v is None else float(v)


# --------------------------------------------------------------------------------------
# The peer: OpenDP's core API
# --------------------------------------------------------------------------------------


@dataclass
class PeerData:
    """Columns as numpy arrays (OpenDP reads them without a Python loop)."""

    district: list[str]
    district_code: np.ndarray
    age: np.ndarray
    income: np.ndarray
    loan_status: np.ndarray  # index into STATUSES; loans already cut to 6 per person
    loan_amount: np.ndarray
    loan_term: np.ndarray
    loan_year: np.ndarray
    loan_month: np.ndarray  # 12 * year + month - 1
    defaulters: list[str]  # one row per person with a default among all their loans


def load_peer_data(con: duckdb.DuckDBPyConnection, seed: int) -> PeerData:
    """Read the plaintext data; keep a seeded random 6 loans per person (the policy's bound)."""
    persons = con.sql("SELECT district, age, income FROM persons").to_arrow_table()
    loans = con.sql(f"""
        SELECT status, amount, term_months, year(issued_on) AS y,
               12 * year(issued_on) + month(issued_on) - 1 AS ym FROM (
            SELECT *, row_number() OVER (PARTITION BY person_id
                                         ORDER BY hash(loan_id, {int(seed)})) AS r
            FROM loans) WHERE r <= {LOANS_PER_PERSON}""").to_arrow_table()
    defaulters = [r[0] for r in con.execute(
        "SELECT person_id FROM loans GROUP BY person_id "
        "HAVING bool_or(status = 'default')").fetchall()]
    district = persons.column("district").to_pylist()
    code = {k: i for i, k in enumerate(DISTRICT_KEYS)}
    status = {k: i for i, k in enumerate(STATUSES)}
    return PeerData(
        district=district,
        district_code=np.array([code.get(d, -1) for d in district], dtype=np.int64),
        age=persons.column("age").to_numpy().astype(np.int64),
        income=persons.column("income").to_numpy().astype(np.int64),
        loan_status=np.array([status.get(s, -1) for s in loans.column("status").to_pylist()],
                             dtype=np.int64),
        loan_amount=loans.column("amount").to_numpy().astype(np.int64),
        loan_term=loans.column("term_months").to_numpy().astype(np.int64),
        loan_year=loans.column("y").to_numpy().astype(np.int64),
        loan_month=loans.column("ym").to_numpy().astype(np.int64),
        defaulters=defaulters,
    )


def _vec(t: str) -> tuple[Any, Any]:
    return dp.vector_domain(dp.atom_domain(T=t)), dp.symmetric_distance()


_REAL = (dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance())


@dataclass
class Noised:
    measurement: Any
    scale: float
    ci: float | None


class Peer:
    """Each shape the way OpenDP's documentation builds it: a stable transformation of the
    rows, then a noise measurement calibrated by OpenDP's own binary search on its privacy
    map. A query's epsilon is split evenly across its released measurements (as the gate
    does); under Gaussian noise delta is split across the Gaussian measurements and the
    threshold, and each Gaussian measurement is converted from zCDP to (epsilon, delta)."""

    def __init__(self, data: PeerData, mechanism: str, quantile_bins: int) -> None:
        self.d = data
        self.gaussian = mechanism == "gaussian"
        self.quantile_bins = quantile_bins
        self._cache: dict[str, tuple[Any, str]] = {}
        self.used: list[str] = []  # what the current shape used (for the notes)

    # -- calibration -------------------------------------------------------------------
    def _cached(self, key: str, build: Callable[[], tuple[Any, str]]) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        value, note = self._cache[key]
        if note not in self.used:
            self.used.append(note)
        return value

    def _noise(self, key: str, t: Any, d_in: Any, eps: float, delta: float,
               integer: bool = True) -> Noised:
        """``t`` followed by Laplace (pure DP) or Gaussian noise (zCDP to (eps, delta))."""
        def build() -> tuple[Noised, str]:
            if self.gaussian:
                def make(s: float) -> Any:
                    return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(
                        t >> dp.m.then_gaussian(s)), delta)
                # sigma is about sens * sqrt(2 ln(1.25 / delta)) / eps: search around it, as
                # far smaller scales overflow OpenDP's zCDP conversion
                sens = float(t.map(d_in)) if isinstance(t, dp.Transformation) else float(d_in)
                scale = dp.binary_search_param(make, d_in=d_in, d_out=(eps, delta),
                                               bounds=(0.01 * sens, 1e4 * sens / eps))
                ci = math.ceil(dp.gaussian_scale_to_accuracy(scale, 0.05))
                return Noised(make(scale), scale, ci), f"gaussian eps {eps:.3g} sigma {scale:.4g}"

            def make_l(s: float) -> Any:
                return t >> dp.m.then_laplace(s)
            scale = dp.binary_search_param(make_l, d_in=d_in, d_out=eps, T=float)
            ci = (max(math.floor(dp.discrete_laplacian_scale_to_accuracy(scale, 0.05)), 0)
                  if integer else dp.laplacian_scale_to_accuracy(scale, 0.05))
            return Noised(make_l(scale), scale, ci), f"laplace eps {eps:.3g} scale {scale:.4g}"
        return self._cached(key, build)

    def _sum_noise(self, key: str, groups: int, l1: int, eps: float, delta: float) -> Noised:
        """Noise for a vector of per-group clamped integer sums; one person moves it by at
        most ``l1`` (their rows times the largest bound) in L1 and in L2."""
        metric = dp.l2_distance(T="i64") if self.gaussian else dp.l1_distance(T="i64")
        space = dp.vector_domain(dp.atom_domain(T="i64"), size=groups), metric
        return self._noise(key, space, l1, eps, delta)

    def _threshold(self, key: str, t: Any, d_in: Any, eps: float, delta: float) -> Noised:
        """``make_laplace_threshold`` at ``eps`` (under either mechanism, as the gate); the
        threshold T is the smallest with OpenDP's delta at T - 1 within ``delta`` (OpenDP
        0.16 releases counts >= T but its map bounds P[noise > T - l_inf]; the gate charges
        the same way, docs/dp.md)."""
        def build() -> tuple[Noised, str]:
            def make(s: float, thr: int) -> Any:
                return t >> dp.m.then_laplace_threshold(scale=s, threshold=thr)
            big = 10**9
            scale = dp.binary_search(lambda s: make(s, big).map(d_in)[0] <= eps, T=float)

            def fits(thr: int) -> bool:
                try:
                    return make(scale, thr - 1).map(d_in)[1] <= delta
                except dp.OpenDPException:  # below the l-infinity sensitivity
                    return False
            lo, hi = 1, 2
            while not fits(hi):
                lo, hi = hi, hi * 2
            while lo < hi:
                mid = (lo + hi) // 2
                if fits(mid):
                    hi = mid
                else:
                    lo = mid + 1
            ci = max(math.floor(dp.discrete_laplacian_scale_to_accuracy(scale, 0.05)), 0)
            return Noised(make(scale, hi), scale, ci), \
                f"laplace threshold {hi} eps {eps:.3g} scale {scale:.4g}"
        return self._cached(key, build)

    def _quantile(self, key: str, values: np.ndarray, alpha: float, eps: float) -> float:
        def build() -> tuple[Any, str]:
            # The privacy map does not depend on the candidates: calibrate on three, then
            # build once on the full grid (the gate's resolution, as fine as it is).
            def make(s: float, cands: list[float]) -> Any:
                return dp.m.make_private_quantile(*_REAL, dp.max_divergence(), cands, alpha, s)
            scale = dp.binary_search_param(lambda s: make(s, [0.0, 1.0, 2.0]), d_in=1,
                                           d_out=eps, T=float)
            k = self.quantile_bins + 1
            grid = np.linspace(INCOME[0], INCOME[1], k).tolist()
            return make(scale, grid), f"{k:,} candidates, eps {eps:.3g} scale {scale:.4g}"
        return float(self._cached(key, build)(values))

    def _deltas(self, gaussian_parts: int, threshold: bool) -> float:
        users = (gaussian_parts if self.gaussian else 0) + int(threshold)
        return DELTA / users if users else 0.0

    # -- helpers for grouped answers -----------------------------------------------------
    def _counts_by(self, key: str, codes: np.ndarray, categories: list[int], rows: int,
                   eps: float, delta: float) -> tuple[list[int], float | None]:
        mo = dp.L2Distance[int] if self.gaussian else dp.L1Distance[int]
        t = _vec("i64") >> dp.t.then_count_by_categories(categories=categories,
                                                         null_category=False, MO=mo)
        n = self._noise(key, t, rows, eps, delta)
        return list(n.measurement(codes)), n.ci

    def _sums_by(self, key: str, codes: np.ndarray, values: np.ndarray, groups: int,
                 bounds: tuple[int, int], rows: int, eps: float,
                 delta: float) -> tuple[list[int], float | None]:
        clamp_sum = _vec("i64") >> dp.t.then_clamp(bounds) >> dp.t.then_sum()
        exact = [int(clamp_sum(values[codes == g])) for g in range(groups)]
        n = self._sum_noise(key, groups, rows * max(abs(bounds[0]), abs(bounds[1])), eps, delta)
        return list(n.measurement(exact)), n.ci

    @staticmethod
    def _avg(s: float, c: float, hs: float | None, hc: float | None,
             bounds: tuple[int, int]) -> tuple[float, float | None]:
        """Noisy sum / noisy count, clamped to the bounds; interval combined as the gate's."""
        cc = max(float(c), 1.0)
        value = min(max(s / cc, bounds[0]), bounds[1])
        ci = None if hs is None or hc is None else \
            math.sqrt((hs / cc) ** 2 + (float(s) * hc / cc**2) ** 2)
        return value, ci

    # -- the shapes ----------------------------------------------------------------------
    def count_persons(self) -> Cells:
        n = self._noise("count_persons", _vec("i64") >> dp.t.then_count(), 1, EPSILON,
                        self._deltas(1, False))
        return {None: [(float(n.measurement(self.d.income)), n.ci)]}

    def count_district_private(self) -> Cells:
        t = _vec("String") >> dp.t.then_count_by(TV="i64")
        n = self._threshold("count_district_private", t, 1, EPSILON,
                            self._deltas(0, True))
        return {k: [(float(v), n.ci)] for k, v in n.measurement(self.d.district).items()}

    def income_by_district(self) -> Cells:
        eps, delta, g = EPSILON / 2, self._deltas(2, False), len(DISTRICT_KEYS)
        sums, hs = self._sums_by("income_sums", self.d.district_code, self.d.income, g,
                                 INCOME, 1, eps, delta)
        counts, hc = self._counts_by("district_counts", self.d.district_code,
                                     list(range(g)), 1, eps, delta)
        return {k: [(float(s), hs), self._avg(s, c, hs, hc, INCOME)]
                for k, s, c in zip(DISTRICT_KEYS, sums, counts, strict=True)}

    def avg_amount_by_status(self) -> Cells:
        eps, delta, g = EPSILON / 2, self._deltas(2, False), len(STATUSES)
        sums, hs = self._sums_by("amount_sums", self.d.loan_status, self.d.loan_amount, g,
                                 AMOUNT, LOANS_PER_PERSON, eps, delta)
        counts, hc = self._counts_by("status_counts", self.d.loan_status, list(range(g)),
                                     LOANS_PER_PERSON, eps, delta)
        return {k: [self._avg(s, c, hs, hc, AMOUNT)]
                for k, s, c in zip(STATUSES, sums, counts, strict=True)}

    def loans_by_term(self) -> Cells:
        counts, h = self._counts_by("term_counts", self.d.loan_term, TERMS, LOANS_PER_PERSON,
                                    EPSILON, self._deltas(1, False))
        return {k: [(float(c), h)] for k, c in zip(TERMS, counts, strict=True)}

    def median_income(self) -> Cells:
        return {None: [(self._quantile("median", self.d.income.astype(np.float64), 0.5,
                                       EPSILON), None)]}

    def p90_income(self) -> Cells:
        return {None: [(self._quantile("p90", self.d.income.astype(np.float64), 0.9,
                                       EPSILON), None)]}

    def defaulters(self) -> Cells:
        n = self._noise("defaulters", _vec("String") >> dp.t.then_count(), 1, EPSILON,
                        self._deltas(1, False))
        return {None: [(float(n.measurement(self.d.defaulters)), n.ci)]}

    def age_decades(self) -> Cells:
        mo = dp.L2Distance[int] if self.gaussian else dp.L1Distance[int]
        bins = len(DECADE_EDGES) + 1
        t = (_vec("i64") >> dp.t.then_find_bin(edges=DECADE_EDGES)
             >> dp.t.then_count_by_categories(categories=list(range(bins)),
                                              null_category=False, MO=mo))
        n = self._noise("age_decades", t, 1, EPSILON, self._deltas(1, False))
        return {10 * (i + 1): [(float(c), n.ci)] for i, c in enumerate(n.measurement(self.d.age))}

    def loans_by_year(self) -> Cells:
        t = _vec("i64") >> dp.t.then_count_by(TV="i64")
        n = self._threshold("loans_by_year", t, LOANS_PER_PERSON, EPSILON,
                            self._deltas(0, True))
        return {k: [(float(v), n.ci)] for k, v in n.measurement(self.d.loan_year).items()}

    def loans_by_month(self) -> Cells:
        t = _vec("i64") >> dp.t.then_count_by(TV="i64")
        n = self._threshold("loans_by_month", t, LOANS_PER_PERSON, EPSILON,
                            self._deltas(0, True))
        return {dt.date(k // 12, k % 12 + 1, 1): [(float(v), n.ci)]
                for k, v in n.measurement(self.d.loan_month).items()}

    def stddev_income(self) -> Cells:
        """OpenDP's recipe for an unknown size: a noisy count, then resize and variance."""
        eps, delta = EPSILON / 2, self._deltas(2, False)
        n = self._noise("stddev_count", _vec("i64") >> dp.t.then_count(), 1, eps, delta)
        size = max(int(n.measurement(self.d.income)), 2)
        mid = (INCOME[0] + INCOME[1]) / 2
        t = _REAL >> dp.t.then_clamp((float(INCOME[0]), float(INCOME[1]))) \
            >> dp.t.then_resize(size=size, constant=mid) >> dp.t.then_variance()
        v = self._noise(f"stddev_var_{size}", t, 1, eps, delta, integer=False)
        return {None: [(math.sqrt(max(float(v.measurement(self.d.income.astype(np.float64))),
                                      0.0)), None)]}


# --------------------------------------------------------------------------------------
# The shapes
# --------------------------------------------------------------------------------------


@dataclass
class Shape:
    name: str
    gate_sql: str
    truth_sql: str  # the same question in plain DuckDB, without any bounding
    columns: tuple[str, ...]  # labels of the value columns (after the key, if any)
    peer: Callable[[Peer], Cells]
    keyed: bool = True
    private_keys: bool = False  # answered under the policy without district keys
    note: str = ""
    peer_note: str = ""


J = "loans l JOIN persons p ON p.person_id = l.person_id"
CASE_DECADE = ("CASE WHEN age < 20 THEN 10 WHEN age < 30 THEN 20 WHEN age < 40 THEN 30 "
               "WHEN age < 50 THEN 40 WHEN age < 60 THEN 50 WHEN age < 70 THEN 60 "
               "WHEN age < 80 THEN 70 WHEN age < 90 THEN 80 ELSE 90 END")
SHAPES = [
    Shape("count_persons", "SELECT count(*) FROM persons", "SELECT count(*) FROM persons",
          ("COUNT",), Peer.count_persons, keyed=False,
          peer_note="make_count >> noise, d_in 1"),
    Shape("count_district_private",
          "SELECT district, count(*) FROM persons GROUP BY district",
          "SELECT district, count(*) FROM persons GROUP BY district",
          ("COUNT",), Peer.count_district_private, private_keys=True,
          note="district without keys in the policy: thresholded",
          peer_note="make_count_by >> make_laplace_threshold, the released count is the "
                    "thresholded one"),
    Shape("income_by_district",
          "SELECT district, sum(income), avg(income) FROM persons GROUP BY district",
          "SELECT district, sum(income), avg(income) FROM persons GROUP BY district",
          ("SUM", "AVG"), Peer.income_by_district,
          peer_note="clamp >> sum per district, noise on the vector (L1 = L2 = hi), "
                    "count_by_categories; eps/2 each, AVG = sum / count"),
    Shape("avg_amount_by_status",
          f"SELECT l.status, avg(l.amount) FROM {J} GROUP BY l.status",
          f"SELECT l.status, avg(l.amount) FROM {J} GROUP BY l.status",
          ("AVG",), Peer.avg_amount_by_status,
          peer_note="6 loans per person; sums (L1 = L2 = 6 hi) and counts (6), eps/2 each"),
    Shape("loans_by_term",
          "SELECT term_months, count(*) FROM loans GROUP BY term_months",
          "SELECT term_months, count(*) FROM loans GROUP BY term_months",
          ("COUNT",), Peer.loans_by_term,
          peer_note="6 loans per person; count_by_categories >> noise, d_in 6"),
    Shape("median_income", "SELECT median(income) FROM persons",
          "SELECT quantile_cont(income, 0.5) FROM persons", ("MEDIAN",), Peer.median_income,
          keyed=False,
          peer_note="make_private_quantile on a grid of the bounds as fine as the gate's"),
    Shape("defaulters",
          "SELECT count(DISTINCT person_id) FROM loans WHERE status = 'default'",
          "SELECT count(DISTINCT person_id) FROM loans WHERE status = 'default'",
          ("COUNT DISTINCT",), Peer.defaulters, keyed=False,
          peer_note="one row per person with a default among ALL their loans, "
                    "make_count, d_in 1"),
    Shape("age_decades_floor",
          "SELECT floor(age / 10) * 10 AS decade, count(*) FROM persons GROUP BY decade",
          "SELECT floor(age / 10) * 10 AS decade, count(*) FROM persons GROUP BY decade",
          ("COUNT",), Peer.age_decades,
          note="bins of the declared bounds: public keys",
          peer_note="find_bin on edges from the public bounds >> count_by_categories >> "
                    "noise: the bins are public"),
    Shape("age_decades_case",
          f"SELECT {CASE_DECADE} AS decade, count(*) FROM persons GROUP BY decade",
          "SELECT floor(age / 10) * 10 AS decade, count(*) FROM persons GROUP BY decade",
          ("COUNT",), Peer.age_decades,
          note="the same bins as a CASE of constants: public keys",
          peer_note="as age_decades_floor"),
    Shape("loans_by_year",
          "SELECT year(issued_on) AS y, count(*) FROM loans GROUP BY y",
          "SELECT year(issued_on) AS y, count(*) FROM loans GROUP BY y",
          ("COUNT",), Peer.loans_by_year,
          note="issued_on declares its period (a key range): public keys",
          peer_note="6 loans per person; make_count_by >> make_laplace_threshold, "
                    "d_in (6, 6, 6)"),
    Shape("loans_by_month",
          "SELECT date_trunc('month', issued_on) AS m, count(*) FROM loans GROUP BY m",
          "SELECT date_trunc('month', issued_on) AS m, count(*) FROM loans GROUP BY m",
          ("COUNT",), Peer.loans_by_month, note="public keys from the period, some groups small",
          peer_note="as loans_by_year"),
    Shape("stddev_income", "SELECT stddev(income) FROM persons",
          "SELECT stddev(income) FROM persons", ("STDDEV",), Peer.stddev_income, keyed=False,
          peer_note="noisy count (eps/2), then clamp >> resize >> variance >> noise (eps/2)"),
    Shape("p90_income", "SELECT quantile_cont(income, 0.9) FROM persons",
          "SELECT quantile_cont(income, 0.9) FROM persons", ("P90",), Peer.p90_income,
          keyed=False, peer_note="make_private_quantile, alpha 0.9"),
]


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------


@dataclass
class Stats:
    """Accumulates one value column of one shape over the releases."""

    rel: list[float] = field(default_factory=list)
    rel_noise: list[float] = field(default_factory=list)  # against the gate's noise-free value
    groups: int = 0
    dropped: int = 0
    ci_cells: int = 0
    covered: int = 0
    noise_cells: int = 0
    noise_covered: int = 0

    def add(self, truth: dict[Any, list[float | None]], answer: Cells, col: int,
            bounded: dict[Any, list[float | None]] | None = None) -> None:
        for key, true_values in truth.items():
            self.groups += 1
            if key not in answer:
                self.dropped += 1
                continue
            value, ci = answer[key][col]
            true = true_values[col]
            if value is None or true is None:
                continue
            if true != 0:
                self.rel.append(abs(value - true) / abs(true))
            if ci is not None:
                self.ci_cells += 1
                self.covered += abs(value - true) <= ci
                if bounded is not None and key in bounded and bounded[key][col] is not None:
                    self.noise_cells += 1
                    self.noise_covered += abs(value - bounded[key][col]) <= ci
            free = None if bounded is None or key not in bounded else bounded[key][col]
            if free and math.isfinite(free):
                self.rel_noise.append(abs(value - free) / abs(free))

    def row(self, keyed: bool, noise: bool = False) -> list[str]:
        def pct(a: int, b: int) -> str:
            return f"{100 * a / b:.1f}%" if b else "-"

        def med(values: list[float]) -> str:
            return f"{100 * statistics.median(values):.3g}%" if values else "-"
        dropped = pct(self.dropped, self.groups) if keyed else "-"
        return [med(self.rel), *([med(self.rel_noise)] if noise else []), dropped,
                pct(self.covered, self.ci_cells), pct(self.noise_covered, self.noise_cells)]


def gate_cells(rows: list[list[Any]], cis: list[list[float | None]], keyed: bool) -> Cells:
    out: Cells = {}
    for r, c in zip(rows, cis, strict=True):
        key = norm_key(r[0]) if keyed else None
        vals = r[1:] if keyed else r
        hws = c[1:] if keyed else c
        out[key] = [(num(v), num(h)) for v, h in zip(vals, hws, strict=True)]
    return out


def gate_noiseless(gate: Gate, engine: Engine, shape: Shape) -> dict[Any, list[float | None]]:
    """What the gate would release without noise: its rewritten SQL run on the engine, the
    exact bounded measurements post-processed as the noisy ones are (every group kept).
    The gate's own ``_noisy_table`` builds the input of post-processing, so AVG (noisy sum
    over noisy count, clamped to the bounds) is computed exactly as in a release."""
    q = gate.check(shape.gate_sql, EPSILON)
    exact = engine.execute(q.executed_sql)
    values: dict[str, list[Any]] = {}
    for item in q.plan.items:
        m = item.measurement
        col = exact.column(m.name).to_pylist()
        if m.kind == "histogram":  # a quantile: no interval, so not needed for coverage
            values[m.name] = [float("nan")] * len(col)
        elif m.scale == 1:
            values[m.name] = [int(v or 0) for v in col]
        else:
            values[m.name] = [float(v or 0) / m.scale for v in col]
    table = _noisy_table(q, exact.schema, values, list(range(exact.num_rows)), exact)
    out = engine.postprocess(q.post_sql, table)
    n_out = len(q.outputs)
    rows = [list(r) for r in zip(*(out.column(i).to_pylist() for i in range(n_out)),
                                 strict=True)]
    return {k: [v for v, _ in cells]
            for k, cells in gate_cells(rows, [[None] * n_out] * len(rows), shape.keyed).items()}


def truth(con: duckdb.DuckDBPyConnection, shape: Shape) -> dict[Any, list[float | None]]:
    out: dict[Any, list[float | None]] = {}
    for r in con.execute(shape.truth_sql).fetchall():
        key = norm_key(r[0]) if shape.keyed else None
        out[key] = [num(v) for v in (r[1:] if shape.keyed else r)]
    return out


def gate_plan_note(gate: Gate, sql: str) -> str:
    """The gate's split of epsilon, for the notes under the table."""
    plan = gate.check(sql, EPSILON).plan
    parts: list[str] = []
    for p in plan.items:
        m = p.measurement
        if m.kind == "histogram":
            parts.append(f"quantile {m.bins:,} bins, eps {p.epsilon:.3g}")
        else:
            parts.append(f"{m.kind} eps {p.epsilon:.3g} {p.mechanism.kind} scale "
                         f"{p.mechanism.scale / m.scale:.4g}")
    if plan.threshold is not None:
        parts.append(f"threshold {plan.threshold_value} eps {plan.threshold.epsilon:.3g} "
                     f"scale {plan.threshold.mechanism.scale:.4g}")
        if plan.group_count is not None:
            parts.append(f"group count eps {plan.group_count.cost.epsilon:.3g}")
    return ", ".join(parts)


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                          for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return "\n".join([line(header), "-+-".join("-" * w for w in widths),
                      *(line(r) for r in rows)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small", choices=list(SIZES),
                    help="demo data size (persons: " +
                    ", ".join(f"{k} {v:,}" for k, v in SIZES.items()) + ")")
    ap.add_argument("--releases", type=int, default=20, help="answers per query and side")
    ap.add_argument("--mechanism", default="laplace", choices=["laplace", "gaussian"])
    ap.add_argument("--seed", type=int, default=7,
                    help="the peer's choice of 6 loans per person")
    ap.add_argument("--only", choices=[s.name for s in SHAPES], help="run one query shape")
    args = ap.parse_args()
    if args.releases < 1:
        ap.error("--releases must be at least 1")
    shapes = [s for s in SHAPES if args.only in (None, s.name)]
    started = time.perf_counter()
    data = demo_data(args.size)

    plain = duckdb.connect(config={"threads": 2})
    for name in ("persons", "loans"):
        plain.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{data / name}.parquet')")

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        _, catalog, kms = demo_vault(tmp, data)
        gates: dict[bool, Gate] = {}
        for private in (False, True):
            path = tmp / f"policy-{'private' if private else 'keyed'}.yaml"
            path.write_text(policy_text(args.mechanism, not private), encoding="utf-8")
            gates[private] = Gate(load_policy(path, catalog.resolve))
        policy = gates[False].policy
        median_plan = gates[False].check("SELECT median(income) FROM persons", EPSILON).plan
        peer = Peer(load_peer_data(plain, args.seed), args.mechanism,
                    quantile_bins=median_plan.items[0].measurement.bins or 1024)
        with Timer() as load:
            engine = Engine.from_catalog(catalog, kms, [(t.dataset, t.version)
                                                        for t in policy.tables.values()],
                                         memory_limit="4GB", threads=2)
        n_persons, n_loans = plain.execute(
            "SELECT (SELECT count(*) FROM persons), (SELECT count(*) FROM loans)").fetchone()
        print(f"== utility: the gate beside OpenDP {OPENDP_VERSION} core API, {args.size} demo "
              f"data ({n_persons:,} persons, {n_loans:,} loans) ==")
        print(f"epsilon {EPSILON} per query, {args.mechanism} noise, delta {DELTA:g} "
              f"(thresholds{', Gaussian noise' if args.mechanism == 'gaussian' else ''}); "
              f"at most {LOANS_PER_PERSON} loans per person; bounds income {list(INCOME)}, "
              f"amount {list(AMOUNT)}, age {list(AGE)}; {args.releases} releases per query "
              f"and side; engine loaded in {load.seconds:.1f} s")

        ledger = InMemoryLedger(1e12, 0.99)
        header = ["query", "gate rel err", "gate noise err", "gate dropped", "gate cov true",
                  "gate cov noise", "OpenDP rel err", "OpenDP dropped", "OpenDP cov true",
                  "ms gate", "ms OpenDP"]
        rows: list[list[str]] = []
        notes: list[str] = []
        for shape in shapes:
            gate = gates[shape.private_keys]
            true = truth(plain, shape)
            bounded = gate_noiseless(gate, engine, shape)
            g_stats = [Stats() for _ in shape.columns]
            p_stats = [Stats() for _ in shape.columns]
            g_ms: list[float] = []
            p_ms: list[float] = []
            peer.used = []
            for i in range(args.releases):
                with Timer() as t:
                    # one member per release: an identical question from the same member
                    # would be a free replay of the stored answer
                    r = gate.answer(shape.gate_sql, member=f"bench-{i}", ledger=ledger,
                                    executor=engine, epsilon=EPSILON)
                g_ms.append(t.seconds * 1000)
                assert not r.replayed, "a replayed answer would repeat the same noise"
                got = gate_cells(r.rows, r.ci95, shape.keyed)
                with Timer() as t:
                    mine = shape.peer(peer)
                p_ms.append(t.seconds * 1000)
                for c in range(len(shape.columns)):
                    g_stats[c].add(true, got, c, bounded)
                    p_stats[c].add(true, {norm_key(k): v for k, v in mine.items()}, c)
            for c, label in enumerate(shape.columns):
                g, p = g_stats[c].row(shape.keyed, noise=True), p_stats[c].row(shape.keyed)
                rows.append([f"{shape.name} {label}", *g, *p[:3],
                             f"{statistics.median(g_ms):.1f}", f"{statistics.median(p_ms):.1f}"])
            note = (f"{shape.name}: {shape.gate_sql}\n"
                    f"    gate: {gate_plan_note(gate, shape.gate_sql)}")
            if shape.note:
                note += f"; {shape.note}"
            note += f"\n    OpenDP: {shape.peer_note}"
            note += "; " + ", ".join(peer.used)
            notes.append(note)
        print()
        print(table(header, rows))
        print()
        print("rel err: median |noisy - true| / |true| over released cells (dropped groups "
              "are not in it); noise err: the same against the gate's own value without "
              "noise (bounding included); dropped: true groups not released; cov: 95% "
              "intervals holding "
              "the true value, or the gate's value without noise; '-': no interval "
              "(quantiles, STDDEV) or no groups")
        print()
        print("\n".join(notes))
        print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
