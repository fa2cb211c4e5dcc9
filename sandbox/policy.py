"""Scenario policies: what one reviewed kind of use (一类场景) may see and ask.

A policy exposes tables (alias -> catalog dataset and version) and, per table,
only the columns it lists, each with a role: ``dimension`` (group and filter;
optional public ``keys``), ``measure`` (numeric with ``bounds``), ``filter``
(WHERE only). The table's privacy unit column is implied and may only be used
to join and in ``COUNT(DISTINCT unit)``. Everything not listed does not exist.

This module loads and checks policy files (every problem at once, with file:line); the
policy as data is ``sandbox.policy_model``, whose names are also reachable here. It is
pure: it validates against dataset specs handed in by the caller.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .policy_keys import key_fits, key_range, key_value, number
from .policy_model import (
    ALIAS_RE,
    BUDGET_KEYS,
    COLUMN_KEYS,
    DEFAULT_BUDGET_DELTA,
    DEFAULT_REFRESH,
    EPSILON_FLOOR,
    EXPORT_APPROVALS,
    EXPORT_KEYS,
    ID_RE,
    MAX_KEYS,
    MAX_ROWS_PER_UNIT_LIMIT,
    MECHANISMS,
    MIN_GROUP_COUNT_LIMIT,
    PRIVACY_KEYS,
    REFRESH,
    REVIEW_KEYS,
    ROLES,
    TABLE_KEYS,
    TOP_KEYS,
    UNIT,
    BudgetPolicy,
    ColumnPolicy,
    DatasetResolver,
    ExportParams,
    JoinPolicy,
    Policy,
    PolicyError,
    PrivacyParams,
    TablePolicy,
)
from .spec import NUMERIC_TYPES, DatasetSpec
from .yamlio import LineDict, LineList, line_of, load_yaml

__all__ = ["ALIAS_RE", "BUDGET_KEYS", "COLUMN_KEYS", "DEFAULT_BUDGET_DELTA", "DEFAULT_REFRESH",
           "EPSILON_FLOOR", "EXPORT_APPROVALS", "EXPORT_KEYS", "ID_RE", "MAX_KEYS",
           "MAX_ROWS_PER_UNIT_LIMIT", "MECHANISMS", "MIN_GROUP_COUNT_LIMIT",
           "PRIVACY_KEYS", "REFRESH", "REVIEW_KEYS", "ROLES", "TABLE_KEYS", "TOP_KEYS",
           "UNIT", "BudgetPolicy", "ColumnPolicy", "DatasetResolver", "ExportParams",
           "JoinPolicy", "Policy", "PolicyError", "PrivacyParams", "TablePolicy",
           "load_policy"]


class _Problems:
    """Every problem of one policy file, and what is broken by them: a later check that
    would only repeat an earlier problem (a join to a table whose dataset is missing, a
    comparison with an invalid value) is left out, so each problem is reported once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._found: list[tuple[int, str]] = []
        self.broken: set[str] = set()  # table aliases and alias.column names already reported

    def add(self, line: int, msg: str) -> None:
        self._found.append((line, msg))

    @property
    def items(self) -> list[str]:
        """``file:line: problem``, sorted by line (stable: same line, order found)."""
        return [f"{self.path}:{line}: {msg}"
                for line, msg in sorted(self._found, key=lambda x: x[0])]

    def unknown_keys(self, doc: LineDict, allowed: set[str], where: str) -> None:
        for key in doc:
            if key not in allowed:
                self.add(line_of(doc, key), f"unknown key '{key}' in {where} (allowed: "
                         f"{', '.join(sorted(allowed))})")


# YAML 1.1 reads an exponent number as text unless it has a dot and a signed exponent.
_EXPONENT_TEXT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)[eE][+-]?\d+")


def _got(value: Any) -> str:
    """What to say about a number YAML read as text (``1e-7``, ``1.5e7``): how to write it."""
    if isinstance(value, str) and _EXPONENT_TEXT.fullmatch(value.strip()):
        mantissa, exponent = value.strip().lower().split("e")
        mantissa = mantissa if "." in mantissa else mantissa + ".0"
        exponent = exponent if exponent[0] in "+-" else "+" + exponent
        return (f" (got the text '{value}': YAML reads a number with an exponent as text "
                f"unless it has a dot and a sign; write {mantissa}e{exponent})")
    return ""


def _mapping(doc: Any, key: str, p: _Problems, parent: LineDict,
             required: bool) -> LineDict | None:
    """The section ``key``: an empty one when absent and optional, None (reported) when it
    is missing or not a mapping, so that its keys are not reported missing one by one."""
    value = doc.get(key) if isinstance(doc, dict) else None
    if value is None:
        if required:
            p.add(parent.line, f"missing '{key}' section")
            return None
        return LineDict()
    if not isinstance(value, LineDict):
        p.add(line_of(parent, key), f"'{key}' must be a mapping")
        return None
    return value


def load_policy(path: Path, resolve: DatasetResolver) -> Policy:
    """Load a policy and check it against the catalog; every problem is reported at once."""
    raw = path.read_bytes() if path.is_file() else b""
    doc = load_yaml(path, "policy")
    p = _Problems(path)
    if not isinstance(doc, LineDict):
        raise PolicyError(f"{path}: a policy must be a YAML mapping", "see docs/policy.md")
    p.unknown_keys(doc, TOP_KEYS, "the policy")
    if doc.get("policy_version", 1) != 1:
        p.add(line_of(doc, "policy_version"), "policy_version must be 1")
    pid = doc.get("id")
    if not isinstance(pid, str) or not ID_RE.match(pid):
        p.add(line_of(doc, "id"), f"invalid or missing policy id {pid!r}: use lower-case "
              "letters, digits, '-' and '_'")
    title = doc.get("title")
    if not isinstance(title, str) or not title.strip():
        p.add(line_of(doc, "title"), "missing 'title'")
    purpose = doc.get("purpose", "")
    if not isinstance(purpose, str):
        p.add(line_of(doc, "purpose"), "'purpose' must be text")

    review = _mapping(doc, "review", p, doc, required=False) or LineDict()
    p.unknown_keys(review, REVIEW_KEYS, "review")

    tables: dict[str, TablePolicy] = {}
    tables_doc = _mapping(doc, "tables", p, doc, required=True)
    if tables_doc is None:
        tables_doc = LineDict()
    elif not tables_doc:
        p.add(line_of(doc, "tables"), "'tables' must expose at least one table")
    for alias, tdoc in tables_doc.items():
        table = _load_table(alias, tdoc, tables_doc, p, resolve)
        if table is not None:
            tables[alias] = table
        else:
            p.broken.add(alias)

    joins = _load_joins(doc, tables, p)
    privacy, checked = _load_privacy(doc, p)
    budget = _load_budget(doc, p, checked)
    export = _load_export(doc, p)

    if p.items:
        raise PolicyError(
            f"{len(p.items)} problem(s) in policy {path}: " + "; ".join(p.items),
            "fix the policy; see docs/policy.md", p.items,
        )
    assert privacy is not None and budget is not None
    return Policy(
        id=str(pid), title=str(title), purpose=str(purpose), tables=tables, joins=joins,
        privacy=privacy, budget=budget, review={k: review.get(k) for k in REVIEW_KEYS},
        source=str(path), content_hash=hashlib.sha256(raw).hexdigest(), export=export,
    )


def _load_table(alias: str, tdoc: Any, parent: LineDict, p: _Problems,
                resolve: DatasetResolver) -> TablePolicy | None:
    line = line_of(parent, alias)
    if not ALIAS_RE.match(alias):
        p.add(line, f"invalid table alias '{alias}': use lower-case letters, digits and '_'")
        return None
    if not isinstance(tdoc, LineDict):
        p.add(line, f"table '{alias}' must be a mapping with dataset and columns")
        return None
    p.unknown_keys(tdoc, TABLE_KEYS, f"table '{alias}'")
    dataset = tdoc.get("dataset")
    version = tdoc.get("version")
    bad_version = version is not None and (not isinstance(version, int) or
                                           isinstance(version, bool) or version < 1)
    if bad_version:
        # reported; the rest of the table is still checked (against the latest version)
        p.add(line_of(tdoc, "version"), f"table '{alias}': version must be a positive integer")
        version = None
    if not isinstance(dataset, str):
        p.add(line_of(tdoc, "dataset"), f"table '{alias}': missing 'dataset' (a catalog name)")
        return None
    resolved = resolve(dataset, version)
    if resolved is None and version is not None and (latest := resolve(dataset, None)):
        # a version the catalog does not hold: reported; the columns are still checked,
        # against the latest version
        p.add(line_of(tdoc, "version"), f"table '{alias}': dataset '{dataset}' version "
              f"{version} is not in the catalog (the latest is version {latest[1]}; see "
              "`sandbox dataset list`)")
        resolved, bad_version = latest, True
    if resolved is None:
        what = f"dataset '{dataset}'" + (f" version {version}" if version else "")
        p.add(line_of(tdoc, "dataset"), f"table '{alias}': {what} is not in the catalog "
              "(see `sandbox dataset list`)")
        return None
    spec, version = resolved
    unit = tdoc.get("privacy_unit")
    if spec.public:
        if unit is not None:
            p.add(line_of(tdoc, "privacy_unit"), f"table '{alias}': dataset '{dataset}' is "
                  "public and has no privacy unit")
    elif unit != spec.privacy_unit:
        p.add(line_of(tdoc, "privacy_unit"), f"table '{alias}': privacy_unit must be "
              f"'{spec.privacy_unit}', the column the catalog classifies as privacy_unit")
    mrpu = tdoc.get("max_rows_per_unit", 1)
    if spec.public:
        mrpu = 1
    elif not isinstance(mrpu, int) or isinstance(mrpu, bool) or \
            not 1 <= mrpu <= MAX_ROWS_PER_UNIT_LIMIT:
        p.add(line_of(tdoc, "max_rows_per_unit"), f"table '{alias}': max_rows_per_unit must "
              f"be an integer from 1 to {MAX_ROWS_PER_UNIT_LIMIT}")
        mrpu = 1

    columns: dict[str, ColumnPolicy] = {}
    cols_doc = tdoc.get("columns")
    if not isinstance(cols_doc, LineDict) or not cols_doc:
        p.add(line_of(tdoc, "columns"), f"table '{alias}': 'columns' must map column names "
              "to roles")
        cols_doc = LineDict()
    for cname, cdoc in cols_doc.items():
        col = _load_column(alias, cname, cdoc, cols_doc, spec, p)
        if col is not None:
            columns[cname] = col
        elif spec.privacy_unit != cname:
            p.broken.add(f"{alias}.{cname}")
    if not spec.public and spec.privacy_unit and unit == spec.privacy_unit:
        if spec.privacy_unit in cols_doc:
            p.add(line_of(cols_doc, spec.privacy_unit), f"table '{alias}': the privacy unit "
                  f"'{spec.privacy_unit}' is implied; do not list it under columns")
        columns[spec.privacy_unit] = ColumnPolicy(
            spec.privacy_unit, UNIT, spec.column(spec.privacy_unit).type,
            description=spec.column(spec.privacy_unit).description)
    description = tdoc.get("description", spec.description)
    if bad_version:
        return None
    return TablePolicy(alias, dataset, version, spec.public,
                       None if spec.public else spec.privacy_unit, int(mrpu), columns,
                       str(description))


def _load_column(alias: str, cname: str, cdoc: Any, parent: LineDict, spec: DatasetSpec,
                 p: _Problems) -> ColumnPolicy | None:
    line = line_of(parent, cname)
    where = f"column '{alias}.{cname}'"
    if isinstance(cdoc, str):  # shorthand: `district: dimension`
        cdoc = LineDict({"role": cdoc})
        cdoc.line, cdoc.key_lines = line, {"role": line}
    if not isinstance(cdoc, LineDict):
        p.add(line, f"{where}: give a role (dimension, measure or filter)")
        return None
    p.unknown_keys(cdoc, COLUMN_KEYS, where)
    try:
        cspec = spec.column(cname)
    except KeyError:
        p.add(line, f"{where}: dataset '{spec.name}' has no column '{cname}'")
        return None
    if cspec.role == "identifier":
        p.add(line, f"{where} is an identifier column (直接标识符) and can never be "
              "exposed; remove it from the policy")
        return None
    if cspec.role == "privacy_unit":
        return None  # reported by the caller (implied column)
    role = cdoc.get("role")
    if role not in ROLES:
        p.add(line_of(cdoc, "role"), f"{where}: unknown role {role!r} (allowed: "
              f"{', '.join(ROLES)})")
        return None
    numeric = cspec.type in NUMERIC_TYPES
    bounds = None
    if role == "measure":
        if not numeric:
            p.add(line_of(cdoc, "role"), f"{where}: a measure must be numeric, but the "
                  f"column is {cspec.type}; make it a dimension or a filter")
        b = cdoc.get("bounds")
        lo, hi = (number(b[0]), number(b[1])) if isinstance(b, list) and len(b) == 2 else \
            (None, None)
        if lo is None or hi is None:
            got = "".join(_got(x) for x in b) if isinstance(b, list) else ""
            p.add(line_of(cdoc, "bounds") if "bounds" in cdoc else cdoc.line,
                  f"{where}: a measure needs bounds: [lo, hi] with two numbers{got}")
        elif lo >= hi:
            p.add(line_of(cdoc, "bounds"), f"{where}: bounds are reversed or empty "
                  f"({lo:g} >= {hi:g}); write [lo, hi] with lo < hi")
        else:
            bounds = (float(lo), float(hi))
    elif "bounds" in cdoc:
        p.add(line_of(cdoc, "bounds"), f"{where}: only measures have bounds")
    keys = None
    if "keys" in cdoc:
        k = cdoc["keys"]
        if role != "dimension":
            p.add(line_of(cdoc, "keys"), f"{where}: only dimensions have public keys")
        elif isinstance(k, dict):
            keys = key_range(k, cspec.type, where, line_of(cdoc, "keys"), p)
        elif not isinstance(k, list) or not k or len(k) > MAX_KEYS:
            p.add(line_of(cdoc, "keys"), f"{where}: keys must be a list of 1 to {MAX_KEYS} "
                  "values")
        elif not all(key_fits(x, cspec.type) for x in k):
            p.add(line_of(cdoc, "keys"), f"{where}: every key must be a {cspec.type} value")
        elif len(set(map(str, k))) != len(k):
            p.add(line_of(cdoc, "keys"), f"{where}: keys repeat a value")
        else:
            keys = tuple(key_value(x, cspec.type) for x in k)
    desc = cdoc.get("description", cspec.description)
    return ColumnPolicy(cname, role, cspec.type, keys, bounds, str(desc))


def _load_joins(doc: LineDict, tables: dict[str, TablePolicy],
                p: _Problems) -> tuple[JoinPolicy, ...]:
    joins_doc = doc.get("joins")
    if joins_doc is None:
        return ()
    if not isinstance(joins_doc, LineList):
        p.add(line_of(doc, "joins"), "'joins' must be a list of [table.column, table.column]")
        return ()
    out = []
    for i, j in enumerate(joins_doc):
        line = joins_doc.item_lines[i]
        if not (isinstance(j, list) and len(j) == 2 and all(isinstance(x, str) for x in j)):
            p.add(line, "a join is a pair: [table.column, table.column]")
            continue
        if any(ref in p.broken or ref.partition(".")[0] in p.broken for ref in j):
            continue  # its table or column has a problem of its own, reported above
        sides = []
        for ref in j:
            t, _, c = ref.partition(".")
            tp = tables.get(t)
            if tp is None or c not in tp.columns:
                p.add(line, f"join side '{ref}' is not an exposed table.column")
                break
            sides.append((t, c))
        if len(sides) != 2:
            continue
        (lt, lc), (rt, rc) = sides
        left, right = tables[lt], tables[rt]
        if not left.public and not right.public:
            if lc != left.privacy_unit or rc != right.privacy_unit:
                p.add(line, f"join {j[0]} = {j[1]}: private tables may only be joined on "
                      "their privacy units")
                continue
            kind = "unit"
        elif left.public and right.public:
            p.add(line, f"join {j[0]} = {j[1]}: joins between two public tables are not "
                  "needed; join each to the private table")
            continue
        else:
            priv_t, priv_c = (lt, lc) if not left.public else (rt, rc)
            if tables[priv_t].columns[priv_c].role != "dimension":
                p.add(line, f"join {j[0]} = {j[1]}: a lookup join must use a dimension of "
                      f"'{priv_t}'")
                continue
            kind = "lookup"
        if left.columns[lc].type != right.columns[rc].type:
            p.add(line, f"join {j[0]} = {j[1]}: the columns have different types "
                  f"({left.columns[lc].type}, {right.columns[rc].type}); a join compares "
                  "like with like")
            continue
        out.append(JoinPolicy((lt, lc), (rt, rc), kind))
    return tuple(out)


def _positive(doc: LineDict, key: str, p: _Problems, where: str,
              floor: float | None = None) -> float | None:
    """A positive number (at least ``floor``), or None once the problem is reported."""
    raw = doc.get(key)
    value = number(raw)
    if value is None or value <= 0:
        p.add(line_of(doc, key), f"{where}.{key} must be a positive number{_got(raw)}")
        return None
    if floor is not None and value < floor:
        p.add(line_of(doc, key), f"{where}.{key} is {value:g}, below the floor of {floor:g}: "
              "noise that large overflows the engine's sums and says nothing; write at least "
              f"{floor:g}")
        return None
    return value


@dataclass(frozen=True)
class _Checked:
    """The privacy values that passed their own checks (None: invalid, already reported),
    for the budget's comparisons."""

    epsilon_default: float | None
    delta: float | None


def _load_privacy(doc: LineDict, p: _Problems) -> tuple[PrivacyParams | None, _Checked]:
    pd = _mapping(doc, "privacy", p, doc, required=True)
    if pd is None:
        return None, _Checked(None, None)
    p.unknown_keys(pd, PRIVACY_KEYS, "privacy")
    eps_default = _positive(pd, "epsilon_default", p, "privacy", EPSILON_FLOOR)
    eps_max = _positive(pd, "epsilon_max", p, "privacy", EPSILON_FLOOR)
    if eps_default is not None and eps_max is not None and eps_default > eps_max:
        p.add(line_of(pd, "epsilon_default"), "privacy.epsilon_default is larger than "
              "privacy.epsilon_max")
    delta = number(pd.get("delta", 1e-6))
    if delta is None or not 0 < delta <= 1e-3:
        p.add(line_of(pd, "delta"), "privacy.delta must be a number above 0 and at most 0.001 "
              f"(private group keys and Gaussian noise need it){_got(pd.get('delta'))}")
        delta = None
    mgpu = pd.get("max_groups_per_unit", 1)
    if not isinstance(mgpu, int) or isinstance(mgpu, bool) or not 1 <= mgpu <= 1000:
        p.add(line_of(pd, "max_groups_per_unit"), "privacy.max_groups_per_unit must be an "
              "integer from 1 to 1000")
        mgpu = 1
    mech = pd.get("mechanism", "laplace")
    if mech not in MECHANISMS:
        p.add(line_of(pd, "mechanism"), f"privacy.mechanism must be one of "
              f"{', '.join(MECHANISMS)}")
        mech = "laplace"
    checked = _Checked(eps_default, delta)
    if eps_default is None or eps_max is None or delta is None:
        return None, checked
    return PrivacyParams(eps_default, eps_max, float(delta), int(mgpu), str(mech)), checked


def _load_budget(doc: LineDict, p: _Problems, privacy: _Checked) -> BudgetPolicy | None:
    bd = _mapping(doc, "budget", p, doc, required=True)
    if bd is None:
        return None
    p.unknown_keys(bd, BUDGET_KEYS, "budget")
    eps = _positive(bd, "epsilon", p, "budget")
    if eps is not None and privacy.epsilon_default is not None and \
            eps < privacy.epsilon_default:
        p.add(line_of(bd, "epsilon"), "budget.epsilon is smaller than one query's "
              "privacy.epsilon_default")
    delta = number(bd.get("delta", DEFAULT_BUDGET_DELTA))
    if delta is None or not 0 <= delta < 1:
        p.add(line_of(bd, "delta"), f"budget.delta must be a number from 0 to 1"
              f"{_got(bd.get('delta'))}")
        delta = None
    elif privacy.delta is not None and delta < privacy.delta:
        p.add(line_of(bd, "delta"), "budget.delta is smaller than one query's privacy.delta")
    refresh = bd.get("refresh", DEFAULT_REFRESH)
    if refresh not in REFRESH:
        p.add(line_of(bd, "refresh"), f"budget.refresh must be one of {', '.join(REFRESH)}")
        refresh = "none"
    if eps is None or delta is None:
        return None
    return BudgetPolicy(eps, float(delta), str(refresh))


def _load_export(doc: LineDict, p: _Problems) -> ExportParams:
    ed = _mapping(doc, "export", p, doc, required=False)
    if ed is None:
        return ExportParams()
    p.unknown_keys(ed, EXPORT_KEYS, "export")
    default = ExportParams()
    mgc = ed.get("min_group_count", default.min_group_count)
    if not isinstance(mgc, int) or isinstance(mgc, bool) or \
            not 1 <= mgc <= MIN_GROUP_COUNT_LIMIT:
        p.add(line_of(ed, "min_group_count"), "export.min_group_count must be an integer from "
              f"1 to {MIN_GROUP_COUNT_LIMIT:,}")
        mgc = default.min_group_count
    approvals = ed.get("approvals", default.approvals)
    if not isinstance(approvals, int) or isinstance(approvals, bool) or \
            approvals not in EXPORT_APPROVALS:
        p.add(line_of(ed, "approvals"), "export.approvals must be 1 or 2 (2: two independent "
              "reviewers must approve)")
        approvals = default.approvals
    return ExportParams(int(mgc), int(approvals))
