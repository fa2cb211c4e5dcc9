"""Pass 2b: per-unit pre-aggregation ("aggregate of aggregates").

``SELECT AVG(total) FROM (SELECT person_id, SUM(amount) AS total FROM loans GROUP BY
person_id) t`` first sums each person's loans, then averages over persons. The inner
query groups by the privacy unit, so its result holds exactly one row per unit (plus
columns of one-row-per-unit tables, which a unit has one value of). Nothing of it is
released: the gate runs it exactly, on row-bounded scans with every value clamped, as a
derived private table with one row per unit, whose columns have bounds derived from the
policy alone:

    COUNT(...)       [0, k]                 k = rows a unit keeps in the inner query
    SUM(x)           [k min(lo, 0), k max(hi, 0)]    x clamped to its bounds [lo, hi]
    AVG(x)           [lo, hi]

The outer query then aggregates the derived table like any other (noise, bounds,
thresholds), so a unit moves each released aggregate by what one row of the derived
table can, as Tumult's per-ID flat maps do.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from ..policy import UNIT, ColumnPolicy, Policy, TablePolicy
from . import allowlist
from .analyse import UNIT_HINT, Analysis, _check_joins, _check_kinds, _check_row_expr, conjuncts
from .intervals import ColumnLookup, bounds
from .refusal import Refusal
from .resolve import Sources, resolve
from .rewrite.bound_rows import bound_rows
from .rewrite.context import RewriteContext
from .rewrite.measurements import _double, clamp, total
from .rewrite.safe_arithmetic import safe_arithmetic

HINT = ("group the inner query by the privacy unit (e.g. GROUP BY person_id) to aggregate "
        "per person first, or aggregate once, in the outer query")
INNER_AGGREGATES = (exp.Count, exp.Sum, exp.Avg)
UNIT_COLUMN = "__unit_of_row"  # the unit of a per-unit query that does not show it


@dataclass(frozen=True)
class Derived:
    """A per-unit aggregation used as a table by the outer query."""

    table: TablePolicy  # virtual: private, one row per unit, bounded columns
    select: exp.Select  # the exact, row-bounded per-unit aggregation the engine runs
    engine_tables: tuple[str, ...]  # the real tables it reads (dataset versions)
    row_bounds: dict[str, int]  # scenario table -> rows a unit keeps in it (above 1)
    # derived column -> the scenario column it is (for declared joins on it)
    origin: dict[str, tuple[str, str]]


def extract(tree: exp.Select, policy: Policy) -> tuple[exp.Select, dict[str, Derived]]:
    """Replace each per-unit subquery or CTE of ``tree`` by a reference to a derived table."""
    derived: dict[str, Derived] = {}
    for source in _grouped_sources(tree):
        query, alias, cte = source
        if alias in policy.tables or alias in derived:
            raise Refusal("gate.subquery", f"the per-unit query is named '{alias}', like a "
                          "table of this scenario", "give it another alias", query)
        derived[alias] = _derive(alias, query, policy)
        if cte is None:
            sub = query.parent  # the FROM or JOIN subquery
            assert isinstance(sub, exp.Expression)
            sub.replace(exp.Table(this=exp.to_identifier(alias), alias=exp.TableAlias(
                this=exp.to_identifier(alias))))
        else:
            cte.pop()
            with_ = tree.args.get("with_")
            if with_ is not None and not with_.expressions:
                tree.set("with_", None)
    return tree, derived


def _grouped_sources(tree: exp.Select) -> list[tuple[exp.Select, str, exp.CTE | None]]:
    """FROM/JOIN subqueries and CTEs of the outer query whose SELECT groups rows."""
    found: list[tuple[exp.Select, str, exp.CTE | None]] = []
    items = [tree.args["from_"].this] if tree.args.get("from_") else []
    items += [j.this for j in tree.args.get("joins") or []]
    for item in items:
        if isinstance(item, exp.Subquery) and isinstance(item.this, exp.Select) and \
                item.this.args.get("group"):
            if not item.alias:
                raise Refusal("gate.subquery", "a per-unit subquery needs an alias",
                              "write (SELECT ...) AS t", item)
            found.append((item.this, item.alias, None))
    with_ = tree.args.get("with_")
    for cte in list(with_.expressions) if with_ else []:
        if isinstance(cte.this, exp.Select) and cte.this.args.get("group"):
            uses = [t for t in tree.find_all(exp.Table) if t.name == cte.alias_or_name]
            if len(uses) != 1:
                raise Refusal("gate.subquery", f"the per-unit CTE '{cte.alias_or_name}' is "
                              "used more than once", "use it once", cte)
            found.append((cte.this, cte.alias_or_name, cte))
    return found


def _derive(alias: str, query: exp.Select, policy: Policy) -> Derived:
    allowlist.check(query, set(policy.tables))
    for arg, what in (("having", "HAVING"), ("order", "ORDER BY"), ("limit", "LIMIT"),
                      ("offset", "OFFSET")):
        if query.args.get(arg):
            raise Refusal("gate.subquery", f"{what} inside a per-unit query is not answered",
                          "filter the per-unit values in the outer query's WHERE",
                          query.args[arg])
    flat, sources = resolve(query.copy(), policy)
    lookup = sources.column
    private = {a: t for a, t in sources.tables.items() if not t.public}
    if not private:
        raise Refusal("gate.public_only", "the per-unit query reads only public lookup "
                      "tables", "aggregate over a private table", query)
    _check_joins(flat, sources, policy)
    rows = 1
    for t in private.values():
        rows *= t.max_rows_per_unit
    group = flat.args["group"].expressions
    units = [g for g in group if isinstance(g, exp.Column) and lookup(g).role == UNIT]
    if not units:
        raise Refusal("gate.subquery", "GROUP BY inside a subquery or CTE is answered only "
                      "per privacy unit", HINT, query.args["group"])
    for g in group:
        if g in units:
            continue
        # A lookup table's columns are not per unit: its join key is checked unique only
        # for the outer query's joins, so a duplicate key would give a unit several rows.
        if not (isinstance(g, exp.Column) and lookup(g).role == "dimension" and
                not sources.tables[g.table].public and
                sources.tables[g.table].max_rows_per_unit == 1):
            raise Refusal("gate.subquery", f"a per-unit query may also group by dimensions "
                          f"of one-row-per-unit tables, not by '{g.sql('duckdb')}'",
                          "group the inner query by the privacy unit only, and group the "
                          "outer query", g)
    where = flat.args.get("where")
    if where is not None:
        _check_row_expr(where.this, lookup, "WHERE", allow_filter=True)
        _check_kinds(where.this, lookup)
    columns: dict[str, ColumnPolicy] = {}
    origin: dict[str, tuple[str, str]] = {}
    unit_name, unit_node = None, units[0]
    for item in flat.expressions:
        name, node = item.alias_or_name, item.unalias()
        if not name or name.startswith("__") or name in columns:
            raise Refusal("gate.subquery", "every output of a per-unit query needs its own "
                          "name", "alias it, e.g. SUM(amount) AS total", item)
        if isinstance(node, exp.Column) and node in group:
            col = lookup(node)
            columns[name] = ColumnPolicy(name, col.role, col.type, col.keys, col.bounds,
                                         col.description)
            origin[name] = (sources.tables[node.table].alias, node.name)
            if col.role == UNIT and unit_name is None:
                unit_name, unit_node = name, node
            continue
        columns[name] = _measure(name, node, lookup, rows, item)
    if unit_name is None:  # grouped by the unit without showing it: keep it, unnamed
        unit_name = UNIT_COLUMN
        flat.select(exp.alias_(units[0].copy(), unit_name), copy=False)
        col = lookup(units[0])
        columns[unit_name] = ColumnPolicy(unit_name, UNIT, col.type)
        origin[unit_name] = (sources.tables[units[0].table].alias, units[0].name)
    # Rows without a unit (a lookup table's rows that an outer join matched with no private
    # row) belong to nobody: kept, they would form a row that one unit's presence changes
    # besides its own (its lookup rows move out of it), two rows for one unit. The first
    # table's unit is never NULLed by a join.
    if unit_node.table != flat.args["from_"].this.alias_or_name:
        flat.where(exp.Not(this=exp.Is(this=unit_node.copy(), expression=exp.Null())),
                   copy=False)
    select = _engine_select(flat, sources, policy, rows)
    table = TablePolicy(alias, f"__{alias}", 0, False, unit_name, 1, columns,
                        "per-unit aggregation")
    return Derived(table, select, tuple(sorted(t.engine_table for t in
                                               sources.tables.values())),
                   {t.alias: t.max_rows_per_unit for t in private.values()
                    if t.max_rows_per_unit > 1}, origin)


def _measure(name: str, node: exp.Expression, lookup: ColumnLookup, rows: int,
             item: exp.Expression) -> ColumnPolicy:
    if not isinstance(node, INNER_AGGREGATES):
        raise Refusal("gate.subquery", "a per-unit query may output the unit, its group "
                      "columns and COUNT, SUM or AVG", "aggregate other values in the outer "
                      "query", item)
    if isinstance(node, exp.Count):
        if isinstance(node.this, exp.Distinct):
            raise Refusal("gate.count_distinct", "COUNT(DISTINCT ...) is not answered in a "
                          "per-unit query", "use COUNT(*) or COUNT(x)", node)
        arg = node.this
        if arg is not None and not isinstance(arg, exp.Star):
            # as the outer query's COUNT(x): the unit only bare, no mixed kinds, and no row
            # value may make it raise
            for col in arg.find_all(exp.Column):
                if lookup(col).role == UNIT and arg is not col:
                    raise Refusal("gate.unit_misuse", "the privacy unit cannot be used in "
                                  "expressions", UNIT_HINT, col)
            _check_kinds(arg, lookup)
            node.set("this", total(arg))
        return ColumnPolicy(name, "measure", "int64", None, (0.0, float(rows)))
    arg = node.this
    _check_row_expr(arg, lookup, node.sql_name(), allow_filter=False)
    _check_kinds(arg, lookup)
    b = bounds(arg, lookup)
    if b is None:
        raise Refusal("gate.unbounded_measure", f"the bounds of {arg.sql('duckdb')} are not "
                      "known, so the per-unit value cannot be bounded",
                      "aggregate a measure or an expression of measures and constants", arg)
    lo, hi = b
    if isinstance(node, exp.Sum):
        lo, hi = rows * min(lo, 0.0), rows * max(hi, 0.0)
    node.set("this", total(clamp(_double(arg.copy()), b[0], b[1])))
    return ColumnPolicy(name, "measure", "float64", None, (lo, hi))


def _engine_select(flat: exp.Select, sources: Sources, policy: Policy,
                   rows: int) -> exp.Select:
    """The per-unit aggregation over row-bounded scans, every row value made total."""
    ctx = RewriteContext(Analysis(flat, sources, {a: str(t.privacy_unit) for a, t in
                                                  sources.tables.items() if not t.public},
                                  rows), policy)
    tree = safe_arithmetic(bound_rows(flat, ctx), ctx)
    where = tree.args.get("where")
    if where is not None:
        tree.set("where", None)
        tree = tree.where(*[total(c.copy()) for c in conjuncts(where.this)], copy=False)
    return tree
