"""A synthetic world for neighbouring-dataset tests: specs, policies, data, engines, runs.

Two policies model the shipped scenarios: ``laplace`` (credit underwriting: ``persons``
one row per unit, ``loans`` up to 10 rows per unit, a public lookup table ``districts``,
at most 4 groups per unit) and ``gaussian`` (population and livelihood: Gaussian noise,
at most 1 group per unit, ``loans`` up to 3 rows per unit). Both add columns the shipped
scenarios lack so that every column type the gate handles is present: a float measure
with negative bounds (``balance``), an INT32 measure (``installments``), private-key
dimensions (``city``, ``seen_at``), a date with a declared monthly key range
(``issued_on``), dates and timestamps.

Base tables are small and keep every unit within every bound (see
``tests/privacy/test_sensitivity.py`` for why); adversarial neighbours add one unit
whose rows are extreme.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime as dt
import functools
import random
import shutil
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from sandbox.engine import Engine
from sandbox.errors import SandboxError
from sandbox.gate import Gate, Release
from sandbox.ledger import InMemoryLedger
from sandbox.policy import Policy, load_policy
from sandbox.spec import ColumnSpec, DatasetSpec
from sandbox.sql.refusal import Refusal

# -- dataset specs --------------------------------------------------------------------


def _spec(name: str, cols: list[tuple[str, str, str]], public: bool = False) -> DatasetSpec:
    return DatasetSpec(name, name, public=public, columns=tuple(
        ColumnSpec(c, t, r, "general") for c, t, r in cols))


SPECS: dict[str, DatasetSpec] = {
    "persons": _spec("persons", [
        ("person_id", "string", "privacy_unit"),
        ("district", "string", "quasi_identifier"),
        ("gender", "string", "quasi_identifier"),
        ("education", "string", "quasi_identifier"),
        ("employed", "bool", "attribute"),
        ("age", "int16", "quasi_identifier"),
        ("income", "int64", "sensitive"),
        ("credit_score", "int16", "sensitive"),
        ("balance", "float64", "sensitive"),
        ("city", "string", "attribute"),
        ("registered_on", "date", "attribute"),
        ("seen_at", "timestamp", "attribute"),
    ]),
    "loans": _spec("loans", [
        ("person_id", "string", "privacy_unit"),
        ("amount", "int64", "sensitive"),
        ("rate", "float64", "sensitive"),
        ("installments", "int32", "sensitive"),
        ("term_months", "int16", "attribute"),
        ("purpose", "string", "attribute"),
        ("status", "string", "sensitive"),
        ("issued_on", "date", "attribute"),
    ]),
    "districts": _spec("districts", [
        ("district", "string", "attribute"),
        ("district_code", "string", "attribute"),
        ("name_zh", "string", "attribute"),
        ("area_km2", "float64", "attribute"),
    ], public=True),
}

DISTRICTS = ["Siming", "Haicang", "Huli", "Jimei", "Tong'an", "Xiang'an"]
GENDERS = ["F", "M"]
EDUCATION = ["primary", "secondary", "vocational", "bachelor", "postgraduate"]
TERMS = [6, 12, 24, 36, 60, 120, 240, 360]
PURPOSES = ["consumer", "business", "mortgage", "auto", "education"]
STATUSES = ["current", "repaid", "overdue", "default"]
CITIES = ["Xiamen", "Quanzhou", "Zhangzhou", "5", "01"]

_COMMON_PERSONS = """
      district: {role: dimension, keys: [Siming, Haicang, Huli, Jimei, "Tong'an", "Xiang'an"]}
      gender: {role: dimension, keys: [F, M]}
      education: {role: dimension, keys: [primary, secondary, vocational, bachelor, postgraduate]}
      employed: {role: dimension, keys: [true, false]}
      age: {role: measure, bounds: [18, 90]}
      credit_score: {role: measure, bounds: [300, 850]}
      balance: {role: measure, bounds: [-5000, 5000]}
      city: dimension
      registered_on: filter
      seen_at: dimension"""
_COMMON_LOANS = """
      amount: {role: measure, bounds: [0, 2000000]}
      rate: {role: measure, bounds: [0, 0.25]}
      installments: {role: measure, bounds: [0, 360]}
      term_months: {role: dimension, keys: [6, 12, 24, 36, 60, 120, 240, 360]}
      purpose: {role: dimension, keys: [consumer, business, mortgage, auto, education]}
      status: {role: dimension, keys: [current, repaid, overdue, default]}
      issued_on: {role: dimension, keys: {from: 2017-01-01, to: 2020-12-31, step: month}}"""
_DISTRICTS = """
  districts:
    dataset: districts
    version: 1
    columns:
      district: dimension
      district_code: dimension
      name_zh: dimension
      area_km2: {role: measure, bounds: [0, 2000]}
joins:
  - [persons.person_id, loans.person_id]
  - [persons.district, districts.district]
"""


def _policy_text(pid: str, income_hi: int, loans_rows: int, privacy: str) -> str:
    return (f"policy_version: 1\nid: {pid}\ntitle: {pid}\ntables:\n"
            "  persons:\n    dataset: persons\n    version: 1\n    privacy_unit: person_id\n"
            "    max_rows_per_unit: 1\n    columns:" + _COMMON_PERSONS +
            f"\n      income: {{role: measure, bounds: [0, {income_hi}]}}\n"
            "  loans:\n    dataset: loans\n    version: 1\n    privacy_unit: person_id\n"
            f"    max_rows_per_unit: {loans_rows}\n    columns:" + _COMMON_LOANS + "\n"
            + _DISTRICTS + privacy + "budget: {epsilon: 1000000, delta: 0.5}\n")


POLICY_TEXTS = {
    # credit_underwriting.yaml, with its privacy section
    "laplace": _policy_text("syn-laplace", 2_000_000, 10, textwrap.dedent("""\
        privacy:
          epsilon_default: 0.5
          epsilon_max: 2.0
          delta: 1.0e-7
          max_groups_per_unit: 4
          mechanism: laplace
        """)),
    # population_livelihood.yaml, with its privacy section
    "gaussian": _policy_text("syn-gaussian", 1_000_000, 3, textwrap.dedent("""\
        privacy:
          epsilon_default: 0.3
          epsilon_max: 1.0
          delta: 1.0e-7
          max_groups_per_unit: 1
          mechanism: gaussian
        """)),
}
VARIANTS = tuple(POLICY_TEXTS)


def resolver(name: str, version: int | None) -> tuple[DatasetSpec, int] | None:
    return (SPECS[name], 1) if name in SPECS else None


_POLICY_DIR = Path(tempfile.mkdtemp(prefix="privacy-policies-"))
atexit.register(shutil.rmtree, _POLICY_DIR, ignore_errors=True)


@functools.cache
def policy(variant: str) -> Policy:
    path = _POLICY_DIR / f"{variant}.yaml"
    path.write_text(POLICY_TEXTS[variant])
    return load_policy(path, resolver)


@functools.cache
def gate(variant: str) -> Gate:
    return Gate(policy(variant))


def policy_from_text(text: str) -> Policy:
    """A policy from YAML text (regression tests with their own bounds)."""
    path = Path(tempfile.mkdtemp(prefix="policy-", dir=_POLICY_DIR)) / "policy.yaml"
    path.write_text(text)
    return load_policy(path, resolver)


# -- data -----------------------------------------------------------------------------

Rows = list[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class World:
    """Rows per dataset (persons, loans, districts) as lists of dicts."""

    name: str
    persons: tuple[dict[str, Any], ...]
    loans: tuple[dict[str, Any], ...]
    districts: tuple[dict[str, Any], ...]

    def table(self, dataset: str) -> pa.Table:
        rows = getattr(self, dataset)
        spec = SPECS[dataset]
        return pa.table({c.name: _array([r.get(c.name) for r in rows], c.type)
                         for c in spec.columns}, schema=spec.arrow_schema())

    def plus(self, name: str, persons: Rows, loans: Rows) -> World:
        return World(name, self.persons + tuple(persons), self.loans + tuple(loans),
                     self.districts)

    def minus(self, name: str, unit: str) -> World:
        return World(name, tuple(r for r in self.persons if r["person_id"] != unit),
                     tuple(r for r in self.loans if r["person_id"] != unit), self.districts)

    def units(self) -> list[str]:
        return sorted({r["person_id"] for r in self.persons + self.loans})


EPOCH = dt.date(1970, 1, 1)


def _array(values: list[Any], kind: str) -> pa.Array:
    """Arrow array of a spec type; ``RawDays``/``RawMicros`` give dates outside Python's range."""
    if kind == "date":
        days = [None if v is None else v.days if isinstance(v, RawDays) else (v - EPOCH).days
                for v in values]
        return pa.array(days, pa.int32()).cast(pa.date32())
    if kind == "timestamp":
        us = [None if v is None else v.us if isinstance(v, RawMicros)
              else (v - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1) for v in values]
        return pa.array(us, pa.int64()).cast(pa.timestamp("us"))
    return pa.array(values, {"string": pa.string(), "int16": pa.int16(), "int32": pa.int32(),
                             "int64": pa.int64(), "float64": pa.float64(),
                             "bool": pa.bool_()}[kind])


@dataclasses.dataclass(frozen=True)
class RawDays:
    days: int


@dataclasses.dataclass(frozen=True)
class RawMicros:
    us: int


def _districts() -> tuple[dict[str, Any], ...]:
    rows = [{"district": d, "district_code": f"35020{i}", "name_zh": f"区{i}",
             "area_km2": 50.0 + 37.5 * i} for i, d in enumerate(DISTRICTS)]
    rows.append({"district": "Nowhere", "district_code": "01", "name_zh": None,
                 "area_km2": None})
    return tuple(rows)


def base_world(variant: str, messy: bool, units: int = 24) -> World:
    """Small base tables; every unit stays within every bound of ``variant``.

    ``laplace``: 0-2 loans per unit (a loans self-join then touches at most 4 groups);
    ``gaussian``: 0-1 loan per unit (at most 1 group). ``messy`` adds NULLs, NaN,
    out-of-bound values and odd strings to the base rows themselves.
    """
    rng = random.Random(f"{variant}-{messy}")
    max_loans = 2 if variant == "laplace" else 1
    persons: Rows = []
    loans: Rows = []
    for i in range(units):
        uid = f"p{i:03d}"

        def maybe(value: Any, odd: Any = None, p: float = 0.15) -> Any:
            return odd if messy and rng.random() < p else value

        persons.append({
            "person_id": uid,
            "district": maybe(DISTRICTS[i % len(DISTRICTS)], rng.choice([None, "Nowhere"])),
            "gender": maybe(rng.choice(GENDERS)),
            "education": maybe(rng.choice(EDUCATION), "none"),
            "employed": maybe(rng.random() < 0.6),
            "age": maybe(rng.randint(18, 90), rng.choice([None, 7, 120])),
            "income": maybe(rng.randint(0, 400_000) * 5, rng.choice([None, -10, 5_000_000])),
            "credit_score": maybe(rng.randint(300, 850), rng.choice([None, 0, 900])),
            "balance": maybe(round(rng.uniform(-5000, 5000), 3),
                             rng.choice([None, float("nan"), 1e6])),
            "city": maybe(CITIES[i % 3], rng.choice([None, "5", "01", ""])),
            "registered_on": maybe(dt.date(2000, 1, 1) + dt.timedelta(days=rng.randint(0, 9000))),
            "seen_at": maybe(dt.datetime(2020, 1, 1) + dt.timedelta(minutes=rng.randint(0, 10**6))),
        })
        for _ in range(rng.randint(0, max_loans)):
            loans.append({
                "person_id": uid,
                "amount": maybe(rng.randint(1, 400) * 1000, rng.choice([None, -1, 10**7])),
                "rate": maybe(round(rng.uniform(0.01, 0.2), 4), rng.choice([None, float("nan")])),
                "installments": maybe(rng.randint(1, 360), None),
                "term_months": maybe(rng.choice(TERMS), rng.choice([None, 7])),
                "purpose": maybe(rng.choice(PURPOSES), None),
                "status": maybe(rng.choice(STATUSES), rng.choice([None, "1"])),
                "issued_on": maybe(dt.date(2018, 1, 1) + dt.timedelta(days=rng.randint(0, 5) * 90)),
            })
    # a borrower with no person row (LEFT JOIN coverage)
    loans.append({"person_id": "q000", "amount": 5000, "rate": 0.05, "installments": 12,
                  "term_months": 12, "purpose": "auto", "status": "current",
                  "issued_on": dt.date(2019, 1, 1)})
    return World(f"{variant}/{'messy' if messy else 'clean'}", tuple(persons), tuple(loans),
                 _districts())


# -- adversarial units ----------------------------------------------------------------

ADV = "zz_adv"
INT_MAX = {"int16": 2**15 - 1, "int32": 2**31 - 1, "int64": 2**63 - 1}
INT_MIN = {"int16": -(2**15), "int32": -(2**31), "int64": -(2**63)}
DATE_MAX = RawDays(2147483646)  # 5881580-07-10, DuckDB's largest finite DATE
DATE_MIN = RawDays(-2147483646)  # 5877642-06-25 (BC)
DATE_INF = RawDays(2**31 - 1)  # DuckDB reads it as 'infinity'
TS_MAX = RawMicros(9223372036854775806)  # 294247-01-10 04:00:54.775806
TS_MIN = RawMicros(-9223372022400000000)  # 290309-12-22 (BC)


def _bounds(pol: Policy, table: str, col: str) -> tuple[float, float]:
    b = pol.tables[table].columns[col].bounds
    assert b is not None
    return b


def _measures(pol: Policy, table: str, pick: Callable[[str, str, float, float], Any]) -> dict:
    out = {}
    for c in SPECS[table].columns:
        cp = pol.tables[table].columns.get(c.name)
        if cp is not None and cp.bounds:
            lo, hi = cp.bounds
            out[c.name] = pick(c.name, c.type, lo, hi)
    return out


def _typed(kind: str, value: float) -> Any:
    if kind == "float64":
        return float(value)
    v = int(value)
    return max(INT_MIN[kind], min(INT_MAX[kind], v))


def loan(**kw: Any) -> dict[str, Any]:
    row = {"person_id": ADV, "amount": 1000, "rate": 0.05, "installments": 12, "term_months": 12,
           "purpose": "auto", "status": "current", "issued_on": dt.date(2019, 1, 1)}
    row.update(kw)
    return row


def person(**kw: Any) -> dict[str, Any]:
    row = {"person_id": ADV, "district": "Siming", "gender": "F", "education": "bachelor",
           "employed": True, "age": 40, "income": 100_000, "credit_score": 600,
           "balance": 0.0, "city": "Xiamen", "registered_on": dt.date(2010, 1, 1),
           "seen_at": dt.datetime(2021, 1, 1)}
    row.update(kw)
    return row


def adversaries(variant: str) -> list[tuple[str, Rows, Rows]]:
    """(name, persons rows, loans rows) of one extra unit; simplest first."""
    pol = policy(variant)
    rows = pol.tables["loans"].max_rows_per_unit

    def at(which: int) -> Callable[[str, str, float, float], Any]:
        return lambda name, kind, lo, hi: _typed(kind, (lo, hi)[which])

    def beyond(name: str, kind: str, lo: float, hi: float) -> Any:
        return _typed(kind, hi * 2 + 1)

    def below(name: str, kind: str, lo: float, hi: float) -> Any:
        return _typed(kind, lo - (hi - lo) - 1)

    def type_max(name: str, kind: str, lo: float, hi: float) -> Any:
        return float("inf") if kind == "float64" else INT_MAX[kind]

    def type_min(name: str, kind: str, lo: float, hi: float) -> Any:
        return float("-inf") if kind == "float64" else INT_MIN[kind]

    def huge(name: str, kind: str, lo: float, hi: float) -> Any:
        return 1.7e308 if kind == "float64" else INT_MAX[kind] - 1

    def nan_or_zero(name: str, kind: str, lo: float, hi: float) -> Any:
        return float("nan") if kind == "float64" else 0

    def negative(name: str, kind: str, lo: float, hi: float) -> Any:
        return -1.5 if kind == "float64" else -1

    out: list[tuple[str, Rows, Rows]] = []

    def add(name: str, pick: Callable[..., Any], n_loans: int, p_extra: dict | None = None,
            l_extra: dict | None = None, n_persons: int = 1) -> None:
        ps = [person(**{**_measures(pol, "persons", pick), **(p_extra or {})})
              for _ in range(n_persons)]
        ls = [loan(**{**_measures(pol, "loans", pick), **(l_extra or {})})
              for _ in range(n_loans)]
        out.append((name, ps, ls))

    add("at_upper_bounds", at(1), rows)
    add("at_lower_bounds", at(0), rows, {"employed": False, "gender": "M"},
        {"status": "default", "term_months": 360})
    add("beyond_bounds_more_rows", beyond, rows + 5, n_persons=3)
    add("below_bounds", below, rows + 1, {"district": "Jimei"}, {"purpose": "business"})
    add("type_max", type_max, rows, {"registered_on": DATE_MAX, "seen_at": TS_MAX,
                                     "city": "5", "district": "5"},
        {"issued_on": DATE_MAX, "status": "1", "term_months": INT_MAX["int16"]})
    add("type_min", type_min, rows, {"registered_on": DATE_MIN, "seen_at": TS_MIN,
                                     "city": "01", "district": "01"},
        {"issued_on": DATE_MIN, "purpose": "01", "term_months": INT_MIN["int16"]})
    add("huge_finite", huge, rows, {"registered_on": DATE_INF, "seen_at": TS_MAX},
        {"issued_on": DATE_INF})
    add("nan_zero_epoch", nan_or_zero, rows, {"registered_on": dt.date(1, 1, 1),
                                              "seen_at": dt.datetime(1, 1, 1), "city": ""},
        {"issued_on": dt.date(1, 1, 1), "term_months": 0})
    add("negative", negative, rows, {"district": None, "employed": None},
        {"status": "DEFAULT", "term_months": -6})
    nulls_p = {c.name: None for c in SPECS["persons"].columns if c.name != "person_id"}
    nulls_l = {c.name: None for c in SPECS["loans"].columns if c.name != "person_id"}
    out.append(("all_null", [person(**nulls_p)], [loan(**nulls_l) for _ in range(rows)]))
    # as many groups as possible: every loan row in a different group of every key
    many = []
    for i in range(max(rows * 3, 30)):
        many.append(loan(amount=_typed("int64", _bounds(pol, "loans", "amount")[1]),
                          rate=0.25, installments=360, term_months=TERMS[i % len(TERMS)],
                          purpose=PURPOSES[i % len(PURPOSES)], status=STATUSES[i % len(STATUSES)],
                          issued_on=dt.date(1990, 1, 1) + dt.timedelta(days=37 * i)))
    persons = [person(district=d, city=f"c{i}", education=EDUCATION[i % 5],
                       income=_typed("int64", _bounds(pol, "persons", "income")[1]),
                       age=90, balance=-5000.0, credit_score=850,
                       seen_at=dt.datetime(2000 + i, 1, 1))
               for i, d in enumerate(DISTRICTS)]
    out.append(("many_groups", persons, many))
    out.append(("person_without_loans", [person(**_measures(pol, "persons", at(1)))], []))
    out.append(("loans_without_person", [], [
        loan(**_measures(pol, "loans", at(1)), issued_on=dt.date(2000 + i, 1, 1))
        for i in range(rows + 2)]))
    return out


def neighbours(variant: str, messy: bool) -> list[tuple[str, World]]:
    """D' = D + one adversarial unit, and D'' = D - one existing unit."""
    base = base_world(variant, messy)
    out = [(name, base.plus(f"{base.name}+{name}", ps, ls))
           for name, ps, ls in adversaries(variant)]
    counts: dict[str, int] = {}
    for r in base.loans:
        counts[r["person_id"]] = counts.get(r["person_id"], 0) + 1
    busiest = max(sorted(counts), key=lambda u: counts[u])
    idle = next(r["person_id"] for r in base.persons if r["person_id"] not in counts)
    for label, unit in (("busiest", busiest), ("without_loans", idle)):
        out.append((f"minus_{label}", base.minus(f"{base.name}-{unit}", unit)))
    return out


# -- engines --------------------------------------------------------------------------


def build_engine(world: World, order: Callable[[list], list] | None = None) -> Engine:
    """A locked engine holding ``world`` (``order`` may permute the rows first)."""
    eng = Engine(memory_limit="256MB", threads=1)
    for name in ("persons", "loans", "districts"):
        spec = SPECS[name]
        table = world.table(name)
        if order is not None:
            table = table.take(pa.array(order(list(range(table.num_rows))), pa.int64()))
        eng.load_arrow(f"{name}_v1", spec.arrow_schema(), [table], name, 1,
                       privacy_unit=spec.privacy_unit)
    eng.lock()
    return eng


_ENGINES: dict[tuple[str, bool, str], Engine] = {}


def engine(variant: str, messy: bool, which: str | None) -> Engine:
    """The base engine (``which`` None) or a neighbour's, built once and reused."""
    key = (variant, messy, which or "")
    if key not in _ENGINES:
        if which is None:
            world = base_world(variant, messy)
        else:
            world = dict(neighbours(variant, messy))[which]
        _ENGINES[key] = build_engine(world)
    return _ENGINES[key]


# -- running a query through the real path ---------------------------------------------


class Recorder:
    """Wraps a real Engine; keeps the exact tables ``execute`` returned: the answer's, then
    the count of units a row bound cut (``CheckedQuery.cut_sql``) if there is one."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.results: list[pa.Table] = []
        self.executed: list[str] = []

    @property
    def exact(self) -> pa.Table | None:
        return self.results[0] if self.results else None

    @property
    def cut(self) -> int | None:
        return self.results[1].column(0)[0].as_py() if len(self.results) > 1 else None

    def execute(self, sql: str, params: list[object] | None = None,
                timeout_s: float | None = None) -> pa.Table:
        self.executed.append(sql)
        self.results.append(self.engine.execute(sql, params, timeout_s))
        return self.results[-1]

    def postprocess(self, sql: str, table: pa.Table) -> pa.Table:
        return self.engine.postprocess(sql, table)

    def is_unique(self, table: str, column: str) -> bool:
        return self.engine.is_unique(table, column)

    def column_range(self, table: str, column: str) -> tuple[float, float] | None:
        return self.engine.column_range(table, column)

    def __getattr__(self, name: str) -> Any:  # whatever else the gate asks of its executor
        return getattr(self.engine, name)


@dataclasses.dataclass
class Outcome:
    release: Release | None
    exact: pa.Table | None
    cut: int | None
    error: BaseException | None
    spent: float
    executed: bool
    seconds: float

    @property
    def refusal(self) -> Refusal | None:
        return self.error if isinstance(self.error, Refusal) else None

    def describe_error(self) -> str:
        e = self.error
        if e is None:
            return "no error"
        text = f"{type(e).__name__}"
        if isinstance(e, SandboxError):
            text += f" [{e.code}] {e}"
        else:
            text += f": {e}"
        cause = e.__cause__ or e.__context__
        if cause is not None and not isinstance(e, Refusal):
            text += f" (from {type(cause).__name__}: {str(cause)[:200]})"
        return text


def run(g: Gate, sql: str, eng: Engine, epsilon: float | None = None,
        budget: float = 1e9) -> Outcome:
    """``Gate.answer`` on a real engine with a fresh in-memory ledger; never raises."""
    ledger = InMemoryLedger(budget, 0.9)
    rec = Recorder(eng)
    t0 = time.monotonic()
    result = None
    error: BaseException | None = None
    try:
        result = g.answer(sql, member="m", ledger=ledger, executor=rec, epsilon=epsilon)
    except Exception as exc:  # every outcome is inspected by the caller
        error = exc
    seconds = time.monotonic() - t0
    return Outcome(result, rec.exact, rec.cut, error, ledger.balance("m").epsilon_spent,
                   bool(rec.executed), seconds)
