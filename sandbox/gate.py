"""The policy gate driver: check, rewrite, plan, charge, execute, noise, post-process.

    parse -> allowlist -> resolve -> analyse -> rewrite passes -> privacy plan
    -> reserve budget -> execute exact bounded aggregates -> add noise
    -> post-process the noisy values (HAVING, ORDER BY, LIMIT, arithmetic)

DuckDB executes only SQL generated here from the checked tree, never the
developer's text. This module holds no data access of its own: the engine is
handed in as an ``Executor``.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import pyarrow as pa
from sqlglot import exp

from .audit import values_digest
from .errors import EngineError, SandboxError
from .ledger import Ledger, replay_key
from .policy import EPSILON_FLOOR, Policy
from .sql import allowlist, per_unit, shortcuts
from .sql.analyse import Analysis, analyse
from .sql.normalise import normalise
from .sql.parse import parse
from .sql.plan import PrivacyPlan, ci_halfwidth, halfwidths, plan, quantile_accuracy, release
from .sql.postprocess import ROW, Output, build, finish
from .sql.refusal import Refusal
from .sql.resolve import resolve
from .sql.rewrite import RewriteContext, rewrite
from .sql.rewrite.public_keys import key_rows

log = logging.getLogger(__name__)


class Executor(Protocol):
    def execute(self, sql: str, params: list[object] | None = None,
                timeout_s: float | None = None) -> pa.Table: ...
    def bind(self, sql: str) -> pa.Schema:
        """The result schema of ``sql`` run on a data-free copy of the tables."""
        ...
    def postprocess(self, sql: str, table: pa.Table) -> pa.Table: ...
    def is_unique(self, table: str, column: str) -> bool: ...
    def column_range(self, table: str, column: str) -> tuple[float, float] | None: ...


@dataclass
class CheckedQuery:
    sql: str
    epsilon: float
    analysis: Analysis
    ctx: RewriteContext
    executed_sql: str
    post_sql: str
    outputs: list[Output]
    plan: PrivacyPlan
    executed_tree: exp.Expression | None = None
    cut_sql: str | None = None  # the count of units a row bound cut (RewriteContext.cut)

    def explain(self) -> dict[str, Any]:
        """What would happen, without touching data or spending budget."""
        return {
            "rewritten_sql": self.executed_sql,
            "postprocess_sql": self.post_sql,
            "columns": [o.name for o in self.outputs],
            "cost": {"epsilon": self.plan.cost.epsilon, "delta": self.plan.cost.delta},
            "plan": self.plan.to_dict(),
            "groups": _groups_note(self),
            "accuracy": {o.name: _accuracy(self, o) for o in self.outputs},
            "bounding": bounding_facts(self),
        }


@dataclass
class Release:
    release_id: str
    policy_id: str
    columns: list[str]
    rows: list[list[Any]]
    ci95: list[list[float | None]]  # per row, per column: 95% half-width (None: not given)
    mechanisms: dict[str, str]
    epsilon: float
    delta: float
    suppressed_groups: int
    rewritten_sql: str
    plan: dict[str, Any] = field(default_factory=dict)
    replayed: bool = False  # the stored answer of an earlier identical question, free
    dummy: bool = False  # answered from dummy data (sandbox.dummy): free, never exported
    bounding: dict[str, Any] = field(default_factory=dict)  # bounding_facts + units cut
    # 95% half-width of suppressed_groups (a noisy group count); None: nothing could be
    # suppressed (public keys or no grouping), so the count is exact
    suppressed_groups_ci95: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "release_id": self.release_id, "policy": self.policy_id, "columns": self.columns,
            "rows": _json_rows(self.rows),
            "ci95": self.ci95, "mechanisms": self.mechanisms,
            "epsilon": self.epsilon, "delta": self.delta,
            "suppressed_groups": self.suppressed_groups,
            "suppressed_groups_ci95": self.suppressed_groups_ci95, "noisy": True,
            "replayed": self.replayed, "dummy": self.dummy, "bounding": self.bounding,
        }

    @classmethod
    def replay_of(cls, stored: dict[str, Any], q: CheckedQuery) -> Release:
        """A stored answer again (values as stored, marked replayed)."""
        return cls(stored["release_id"], stored["policy"], list(stored["columns"]),
                   [list(r) for r in stored["rows"]], stored["ci95"], stored["mechanisms"],
                   stored["epsilon"], stored["delta"], stored["suppressed_groups"],
                   q.executed_sql, q.plan.to_dict(), replayed=True,
                   bounding=stored.get("bounding") or bounding_facts(q),
                   suppressed_groups_ci95=stored.get("suppressed_groups_ci95",
                                                     cls.suppressed_ci95(q)))

    @staticmethod
    def suppressed_ci95(q: CheckedQuery) -> float | None:
        """95% half-width of the suppressed-group count: it comes from the plan's noisy
        count of all groups; None when keys are public (nothing is suppressed, exactly)."""
        mech = q.plan.group_count
        return None if mech is None else mech.ci_halfwidth(0.95)


def _json_rows(rows: list[list[Any]]) -> list[list[Any]]:
    return [[_jsonable(v) for v in r] for r in rows]


def _jsonable(v: Any) -> Any:
    if isinstance(v, Decimal):
        v = float(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v


def _groups_note(q: CheckedQuery) -> str:
    a = q.analysis
    if not a.grouped:
        return "one row"
    if q.plan.threshold is not None:
        return (f"private keys: a group is released only if its noisy count reaches "
                f"{q.plan.threshold_value}")
    return "public keys: every declared key appears, zeros included"


def bounding_facts(q: CheckedQuery) -> dict[str, Any]:
    """What contribution bounding does to this query, from the policy alone: the rows each
    unit keeps per table, the groups it keeps, and whether a noisy count of the units the
    row bound cut comes with the answer (``units_cut``, with its 95% half-width)."""
    a, ctx = q.analysis, q.ctx
    rows = a.sources.row_bounds(direct=not ctx.units_only)
    facts: dict[str, Any] = {
        "rows_per_unit": rows,
        "groups_per_unit": ctx.max_groups if ctx.group_bounded else None,
        "units_cut": None, "units_cut_ci95": None,
    }
    if q.plan.bounding is not None:
        facts["units_cut_ci95"] = q.plan.bounding.ci_halfwidth(0.95)
        facts["note"] = (
            "each unit keeps at most " + ", ".join(f"{k} rows of {t}" for t, k in rows.items())
            + " (chosen at random); units_cut counts, with noise, the units that had a "
            "matching row left out, so counts and sums can be low by their extra rows")
    elif a.grouped and ctx.group_bounded:
        facts["note"] = (f"each unit counts in at most {ctx.max_groups} groups (chosen at "
                         "random)")
    return facts


def _accuracy(q: CheckedQuery, o: Output) -> str | float | None:
    if o.key is not None:
        return "grouping key"
    if o.placeholder is None:
        return "derived from noisy values"
    spec = q.analysis.aggs[o.placeholder]
    items = [q.plan.item(m.name) for m in q.ctx.measurements_of(spec)]
    if spec.kind in ("count", "count_units", "sum"):
        return ci_halfwidth(items[0])
    if spec.kind == "avg":
        return (f"noisy sum ±{ci_halfwidth(items[0]):.4g} / noisy count "
                f"±{ci_halfwidth(items[1]):.4g} (95%)")
    if spec.kind == "quantile":
        return quantile_accuracy(items[0])
    return "computed from noisy count, sum and sum of squares"


def output_names(tree: exp.Select) -> list[str]:
    names: list[str] = []
    for item in tree.expressions:
        if isinstance(item, exp.Alias):
            name = item.alias
        elif isinstance(item, exp.Column):
            name = item.name
        else:
            name = item.sql("duckdb")
        base, n = name, 2
        while name in names:
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return names


# The range of epsilon any query may ask for, whatever the policy says: the floor (and why)
# is policy.EPSILON_FLOOR, which policies are held to as well; above the ceiling a
# "private" answer is the exact one.
EPSILON_CEILING = 1e4


class Gate:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def _epsilon(self, epsilon: float | None) -> float:
        p = self.policy.privacy
        if epsilon is None:
            return p.epsilon_default
        top = min(p.epsilon_max, EPSILON_CEILING)
        # ints are compared exactly (a 400-digit integer must not overflow a float)
        if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or \
                not (isinstance(epsilon, int) or math.isfinite(epsilon)) or \
                not EPSILON_FLOOR <= epsilon <= top:
            low = isinstance(epsilon, int | float) and epsilon < EPSILON_FLOOR
            raise Refusal("gate.epsilon", f"epsilon must be a number from {EPSILON_FLOOR:g} to "
                          f"{top:g} in this scenario",
                          (f"{EPSILON_FLOOR:g} is the floor in every scenario (noise for a "
                           "smaller epsilon overflows the engine's sums and says nothing); "
                           if low else "") + f"omit it to use the default {p.epsilon_default}")
        return float(epsilon)

    def _analyse(self, sql: str) -> tuple[Analysis, list[str]]:
        """parse -> allowlist -> resolve -> analyse; also the output column names."""
        tree = parse(sql)
        names = output_names(tree)
        tree = normalise(tree, self.policy)
        tree, derived = per_unit.extract(tree, self.policy)
        allowlist.check(tree, set(self.policy.tables) | set(derived))
        flat, sources = resolve(tree, self.policy, derived)
        if len(flat.expressions) != len(names):  # pragma: no cover - qualify keeps the list
            raise Refusal("gate.row_level_output", "the select list could not be resolved")
        return analyse(flat, sources, self.policy), names

    def check(self, sql: str, epsilon: float | None = None) -> CheckedQuery:
        """Everything up to the privacy plan; raises Refusal. Touches no data."""
        eps = self._epsilon(epsilon)
        analysis, names = self._analyse(sql)
        post, outputs = build(analysis, names)
        ctx = RewriteContext(analysis, self.policy)
        executed = rewrite(ctx)
        privacy = plan(ctx, eps)
        post_final = finish(post, analysis, ctx)
        for i, o in enumerate(outputs):
            if o.placeholder is not None:
                post_final = post_final.select(exp.column(f"__ci{i}"), copy=False)
        return CheckedQuery(sql, eps, analysis, ctx, executed.sql("duckdb"),
                            post_final.sql("duckdb"), outputs, privacy, executed,
                            None if ctx.cut is None else ctx.cut.sql("duckdb"))

    def rewritten(self, sql: str, until: str) -> str:
        """The SQL after the rewrite passes up to ``until`` (for golden tests and review)."""
        ctx = RewriteContext(self._analyse(sql)[0], self.policy)
        return rewrite(ctx, until=until).sql("duckdb")

    def explain(self, sql: str, epsilon: float | None = None) -> dict[str, Any]:
        return self.check(sql, epsilon).explain()

    def answer(self, sql: str, *, member: str, ledger: Ledger, executor: Executor,
               epsilon: float | None = None, timeout_s: float | None = None,
               request_id: str | None = None, request_digest: str | None = None) -> Release:
        """Answer with noise, charging ``ledger``; every outcome is recorded by the ledger.

        A refusal costs nothing. Once the engine has been asked, the charge stands even if
        execution fails or times out. ``request_digest`` (``ledger.request_digest`` of the
        request as sent) is kept with ``request_id`` to tell a retry from a reused id.

        The member's earlier answer to the same question (same SQL text, epsilon, policy
        and dataset versions) is returned again, marked replayed and charged nothing:
        post-processing of a release already paid for. A notebook re-run is free, and
        asking again never averages the noise away.
        """
        try:
            q = self.check(sql, epsilon)
            self._check_lookup_keys(q, executor)
            engine_sql = self._engine_sql(q, executor)
            self._bind(q, engine_sql, executor)
        except Refusal as refusal:
            ledger.refused(member, sql, refusal.code, refusal.message)
            raise
        key = replay_key(sql, q.epsilon, self.policy.id, self.policy.content_hash,
                         q.analysis.sources.engine_tables())
        stored = ledger.replay(member, key, sql=sql, request_id=request_id,
                               request_digest=request_digest)
        if stored is not None:
            return Release.replay_of(stored, q)
        reservation = ledger.reserve(member, q.plan.cost, sql=sql, rewritten=q.executed_sql,
                                     request_id=request_id, request_digest=request_digest)
        try:
            exact = executor.execute(engine_sql, timeout_s=timeout_s)
            cut = None if q.cut_sql is None else \
                executor.execute(q.cut_sql, timeout_s=timeout_s).column(0)[0].as_py()
            result = self._release(q, exact, executor, cut)
        except SandboxError as exc:
            # Time limits aside, nothing should fail once the budget is charged: the rewrite
            # is total and was bound on empty tables. A failure here is a gate bug.
            log.error("query failed after its charge (%s); a gate bug unless it timed out",
                      exc.code)
            ledger.fail(reservation, exc.code)
            raise
        except BaseException:
            log.exception("query failed after its charge (internal error): a gate bug")
            ledger.fail(reservation, "internal")
            raise
        ledger.commit(reservation, release_id=result.release_id,
                      values_digest=values_digest(_json_rows(result.rows)), rows=len(result.rows),
                      suppressed=result.suppressed_groups, response=result.to_dict(),
                      replay_key=key, request_id=request_id)
        return result

    @staticmethod
    def _engine_sql(q: CheckedQuery, executor: Executor) -> str:
        """The rewrite, less bounds the engine's column ranges show to be no-ops."""
        if q.executed_tree is None:
            return q.executed_sql
        aliases = {a: t.engine_table for a, t in q.analysis.sources.tables.items()}
        return shortcuts.apply(q.executed_tree, aliases, executor.column_range).sql("duckdb")

    def _bind(self, q: CheckedQuery, engine_sql: str, executor: Executor) -> None:
        """Run the engine and post-processing SQL on data-free tables before any budget is
        reserved: a type or binder error is then a free refusal, never a failure after the
        charge (what could still fail on a value is made total by the rewrite)."""
        try:
            schema = executor.bind(engine_sql)
            if q.cut_sql is not None:
                executor.bind(q.cut_sql)
            executor.postprocess(q.post_sql, _noisy_table(q, schema, {}, []))
        except SandboxError:
            raise Refusal("gate.engine_check", "the rewritten query does not type-check against "
                          "the scenario's tables", "check the types of the columns you combine "
                          "(docs/gate.md lists the functions and their types)") from None

    def _check_lookup_keys(self, q: CheckedQuery, executor: Executor) -> None:
        for join in q.analysis.tree.args.get("joins") or []:
            for col in join.args["on"].find_all(exp.Column):
                table = q.analysis.sources.tables[col.table]
                if table.public and not executor.is_unique(table.engine_table, col.name):
                    raise Refusal("gate.join", f"'{table.alias}.{col.name}' is not unique, so "
                                  "this lookup join could multiply rows",
                                  "ask the operator to fix the lookup table", col)

    def _release(self, q: CheckedQuery, exact: pa.Table, executor: Executor,
                 cut: int | None = None) -> Release:
        _check_keys(q, exact)
        groups = exact.num_rows
        columns = {name: exact.column(name).to_pylist() for name in exact.column_names}
        noisy = release(q.plan, columns, groups, cut)
        table = _noisy_table(q, exact.schema, noisy.values, noisy.keep, exact)
        out = executor.postprocess(q.post_sql, table)
        n_out = len(q.outputs)
        names = [o.name for o in q.outputs]
        value_cols = [out.column(i).to_pylist() for i in range(n_out)]
        ci_cols: list[list[float | None]] = []
        extra = n_out
        for o in q.outputs:
            if o.placeholder is not None:
                ci_cols.append(out.column(extra).to_pylist())
                extra += 1
            else:
                ci_cols.append([None] * out.num_rows)
        rows = [[float(v) if isinstance(v, Decimal) else v for v in r]
                for r in zip(*value_cols, strict=True)] if value_cols else []
        cis = [list(r) for r in zip(*ci_cols, strict=True)] if ci_cols else []
        mechanisms = {}
        for o in q.outputs:
            if o.placeholder is None:
                if o.key is None:
                    mechanisms[o.name] = "post-processing of the noisy aggregates"
                continue
            spec = q.analysis.aggs[o.placeholder]
            mechs = {q.plan.item(m.name).mechanism.kind for m in q.ctx.measurements_of(spec)}
            scales = [q.plan.item(m.name).mechanism.scale / m.scale
                      for m in q.ctx.measurements_of(spec)]
            scale_text = ", ".join(f"{s:.4g}" for s in scales)
            mechanisms[o.name] = f"{'+'.join(sorted(mechs))} (scale {scale_text})"
        bounding = bounding_facts(q)
        bounding["units_cut"] = noisy.units_cut
        return Release(uuid.uuid4().hex, self.policy.id, names, rows, cis, mechanisms,
                       q.plan.cost.epsilon, q.plan.cost.delta, noisy.suppressed,
                       q.executed_sql, q.plan.to_dict(), bounding=bounding,
                       suppressed_groups_ci95=Release.suppressed_ci95(q))

    @staticmethod
    def _cis(q: CheckedQuery, o: Output, values: dict[str, list[Any]]) -> list[float | None]:
        assert o.placeholder is not None
        spec = q.analysis.aggs[o.placeholder]
        ms = q.ctx.measurements_of(spec)
        return halfwidths(spec, [q.plan.item(m.name) for m in ms], [values[m.name] for m in ms])


def _check_keys(q: CheckedQuery, exact: pa.Table) -> None:
    """Fail closed if the engine returned a group twice or a public key not declared: each
    released group must be released once, and public keys exactly as declared."""
    keys = [exact.column(f"__k{i}").to_pylist() for i in range(len(q.analysis.keys))]
    if not keys:
        ok = exact.num_rows == 1
    else:
        rows = list(zip(*keys, strict=True))
        declared = key_rows(q.ctx)
        ok = len(set(rows)) == len(rows) and (declared is None or rows == declared)
    if not ok:
        raise EngineError("the exact result did not have the declared groups",
                          "nothing was released; the failure was logged for operators")


def _noisy_table(q: CheckedQuery, schema: pa.Schema, values: dict[str, list[Any]],
                 keep: list[int], exact: pa.Table | None = None) -> pa.Table:
    """What post-processing reads: the kept keys, the noisy values and their intervals, and
    each group's canonical position. Column types depend on the plan, never on the values."""
    data: dict[str, pa.Array] = {}
    take = pa.array(keep, pa.int64())
    for i in range(len(q.analysis.keys)):
        name = f"__k{i}"
        data[name] = exact.column(name).take(take) if exact is not None else \
            pa.array([], schema.field(name).type)
    for item in q.plan.items:
        m = item.measurement
        integer = m.kind != "histogram" and m.scale == 1
        data[m.name] = pa.array(values.get(m.name, []),
                                type=pa.int64() if integer else pa.float64())
    for i, o in enumerate(q.outputs):
        if o.placeholder is not None:
            data[f"__ci{i}"] = pa.array(Gate._cis(q, o, values) if keep else [],
                                        type=pa.float64())
    data[ROW] = pa.array(range(len(keep)), pa.int64())
    return pa.table(data)
