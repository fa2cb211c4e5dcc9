"""Deterministic synthetic city data (Xiamen, China) for demos, tests and benchmarks.

The product only ever sees encrypted data, but demos and benchmarks need
something realistic to ingest: plausible names, valid-looking PRC resident ID
numbers, correlated incomes, credit scores and loans. This module writes that
data as *plaintext* Parquet plus a YAML spec per dataset; encryption happens
later on ingest, exactly as it would for a real data owner's files.

Design constraints:

* Fully vectorised numpy, generated and written in chunks so the ``large``
  size (2M persons, >10M loans) runs in bounded memory and well under a minute.
* Deterministic: every chunk draws from ``np.random.default_rng([seed, chunk])``
  and cross-chunk state (ID counters, loan numbering) is advanced in chunk
  order, so the same seed and size always give byte-identical files.
* Uniqueness of person_id / id_number / phone / loan_id holds by construction
  (counters and keyed permutations), not by luck, so it needs no global dedup.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from .spec import ARROW_TYPES

__all__ = [
    "AS_OF",
    "BIRTH_REGION_CODES",
    "DISTRICTS",
    "NEXT_STEPS",
    "SIZES",
    "SPEC_TYPES",
    "generate",
    "spec_schema",
]

NEXT_STEPS = """
Develop for free, then spend once:
  1. write the analysis on dummy data (made-up rows with the scenario's schema; no budget):
     sandbox query --dummy --policy policies/credit_underwriting.yaml --member demo \\
         "SELECT district, count(*) AS people, avg(income) AS income FROM persons GROUP BY 1"
  2. check what it would cost and how accurate it would be (spends nothing):
     sandbox explain --policy policies/credit_underwriting.yaml "SELECT ..."
  3. run it once for real (charged to the member's budget):
     sandbox query --policy policies/credit_underwriting.yaml --member demo "SELECT ..."
In a notebook: Sandbox(workspace=..., dummy=True), sb.sql(..., dummy=True) or %%dpsql --dummy."""

SIZES: dict[str, int] = {"tiny": 2_000, "small": 100_000, "large": 2_000_000}
"""Number of persons per size; loans average ~5.2 per person."""

_AS_OF_YMD = (2026, 11, 23)
AS_OF = np.datetime64("{:04d}-{:02d}-{:02d}".format(*_AS_OF_YMD), "D")
"""Reference date: ages are exact completed years on this day."""

CHUNK_PERSONS = 250_000
ROW_GROUP_ROWS = 1_000_000

SPEC_TYPES: dict[str, pa.DataType] = ARROW_TYPES  # spec type name -> Arrow type in files


@dataclass(frozen=True)
class _District:
    name: str
    code: str
    name_zh: str
    area_km2: float
    population: int  # 2020 census, rounded; drives residence weights


DISTRICTS: tuple[_District, ...] = (
    _District("Siming", "350203", "思明区", 84.0, 1_073_000),
    _District("Haicang", "350205", "海沧区", 186.5, 582_000),
    _District("Huli", "350206", "湖里区", 73.8, 1_036_000),
    _District("Jimei", "350211", "集美区", 274.3, 1_036_000),
    _District("Tong'an", "350212", "同安区", 669.4, 857_000),
    _District("Xiang'an", "350213", "翔安区", 412.1, 695_000),
)

# Birth regions outside Xiamen (migrants make up a large share of residents).
_OTHER_BIRTH_REGIONS: tuple[tuple[str, float], ...] = (
    ("350102", 0.05),  # Fuzhou Gulou
    ("350502", 0.07),  # Quanzhou Licheng
    ("350503", 0.05),  # Quanzhou Fengze
    ("350582", 0.06),  # Jinjiang
    ("350602", 0.06),  # Zhangzhou Xiangcheng
    ("350681", 0.05),  # Longhai
    ("350802", 0.04),  # Longyan Xinluo
    ("350302", 0.03),  # Putian Chengxiang
    ("360102", 0.02),  # Nanchang Donghu
    ("430102", 0.02),  # Changsha Furong
    ("420102", 0.02),  # Wuhan Jiang'an
    ("510104", 0.02),  # Chengdu Jinjiang
    ("410105", 0.01),  # Zhengzhou Jinshui
)
BIRTH_REGION_CODES: tuple[str, ...] = tuple(d.code for d in DISTRICTS) + tuple(
    c for c, _ in _OTHER_BIRTH_REGIONS
)

# Surnames weighted towards southern Fujian (Minnan) frequencies.
_SURNAMES: tuple[tuple[str, float], ...] = (
    ("陈", 11.0), ("林", 9.0), ("黄", 6.0), ("张", 5.0), ("吴", 4.5), ("李", 4.5),
    ("王", 4.0), ("郑", 3.5), ("蔡", 3.0), ("杨", 3.0), ("许", 2.5), ("刘", 2.5),
    ("洪", 2.0), ("苏", 2.0), ("庄", 1.8), ("叶", 1.8), ("谢", 1.7), ("曾", 1.7),
    ("郭", 1.6), ("柯", 1.2), ("周", 1.2), ("卢", 1.1), ("方", 1.1), ("邱", 1.0),
    ("江", 1.0), ("何", 1.0), ("徐", 1.0), ("赖", 0.9), ("施", 0.9), ("朱", 0.9),
    ("胡", 0.8), ("傅", 0.8), ("孙", 0.8), ("高", 0.8), ("颜", 0.7), ("彭", 0.7),
    ("罗", 0.7), ("马", 0.6), ("赵", 0.6), ("詹", 0.6), ("邓", 0.6), ("魏", 0.6),
    ("戴", 0.5), ("潘", 0.5), ("唐", 0.5), ("康", 0.5), ("纪", 0.4), ("欧阳", 0.1),
)  # fmt: skip
_GIVEN_MALE = tuple(
    "伟强磊军勇杰涛斌超明辉鹏华建俊峰浩宇轩博文志国平海东晨泽然凯毅翔彬龙阳鑫锋健恒睿昊航达荣福清德坤"
)
_GIVEN_FEMALE = tuple(
    "芳娜敏静丽艳娟霞秀玲燕婷雪琳晶慧颖欣怡萱涵琪佳雅梦洁倩蓉璐瑶悦诗妍薇丹菲月淑美红梅兰凤秋桂珍莉"
)
_GIVEN_SHARED = tuple("子嘉思雨一文安晓心梓明佳宇晨清逸可")

_PHONE_PREFIXES: tuple[tuple[int, float], ...] = (
    (130, 2), (131, 2), (132, 2), (133, 2), (134, 2), (135, 4), (136, 4), (137, 4),
    (138, 5), (139, 5), (150, 3), (151, 3), (152, 3), (153, 2), (155, 2), (156, 2),
    (157, 2), (158, 3), (159, 4), (180, 2), (181, 2), (182, 3), (183, 2), (184, 1),
    (185, 2), (186, 3), (187, 3), (188, 3), (189, 3), (191, 1), (198, 2), (199, 2),
)  # fmt: skip

_EDUCATION = ("primary", "secondary", "vocational", "bachelor", "postgraduate")
_EDU_CUTS = np.array([-1.3, -0.2, 0.45, 1.6])
_EDU_LOG_INCOME = np.array([-0.45, -0.2, 0.0, 0.35, 0.7])

_TERMS = np.array([6, 12, 24, 36, 60, 120, 240, 360], dtype=np.int16)
_PURPOSES = ("consumer", "business", "mortgage", "auto", "education")
# P(term | purpose), rows follow _PURPOSES, columns follow _TERMS.
_TERM_GIVEN_PURPOSE = np.array(
    [
        [0.20, 0.35, 0.25, 0.20, 0.00, 0.00, 0.00, 0.00],
        [0.00, 0.25, 0.25, 0.25, 0.15, 0.10, 0.00, 0.00],
        [0.00, 0.00, 0.00, 0.00, 0.00, 0.15, 0.35, 0.50],
        [0.00, 0.10, 0.30, 0.35, 0.25, 0.00, 0.00, 0.00],
        [0.00, 0.20, 0.30, 0.30, 0.20, 0.00, 0.00, 0.00],
    ]
)
_PURPOSE_LOG_AMOUNT = np.log([30_000, 250_000, 1_100_000, 140_000, 40_000])
_PURPOSE_RATE = np.array([0.085, 0.065, 0.038, 0.055, 0.045])
_STATUSES = ("current", "repaid", "overdue", "default")

_REGISTERED_RANGE = (np.datetime64("2005-01-01", "D"), np.datetime64("2026-06-30", "D"))
_ISSUED_RANGE = (np.datetime64("2015-01-01", "D"), np.datetime64("2026-10-31", "D"))
_ADULT_DAYS = 6575  # ~18 years; nobody registers or borrows before adulthood

_ID_WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2])
_ID_CHECK = np.array(list("10X98765432"))
_ID_SEQ_SLOTS = 499  # per (region, birth date, gender): odd 001..997 / even 002..998

_MAX_AGE = 90

# ----------------------------------------------------------------------------
# Dataset specs: the single source of truth for both YAML and Parquet schemas.
# ----------------------------------------------------------------------------

_Column = tuple[str, str, str, str, str]  # name, type, role, grade, description

_PERSONS_COLUMNS: tuple[_Column, ...] = (
    ("person_id", "string", "privacy_unit", "important",
     "Pseudonymous person key; one row per person, referenced by loans."),
    ("name", "string", "identifier", "core", "Full name in Han characters."),
    ("id_number", "string", "identifier", "core",
     "18-digit PRC resident identity number (GB 11643-1999)."),
    ("phone", "string", "identifier", "core", "11-digit mainland mobile number."),
    ("district", "string", "quasi_identifier", "general",
     "Xiamen district of residence (pinyin)."),
    ("age", "int16", "quasi_identifier", "important", "Age in completed years."),
    ("gender", "string", "quasi_identifier", "general", "F or M."),
    ("education", "string", "quasi_identifier", "general",
     "Highest education level attained."),
    ("income", "int64", "sensitive", "core", "Annual income in yuan."),
    ("credit_score", "int16", "sensitive", "core", "Credit score, 300-850."),
    ("employed", "bool", "attribute", "general", "Currently employed."),
    ("registered_on", "date", "attribute", "general",
     "Date the person was registered with the bureau."),
)  # fmt: skip
_LOANS_COLUMNS: tuple[_Column, ...] = (
    ("loan_id", "string", "identifier", "core", "Loan contract number."),
    ("person_id", "string", "privacy_unit", "important",
     "Borrower; references persons.person_id."),
    ("amount", "int64", "sensitive", "core", "Principal in yuan."),
    ("term_months", "int16", "attribute", "general", "Contract term in months."),
    ("rate", "float64", "sensitive", "important", "Annual interest rate (0.05 = 5%)."),
    ("purpose", "string", "attribute", "general", "Declared purpose of the loan."),
    ("status", "string", "sensitive", "important",
     "Repayment status: current, repaid, overdue or default."),
    ("issued_on", "date", "attribute", "general", "Date the loan was issued."),
)  # fmt: skip
_DISTRICTS_COLUMNS: tuple[_Column, ...] = (
    ("district", "string", "attribute", "general", "District name (pinyin)."),
    ("district_code", "string", "attribute", "general",
     "6-digit administrative division code (GB/T 2260)."),
    ("name_zh", "string", "attribute", "general", "District name in Chinese."),
    ("area_km2", "float64", "attribute", "general", "Approximate land area in km²."),
)  # fmt: skip

_DATASETS: dict[str, dict[str, Any]] = {
    "persons": {
        "title": "Resident persons (synthetic)",
        "description": "One row per adult resident of Xiamen with identity, "
        "contact, demographic and financial attributes. Synthetic data.",
        "owner": "Xiamen Big Data Bureau (市大数据管理局)",
        "public": False,
        "columns": _PERSONS_COLUMNS,
    },
    "loans": {
        "title": "Personal loans (synthetic)",
        "description": "One row per loan contract issued to a resident, "
        "with amount, terms and repayment status. Synthetic data.",
        "owner": "Xiamen Local Financial Supervision Bureau (市地方金融监督管理局)",
        "public": False,
        "columns": _LOANS_COLUMNS,
    },
    "districts": {
        "title": "Xiamen districts",
        "description": "Public lookup table of Xiamen's six administrative "
        "districts with codes and land area.",
        "owner": "Xiamen Municipal Bureau of Statistics (市统计局)",
        "public": True,
        "columns": _DISTRICTS_COLUMNS,
    },
}


def spec_schema(dataset: str) -> pa.Schema:
    """Arrow schema of a dataset, derived from its spec so the two cannot drift."""
    cols = _DATASETS[dataset]["columns"]
    return pa.schema([pa.field(c[0], SPEC_TYPES[c[1]], nullable=False) for c in cols])


def _spec(dataset: str, seed: int, size: str) -> dict[str, Any]:
    meta = _DATASETS[dataset]
    return {
        "spec_version": 1,
        "dataset": dataset,
        "title": meta["title"],
        "description": meta["description"],
        "owner": meta["owner"],
        "source": f"sandbox demo-data generator, seed {seed}, size {size}",
        "public": meta["public"],
        "columns": [
            {"name": n, "type": t, "role": r, "grade": g, "description": d}
            for n, t, r, g, d in meta["columns"]
        ],
    }


# ----------------------------------------------------------------------------
# Small vectorised helpers
# ----------------------------------------------------------------------------


def _probs(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays: cheap keyed hashing, wraps by design."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _permute(idx: np.ndarray, domain: int, key: int) -> np.ndarray:
    """Keyed bijection on [0, domain): Feistel network plus cycle walking.

    Gives unique but random-looking numbers (phone suffixes) without any
    global state, so chunks stay independent yet never collide.
    """
    half = (max(int(domain - 1).bit_length(), 2) + 1) // 2
    mask = np.uint64((1 << half) - 1)
    keys = _mix64(np.arange(4, dtype=np.uint64) + np.uint64(key & 0xFFFFFFFF) * np.uint64(4))

    def once(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & mask
        for k in keys:
            left, right = right, left ^ (_mix64(right ^ k) & mask)
        return (left << np.uint64(half)) | right

    out = once(idx.astype(np.uint64))
    bad = out >= np.uint64(domain)
    while bad.any():
        out[bad] = once(out[bad])
        bad = out >= np.uint64(domain)
    return out.astype(np.int64)


def _ymd_days(year: np.ndarray, month: int, day: int) -> np.ndarray:
    """Days since 1970-01-01 of (year, month, day), vectorised over year."""
    months = (year.astype(np.int64) - 1970) * 12 + (month - 1)
    return months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64) + (day - 1)


def _uniform_days(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Uniform integer day in [lo, hi] per row; lo is clamped to hi so ranges stay valid."""
    lo = np.minimum(lo, hi)
    return lo + np.floor(rng.random(lo.shape[0]) * (hi - lo + 1)).astype(np.int64)


def _categorical(rng: np.random.Generator, weights: Sequence[np.ndarray], n: int) -> np.ndarray:
    """One draw per row from unnormalised per-row weight columns.

    Walks the columns with a running sum instead of building (n, k) matrices,
    which would dominate peak memory for million-row loan chunks.
    """
    total = np.zeros(n)
    for w in weights:
        total += w
    target = rng.random(n) * total
    out = np.zeros(n, dtype=np.int64)
    cum = np.zeros(n)
    for w in weights[:-1]:
        cum += w
        out += target >= cum
    return out


def _categorical_given(rng: np.random.Generator, cond: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Draw per row from ``table[cond[i]]`` (rows are probability vectors)."""
    u = rng.random(cond.size)
    cdf = np.cumsum(table, axis=1)
    out = np.empty(cond.size, dtype=np.int64)
    for k in range(table.shape[0]):
        mask = cond == k
        out[mask] = np.searchsorted(cdf[k], u[mask] * cdf[k, -1], side="right")
    return np.minimum(out, table.shape[1] - 1)


def _labels(values: Sequence[str], codes: np.ndarray) -> pa.Array:
    """Materialise category codes as a plain (non-dictionary) string array."""
    return pa.array(list(values), type=pa.string()).take(pa.array(codes))


def _seq_ids(prefix: str, start: int, n: int, width: int) -> pa.Array:
    """Zero-padded sequential keys (P0000001); global offsets make them unique."""
    nums = pa.array(np.arange(start + 1, start + n + 1, dtype=np.int64))
    padded = pc.utf8_lpad(nums.cast(pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(prefix, padded, "")


def _days_to_date32(days: np.ndarray) -> pa.Array:
    """Days since epoch -> date32, the type the spec's ``date`` maps to."""
    return pa.array(days.astype("datetime64[D]"), type=pa.date32())


# ----------------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------------

_AGES = np.arange(18, _MAX_AGE + 1)
_AGE_P = _probs(
    np.interp(_AGES, [18, 22, 28, 35, 45, 55, 65, 75, 85, 90],
              [0.9, 1.3, 1.6, 1.6, 1.35, 1.15, 0.8, 0.45, 0.15, 0.05])
)  # fmt: skip
_FIRST_BIRTH_DAY = int(_ymd_days(np.array([_AS_OF_YMD[0] - _MAX_AGE - 1]), *_AS_OF_YMD[1:])[0]) + 1
_N_BIRTH_DAYS = int(AS_OF.astype(np.int64)) - _FIRST_BIRTH_DAY + 1


def _zero_id_counts() -> np.ndarray:
    return np.zeros(len(BIRTH_REGION_CODES) * _N_BIRTH_DAYS * 2, dtype=np.int32)


@dataclass
class _State:
    """Cross-chunk state; advanced strictly in chunk order for determinism."""

    seed: int
    persons_done: int = 0
    loans_done: int = 0
    # IDs issued so far per (birth region, birth day, gender): keeps id_number unique.
    id_counts: np.ndarray = field(default_factory=_zero_id_counts)


def _id_numbers(state: _State, region: np.ndarray, birth: np.ndarray, male: np.ndarray) -> pa.Array:
    """Valid GB 11643-1999 numbers, unique via per-(region, date, gender) counters."""
    group = (region * _N_BIRTH_DAYS + (birth - _FIRST_BIRTH_DAY)) * 2 + male
    order = np.argsort(group, kind="stable")
    sorted_g = group[order]
    run_start = np.r_[0, np.flatnonzero(np.diff(sorted_g)) + 1]
    run_len = np.diff(np.r_[run_start, sorted_g.size])
    rank = np.empty_like(group)
    rank[order] = np.arange(sorted_g.size) - np.repeat(run_start, run_len)
    counter = state.id_counts[group] + rank
    if counter.size and counter.max() >= _ID_SEQ_SLOTS:
        raise RuntimeError("ID sequence space exhausted for a (region, birth date) group")
    state.id_counts[sorted_g[run_start]] += run_len.astype(np.int32)  # keys are unique
    # Start each group at a keyed pseudo-random slot so sequences don't all begin at 001.
    offset = _mix64(group.astype(np.uint64) ^ np.uint64(state.seed & 0xFFFFFFFF)) % np.uint64(
        _ID_SEQ_SLOTS
    )
    slot = (counter + offset.astype(np.int64)) % _ID_SEQ_SLOTS
    seq = 2 * slot + np.where(male == 1, 1, 2)

    dt = birth.astype("datetime64[D]")
    year = dt.astype("datetime64[Y]").astype(np.int64) + 1970
    month_start = dt.astype("datetime64[M]")
    month = month_start.astype(np.int64) % 12 + 1
    day = (dt - month_start.astype("datetime64[D]")).astype(np.int64) + 1
    region_num = np.array([int(c) for c in BIRTH_REGION_CODES], dtype=np.int64)[region]
    body = region_num * 10**11 + (year * 10_000 + month * 100 + day) * 1_000 + seq
    total = np.zeros(body.size, dtype=np.int64)
    rest = body.copy()
    for w in _ID_WEIGHTS[::-1]:
        total += (rest % 10) * w
        rest //= 10
    check = _ID_CHECK[total % 11]
    return pc.binary_join_element_wise(
        pa.array(body).cast(pa.string()), pa.array(check, type=pa.string()), ""
    )


def _names(rng: np.random.Generator, male: np.ndarray) -> pa.Array:
    """Surname + 1-2 gendered given-name characters, joined in Arrow (no Python loop)."""
    n = male.size
    sur_idx = rng.choice(len(_SURNAMES), n, p=_probs([w for _, w in _SURNAMES]))
    pools = [
        pa.array(list(_GIVEN_FEMALE + _GIVEN_SHARED), type=pa.string()),
        pa.array(list(_GIVEN_MALE + _GIVEN_SHARED), type=pa.string()),
    ]
    sizes = np.array([len(p) for p in pools])
    # First char: gendered or shared pool; second char present for ~75% of people.
    g1 = np.floor(rng.random(n) * sizes[male]).astype(np.int64)
    g2 = np.floor(rng.random(n) * sizes[male]).astype(np.int64)
    two = rng.random(n) < 0.75
    g2 = np.where(two & (g2 == g1), (g2 + 1) % sizes[male], g2)  # avoid 伟伟-style dupes
    both = pa.concat_arrays(pools)
    base = np.where(male == 1, len(pools[0]), 0)
    first = both.take(pa.array(base + g1))
    second = both.take(pa.array(base + g2))
    second = pc.if_else(pa.array(two), second, pa.scalar("", pa.string()))
    surnames = _labels([s for s, _ in _SURNAMES], sur_idx)
    return pc.binary_join_element_wise(surnames, first, second, "")


def _persons_chunk(
    rng: np.random.Generator, state: _State, n: int
) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """One chunk of persons plus the hidden attributes loans are correlated with."""
    start = state.persons_done
    n_d = len(DISTRICTS)
    district = rng.choice(n_d, n, p=_probs([d.population for d in DISTRICTS]))
    age = rng.choice(_AGES, n, p=_AGE_P).astype(np.int64)
    male = (rng.random(n) < 0.515).astype(np.int64)

    # Exact age on AS_OF: born after the (age+1)th-birthday cutoff, on or before the age-th.
    year, month, day = _AS_OF_YMD
    upper = _ymd_days(year - age, month, day)
    lower = _ymd_days(year - age - 1, month, day) + 1
    birth = _uniform_days(rng, lower, upper)

    # Birth region: mostly the residence district, otherwise elsewhere in Xiamen/China.
    other_p = _probs([0.12] + [w for _, w in _OTHER_BIRTH_REGIONS])
    other = rng.choice(other_p.size, n, p=other_p)
    other_xm = rng.choice(n_d, n, p=_probs([d.population for d in DISTRICTS]))
    born_elsewhere = np.where(other == 0, other_xm, n_d + other - 1)
    region = np.where(rng.random(n) < 0.55, district, born_elsewhere)

    edu_z = rng.standard_normal(n) - 0.03 * (age - 40)
    edu = np.searchsorted(_EDU_CUTS, edu_z)
    p_emp = np.interp(
        age, [18, 22, 23, 59, 60, 64, 65, 90], [0.35, 0.5, 0.85, 0.88, 0.5, 0.4, 0.12, 0.02]
    )
    employed = rng.random(n) < p_emp
    log_inc = (
        np.log(70_000)
        + _EDU_LOG_INCOME[edu]
        - 0.0008 * (age - 45) ** 2
        - np.where(employed, 0.0, np.where(age >= 60, 0.5, 1.1))
        + 0.55 * rng.standard_normal(n)
    )
    income = np.maximum(np.rint(np.exp(log_inc)), 1_200).astype(np.int64)
    z_inc = (log_inc - 11.0) / 0.7
    credit = 615 + 50 * z_inc + 1.5 * np.minimum(age - 18, 40) + 55 * rng.standard_normal(n)
    credit = np.clip(np.rint(credit), 300, 850).astype(np.int16)
    registered = _uniform_days(
        rng,
        np.maximum(birth + _ADULT_DAYS, _REGISTERED_RANGE[0].astype(np.int64)),
        np.full(n, _REGISTERED_RANGE[1].astype(np.int64)),
    )

    prefixes = np.array([p for p, _ in _PHONE_PREFIXES], dtype=np.int64)
    prefix = prefixes[rng.choice(prefixes.size, n, p=_probs([w for _, w in _PHONE_PREFIXES]))]
    suffix = _permute(np.arange(start, start + n), 10**8, state.seed)
    phone = pa.array(prefix * 10**8 + suffix).cast(pa.string())

    person_id = _seq_ids("P", start, n, 7)
    arrays = [
        person_id,
        _names(rng, male),
        _id_numbers(state, region, birth, male),
        phone,
        _labels([d.name for d in DISTRICTS], district),
        pa.array(age.astype(np.int16)),
        _labels(["F", "M"], male),
        _labels(_EDUCATION, edu),
        pa.array(income),
        pa.array(credit),
        pa.array(employed),
        _days_to_date32(registered),
    ]
    state.persons_done += n
    table = pa.Table.from_arrays(arrays, schema=spec_schema("persons"))
    hidden = {"age": age, "birth": birth, "log_inc": log_inc, "credit": credit.astype(np.float64)}
    return table, hidden


def _loans_chunk(
    rng: np.random.Generator, state: _State, person_id: pa.Array, persons: dict[str, np.ndarray]
) -> pa.Table:
    """Loans for one chunk of persons; attributes correlate with the borrower."""
    age, birth, log_inc, credit = (persons[k] for k in ("age", "birth", "log_inc", "credit"))
    n_p = age.size
    # Gamma-Poisson (negative binomial) count: most have a few, a handful dozens.
    heavy = np.exp(0.35 * (log_inc - 11.0))
    lam = rng.gamma(2.0, 4.5 * heavy / 2.0)
    count = np.minimum(1 + rng.poisson(lam), 80)
    owner = np.repeat(np.arange(n_p), count)
    owner = owner[rng.permutation(owner.size)]  # loan_id order is not person order
    n = owner.size

    a, inc, cs = age[owner], log_inc[owner], credit[owner]
    young, mid = (a < 30).astype(float), ((a >= 28) & (a <= 55)).astype(float)
    purpose = _categorical(
        rng,
        [
            np.full(n, 0.42),
            0.06 + 0.08 * mid * (inc > 11.2),
            0.04 + 0.16 * mid,
            0.08 + 0.06 * mid,
            0.01 + 0.20 * young,
        ],
        n,
    )
    term = _TERMS[_categorical_given(rng, purpose, _TERM_GIVEN_PURPOSE)]

    log_amt = _PURPOSE_LOG_AMOUNT[purpose] + 0.6 * (inc - 11.0) + 0.7 * rng.standard_normal(n)
    amount = np.clip(np.rint(np.exp(log_amt) / 100) * 100, 1_000, 2_000_000).astype(np.int64)
    rate = _PURPOSE_RATE[purpose] + 0.10 * (700 - cs) / 400 + 0.008 * rng.standard_normal(n)
    rate = np.round(np.clip(rate, 0.03, 0.18), 4)

    issued_lo = np.maximum(birth[owner] + _ADULT_DAYS, _ISSUED_RANGE[0].astype(np.int64))
    issued_hi = np.full(n, _ISSUED_RANGE[1].astype(np.int64))
    issued_lo = np.minimum(issued_lo, issued_hi)
    # Credit grew over the decade: skew issue dates towards recent years.
    span = issued_hi - issued_lo + 1
    issued = issued_lo + np.floor(rng.random(n) ** 0.75 * span).astype(np.int64)

    matured = issued + (term.astype(np.int64) * 30.44).astype(np.int64) < AS_OF.astype(np.int64)
    p_default = 0.004 + 0.12 / (1 + np.exp((cs - 540) / 30))
    p_overdue = 0.01 + 0.15 / (1 + np.exp((cs - 590) / 35))
    u = rng.random(n)
    status = np.where(
        matured,
        np.where(u < p_default, 3, 1),
        np.select(
            [u < 0.7 * p_default, u < 0.7 * p_default + p_overdue, u > 0.9],
            [3, 2, 1],
            default=0,
        ),
    )

    arrays = [
        _seq_ids("L", state.loans_done, n, 9),
        person_id.take(pa.array(owner)),
        pa.array(amount),
        pa.array(term),
        pa.array(rate),
        _labels(_PURPOSES, purpose),
        _labels(_STATUSES, status),
        _days_to_date32(issued),
    ]
    state.loans_done += n
    return pa.Table.from_arrays(arrays, schema=spec_schema("loans"))


def _districts_table() -> pa.Table:
    return pa.Table.from_arrays(
        [
            pa.array([d.name for d in DISTRICTS], type=pa.string()),
            pa.array([d.code for d in DISTRICTS], type=pa.string()),
            pa.array([d.name_zh for d in DISTRICTS], type=pa.string()),
            pa.array([d.area_km2 for d in DISTRICTS], type=pa.float64()),
        ],
        schema=spec_schema("districts"),
    )


class _RowGroupWriter:
    """Buffers chunks so row groups are ~ROW_GROUP_ROWS regardless of chunk size."""

    def __init__(self, path: pathlib.Path, schema: pa.Schema) -> None:
        self._writer = pq.ParquetWriter(path, schema, compression="zstd")
        self._pending: list[pa.Table] = []
        self._rows = 0

    def write(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._rows += table.num_rows
        while self._rows >= ROW_GROUP_ROWS:
            merged = pa.concat_tables(self._pending)
            self._writer.write_table(merged.slice(0, ROW_GROUP_ROWS), row_group_size=ROW_GROUP_ROWS)
            rest = merged.slice(ROW_GROUP_ROWS)
            self._pending, self._rows = [rest], rest.num_rows

    def close(self) -> None:
        if self._rows:
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=ROW_GROUP_ROWS)
        self._pending, self._rows = [], 0
        self._writer.close()


def _write_spec(path: pathlib.Path, spec: dict[str, Any]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        yaml.safe_dump(spec, fh, allow_unicode=True, sort_keys=False)


def generate(
    out_dir: pathlib.Path,
    size: str = "small",
    seed: int = 20261123,
    progress: Callable[[str, int], None] | None = None,
) -> list[pathlib.Path]:
    """Write persons/loans/districts Parquet files and their YAML specs into out_dir.

    Returns the written paths in the order persons.parquet, persons.yaml,
    loans.parquet, loans.yaml, districts.parquet, districts.yaml.
    ``progress(dataset, rows_so_far)`` is called after every chunk, so long
    ``large`` runs can report progress without this module printing anything.
    """
    if size not in SIZES:
        raise ValueError(f"unknown demo data size {size!r}; expected one of {sorted(SIZES)}")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = SIZES[size]
    state = _State(seed=seed)
    paths = {
        name: (out_dir / f"{name}.parquet", out_dir / f"{name}.yaml")
        for name in ("persons", "loans", "districts")
    }

    persons_w = _RowGroupWriter(paths["persons"][0], spec_schema("persons"))
    loans_w = _RowGroupWriter(paths["loans"][0], spec_schema("loans"))
    try:
        for chunk_idx, start in enumerate(range(0, total, CHUNK_PERSONS)):
            rng = np.random.default_rng([seed, chunk_idx])
            persons, hidden = _persons_chunk(rng, state, min(CHUNK_PERSONS, total - start))
            persons_w.write(persons)
            if progress:
                progress("persons", state.persons_done)
            person_id = persons.column("person_id").combine_chunks()
            loans_w.write(_loans_chunk(rng, state, person_id, hidden))
            if progress:
                progress("loans", state.loans_done)
    finally:
        persons_w.close()
        loans_w.close()

    pq.write_table(_districts_table(), paths["districts"][0], compression="zstd")
    if progress:
        progress("districts", len(DISTRICTS))

    written: list[pathlib.Path] = []
    for name, (parquet_path, yaml_path) in paths.items():
        _write_spec(yaml_path, _spec(name, seed, size))
        written += [parquet_path, yaml_path]
    return written
