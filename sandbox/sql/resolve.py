"""Pass 3: resolve every column against the scenario and flatten subqueries.

sqlglot's ``qualify`` resolves columns through CTEs, subqueries and joins
against a schema holding only exposed columns (hidden and identifier columns
simply do not exist). ``merge_subqueries`` then folds row-level subqueries and
CTEs into one SELECT over the scenario's tables, so later passes reason about
one level only. Whatever cannot be merged is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.merge_subqueries import merge_subqueries
from sqlglot.optimizer.qualify import qualify

from ..policy import ColumnPolicy, Policy, TablePolicy
from .refusal import Refusal

DUCKDB_TYPES = {"string": "VARCHAR", "int16": "SMALLINT", "int32": "INTEGER",
                "int64": "BIGINT", "float64": "DOUBLE", "bool": "BOOLEAN", "date": "DATE",
                "timestamp": "TIMESTAMP"}


@dataclass(frozen=True)
class Sources:
    """The flat query's table aliases and what each stands for.

    ``derived`` holds the per-unit aggregations (``sql.per_unit.Derived``) the query reads
    as tables, by table name: their virtual policy is in ``tables``, and ``origins`` names
    the scenario column each of their columns is (a join on a derived column is declared
    when the join on its origin is)."""

    tables: dict[str, TablePolicy]
    derived: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)

    def column(self, col: exp.Column) -> ColumnPolicy:
        return self.tables[col.table].columns[col.name]

    def engine_tables(self) -> list[str]:
        """The engine tables (dataset versions) the query reads, derived tables' included."""
        names = {t.engine_table for a, t in self.tables.items() if a not in self._derived()}
        for d in self._derived().values():
            names.update(d.engine_tables)
        return sorted(names)

    def row_bounds(self, direct: bool = True) -> dict[str, int]:
        """Scenario table -> the rows a unit keeps in it, for bounds above 1; the tables the
        query reads directly only if ``direct`` (they are not bounded when it only counts
        distinct units), those of per-unit aggregations always."""
        out = {t.alias: t.max_rows_per_unit for a, t in self.tables.items()
               if direct and a not in self._derived() and not t.public
               and t.max_rows_per_unit > 1}
        for d in self._derived().values():
            out.update(d.row_bounds)
        return out

    def _derived(self) -> dict[str, Any]:
        """Derived tables by the alias the query gives them."""
        return {a: self.derived[t.alias] for a, t in self.tables.items()
                if t.alias in self.derived and t.dataset == f"__{t.alias}"}

    def origin(self, alias: str, column: str) -> tuple[str, str]:
        """The scenario table and column ``alias.column`` stands for."""
        return self.origins.get(alias, {}).get(column, (self.tables[alias].alias, column))


def schema_of(policy: Policy, derived: dict[str, TablePolicy] | None = None
              ) -> dict[str, object]:
    tables = {**policy.tables, **(derived or {})}
    return {alias: {c.name: DUCKDB_TYPES[c.type] for c in t.columns.values()}
            for alias, t in tables.items()}


def resolve(tree: exp.Select, policy: Policy, derived: dict[str, Any] | None = None
            ) -> tuple[exp.Select, Sources]:
    """``derived``: per-unit aggregations by table name (``sql.per_unit.Derived``)."""
    derived = derived or {}
    virtual = {name: d.table for name, d in derived.items()}
    try:
        tree = qualify(tree, schema=schema_of(policy, virtual), dialect="duckdb",
                       validate_qualify_columns=True, quote_identifiers=False,
                       expand_stars=False)
    except OptimizeError as exc:
        raise _column_refusal(str(exc), tree, policy) from None
    whole = tree.find(exp.TableColumn)
    if whole is not None:
        raise Refusal("gate.whole_row", f"'{whole.name}' names a table; a table used as a value "
                      "would return whole rows", "name a column instead", whole)
    tree = merge_subqueries(tree, leave_tables_isolated=False)
    if tree.find(exp.Subquery) or tree.args.get("with_"):
        node = tree.find(exp.Subquery) or tree.args.get("with_")
        raise Refusal("gate.subquery", "this subquery or CTE cannot be folded into one "
                      "aggregation (it is used twice, or it groups, limits or orders rows)",
                      "derive row-level columns once, then aggregate in the outer query", node)
    sources: dict[str, TablePolicy] = {}
    origins: dict[str, dict[str, tuple[str, str]]] = {}
    for table in tree.find_all(exp.Table):
        if table.name in derived:
            sources[table.alias_or_name] = virtual[table.name]
            origins[table.alias_or_name] = derived[table.name].origin
            continue
        if table.name not in policy.tables:
            raise Refusal("gate.unknown_table", f"'{table.name}' is not a table of this "
                          "scenario", f"use one of: {', '.join(sorted(policy.tables))}", table)
        sources[table.alias_or_name] = policy.tables[table.name]
    for col in tree.find_all(exp.Column):
        if _is_output_alias_ref(col, tree):
            continue
        if col.table not in sources or col.name not in sources[col.table].columns:
            if col.name in sources or not col.table:
                raise Refusal("gate.whole_row", f"'{col.name}' does not name a column; a "
                              "table alias used as a value would return whole rows",
                              "name a column, e.g. COUNT(t.column)", col)
            raise Refusal("gate.unknown_column", f"column '{col.sql('duckdb')}' is not "
                          "available in this scenario", _columns_hint(policy), col)
    return tree, Sources(sources, dict(derived), origins)


def _is_output_alias_ref(col: exp.Column, tree: exp.Select) -> bool:
    """ORDER BY / HAVING may name an output column by its alias."""
    if col.table:
        return False
    parent = col.find_ancestor(exp.Order, exp.Having, exp.Select)
    if not isinstance(parent, exp.Order | exp.Having):
        return False
    return col.name in {s.alias_or_name for s in tree.expressions}


def _columns_hint(policy: Policy) -> str:
    parts = []
    for alias, t in policy.tables.items():
        parts.append(f"{alias}({', '.join(sorted(t.columns))})")
    return "available: " + "; ".join(parts)


def _column_refusal(message: str, tree: exp.Select, policy: Policy) -> Refusal:
    m = re.search(r"Column '([^']*)' could not be resolved", message)
    if m:
        name = m.group(1)
        node = next((c for c in tree.find_all(exp.Column) if c.name == name), None)
        holders = [a for a, t in policy.tables.items() if name in t.columns]
        if len(holders) > 1:
            # the first of the query's tables that has it, by the alias the query gives it
            used = [t.alias_or_name for t in tree.find_all(exp.Table) if t.name in holders]
            return Refusal("gate.unknown_column", f"column '{name}' is ambiguous: it exists in "
                           f"{', '.join(holders)}", f"qualify it with a table alias, e.g. "
                           f"{(used or holders)[0]}.{name}", node)
        if name in policy.tables or any(t.alias == name for t in tree.find_all(exp.TableAlias)):
            return Refusal("gate.whole_row", f"'{name}' names a table; a table used as a value "
                           "would return whole rows", "name a column instead", node)
        return Refusal("gate.unknown_column", f"column '{name}' is not available in this "
                       "scenario", _columns_hint(policy), node)
    if "Unknown output column" in message:
        return Refusal("gate.group_by", "GROUP BY or ORDER BY names a position that is not in "
                       "the SELECT list", "name the expression, or use a position from 1 to "
                       f"{len(tree.expressions)}")
    if "Ambiguous" in message or "ambiguous" in message:
        return Refusal("gate.unknown_column", "a column name is ambiguous between tables",
                       "qualify it with its table alias, e.g. p.district")
    return Refusal("gate.unknown_column", "a column could not be resolved against the "
                   "scenario", _columns_hint(policy))
