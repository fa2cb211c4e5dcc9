"""The rewrite: passes that turn a checked query into bounded exact aggregates.

Each pass is a function ``(tree, ctx) -> tree`` in its own module, run in order
by ``rewrite`` on one copy of the analysed tree (the analysis itself is never
changed: a pass that needs an expression of it, such as a key or an aggregate's
argument, works on a copy); golden files in tests/golden/ pin the output of each pass.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from .bound_groups import bound_groups
from .bound_rows import bound_rows
from .context import Measurement, RewriteContext
from .measurements import measurements
from .public_keys import public_keys
from .safe_arithmetic import safe_arithmetic

Pass = Callable[[exp.Select, RewriteContext], exp.Select]
PASSES: tuple[tuple[str, Pass], ...] = (
    ("bound_rows", bound_rows),
    ("safe_arithmetic", safe_arithmetic),
    ("measurements", measurements),
    ("bound_groups", bound_groups),
    ("public_keys", public_keys),
)

__all__ = ["PASSES", "Measurement", "RewriteContext", "rewrite"]


def rewrite(ctx: RewriteContext, until: str | None = None) -> exp.Select:
    """Run the passes in order (up to and including ``until``)."""
    tree = ctx.analysis.tree.copy()  # the analysis stays as checked; passes share nothing
    for name, fn in PASSES:
        tree = fn(tree, ctx)
        if name == until:
            break
    return tree
