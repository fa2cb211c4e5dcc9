"""The user's SELECT, HAVING, ORDER BY and LIMIT, re-aimed at the noisy values.

Aggregates become placeholders (``__a<i>``), grouping keys become ``__k<i>``;
after the rewrite has named its measurements, placeholders expand to arithmetic
over noisy measurements (AVG = noisy sum / noisy count, ...). The result runs
over a table of noisy values only, so it costs no privacy.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from .analyse import AggSpec, Analysis
from .rewrite.context import RewriteContext
from .rewrite.measurements import fn

NOISY = "__noisy"
ROW = "__row"  # the canonical position of a group (key order): ties in ORDER BY break on it


@dataclass
class Output:
    name: str
    placeholder: int | None  # index into analysis.aggs when the column is one aggregate
    key: int | None  # index into analysis.keys when the column is a grouping key


def build(analysis: Analysis, names: list[str]) -> tuple[exp.Select, list[Output]]:
    """Post-processing query with placeholders; call before the rewrite mutates the tree."""
    tree = analysis.tree

    def replace(node: exp.Expression) -> exp.Expression:
        for i, key in enumerate(analysis.keys):
            if node == key.expr:
                return exp.column(f"__k{i}")
        target = node.this if isinstance(node, exp.Filter) else node
        cond = node.expression.this if isinstance(node, exp.Filter) else None
        for i, spec in enumerate(analysis.aggs):
            if target == spec.node and cond == spec.condition:
                return exp.column(f"__a{i}")
        return node

    # qualify names every output (``_col_1`` for an unnamed one) and points ORDER BY
    # aliases and positions at those names: resolve them to the output's expression.
    by_alias = {}
    post = exp.select()
    outputs: list[Output] = []
    for item, name in zip(tree.expressions, names, strict=True):
        inner = item.unalias() if isinstance(item, exp.Alias) else item
        new = inner.copy().transform(replace, copy=False)
        ph = int(new.name[3:]) if isinstance(new, exp.Column) and new.name.startswith("__a") \
            else None
        key = int(new.name[3:]) if isinstance(new, exp.Column) and new.name.startswith("__k") \
            else None
        outputs.append(Output(name, ph, key))
        by_alias[item.alias_or_name] = new
        post = post.select(exp.alias_(_try(new.copy()), name, quoted=True), copy=False)

    def replace_alias(node: exp.Expression) -> exp.Expression:
        node = replace(node)
        if isinstance(node, exp.Column) and not node.table and node.name in by_alias:
            return by_alias[node.name].copy()
        return node

    post = post.from_(NOISY, copy=False)
    having = tree.args.get("having")
    if having is not None:
        post = post.where(_try(having.this.copy().transform(replace_alias, copy=False)),
                          copy=False)
    order = [o.copy().transform(replace_alias, copy=False) for o in
             (tree.args["order"].expressions if tree.args.get("order") else [])]
    for o in order:
        o.set("this", _try(o.this))
    post = post.order_by(*order, exp.column(ROW), copy=False)
    if analysis.limit is not None:
        post = post.limit(analysis.limit, copy=False)
    if analysis.offset is not None:
        post = post.offset(analysis.offset, copy=False)
    return post, outputs


def _try(node: exp.Expression) -> exp.Expression:
    """Arithmetic over noisy values must not fail on a value (e.g. overflow): NULL instead."""
    if isinstance(node, exp.Column | exp.Literal):
        return node
    return fn("TRY", node)


def _div(a: exp.Expression, b: exp.Expression) -> exp.Expression:
    return exp.Div(this=a, expression=fn("GREATEST", b, exp.Literal.number(1)))


def expansion(spec: AggSpec, ctx: RewriteContext) -> exp.Expression:
    """The post-processing formula of one aggregate over its noisy measurements."""
    ms = [exp.column(m.name) for m in ctx.measurements_of(spec)]
    if spec.kind in ("count", "count_units", "sum", "quantile"):
        return ms[0]
    if spec.kind == "avg":
        # An average lies within the bounds of what it averages; clamping the noisy ratio
        # is post-processing (free) and removes impossible values.
        total, count = ms
        assert spec.bounds is not None
        lo, hi = spec.bounds
        return fn("LEAST", fn("GREATEST", _div(total, count), exp.Literal.number(repr(lo))),
                  exp.Literal.number(repr(hi)))
    count, s1, s2 = ms
    mean = _div(s1, count.copy())
    square = exp.Pow(this=mean, expression=exp.Literal.number(2))
    var = fn("GREATEST", exp.Sub(this=_div(s2, count.copy()), expression=square),
             exp.Literal.number(0))
    if spec.sample:
        var = exp.Mul(this=var, expression=_div(count.copy(), exp.Sub(
            this=count.copy(), expression=exp.Literal.number(1))))
    if spec.kind == "stddev":
        return exp.Sqrt(this=var)
    return var


def finish(post: exp.Select, analysis: Analysis, ctx: RewriteContext) -> exp.Select:
    """Expand placeholders; returns a new tree."""
    formulas = {f"__a{i}": expansion(s, ctx) for i, s in enumerate(analysis.aggs)}

    def expand(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Column) and node.name in formulas and not node.table:
            return exp.Paren(this=formulas[node.name].copy())
        return node

    out = post.copy().transform(expand, copy=False)
    assert isinstance(out, exp.Select)  # the root is not a placeholder
    return out
