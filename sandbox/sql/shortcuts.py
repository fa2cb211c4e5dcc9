"""Last step before execution: leave out bounds that cannot change any value.

If every value of a column already lies within a clamp's bounds, the clamp is
the identity; if no unit has more rows than the row bound, the rank filter keeps
every row. Leaving them out changes nothing that is released (the exact
aggregates are identical), only the time the engine takes. The decision uses
the engine's column ranges and is never shown to developers: ``explain`` shows
the full rewrite.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

Range = Callable[[str, str], tuple[float, float] | None]


def apply(tree: exp.Expression, aliases: dict[str, str], column_range: Range) -> exp.Expression:
    """``aliases`` maps a query's table alias to its engine table."""
    tree = tree.copy()
    # A per-unit aggregation (sql/per_unit.py) has its own table aliases, which may name
    # other tables than the same aliases outside it: its clamps are left as they are.
    scoped = {id(n) for sub in tree.find_all(exp.Subquery)
              if sub._meta and sub.meta.get("sandbox_derived") for n in sub.walk()}
    for node in list(tree.walk()):
        bounds = node.meta.get("sandbox_clamp") if node._meta else None
        if bounds is not None and isinstance(node, exp.Case):
            value = node.args.get("default")
            if id(node) in scoped:
                continue
            if isinstance(value, exp.Column) and value.table in aliases:
                r = column_range(aliases[value.table], value.name)
                if r is not None and bounds[0] <= r[0] and r[1] <= bounds[1]:
                    parent = node.parent
                    if isinstance(parent, exp.Anonymous) and parent.name.upper() == "TRY":
                        node = parent  # TRY(column) cannot raise: leave TRY out too
                    node.replace(value.copy())
            continue
        rank = node.meta.get("sandbox_rank") if node._meta else None
        if rank is not None and isinstance(node, exp.Select):
            r = column_range(rank[0], "__sandbox_rank")
            if r is not None and r[1] <= rank[1]:
                node.set("where", None)
    return tree
