"""Pass 1: parse exactly one query, within size and nesting limits."""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from .refusal import Refusal

MAX_SQL_CHARS = 20_000
MAX_DEPTH = 60
MAX_NODES = 4_000
HINT_QUERY = "write one SELECT ... FROM <table> ... query with aggregates"


def parse(sql: str) -> exp.Select:
    if not isinstance(sql, str) or not sql.strip():
        raise Refusal("gate.syntax", "the query is empty", HINT_QUERY)
    if len(sql) > MAX_SQL_CHARS:
        raise Refusal("gate.too_large", f"the query is longer than {MAX_SQL_CHARS} characters",
                      "split it into smaller queries")
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: no engine can bind it
        raise Refusal("gate.syntax", f"the query holds an invalid character at position "
                      f"{exc.start + 1} (a lone UTF-16 surrogate)",
                      "remove the character or write it as a valid Unicode code point") \
            from None
    try:
        statements = [s for s in sqlglot.parse(sql, dialect="duckdb") if s is not None]
    except (ParseError, TokenError) as exc:
        errors = getattr(exc, "errors", None) or []
        where, at = "", None
        if errors and errors[0].get("line"):
            # sqlglot's column is where the offending token ends
            col = max(int(errors[0].get("col") or 1) - len(errors[0].get("highlight") or "")
                      + 1, 1)
            at = (int(errors[0]["line"]), col)
            where = f" at line {at[0]}, column {at[1]}"
        raise Refusal("gate.syntax", f"the query could not be parsed{where}",
                      "check the SQL syntax (DuckDB dialect)", at=at) from None
    except RecursionError:
        raise Refusal("gate.too_large", "the query is nested too deeply",
                      "simplify the query") from None
    if len(statements) != 1:
        raise Refusal("gate.multiple_statements",
                      f"found {len(statements)} statements; send exactly one query",
                      "send each query in its own request")
    tree = statements[0]
    if isinstance(tree, exp.SetOperation):
        raise Refusal("gate.set_operation", f"{tree.key.upper()} is not answered",
                      "run each part as its own query and combine the noisy results", tree)
    if not isinstance(tree, exp.Select):
        kind = tree.key.upper() if not isinstance(tree, exp.Command) else \
            str(tree.this).upper()
        raise Refusal("gate.not_a_query", f"{kind} statements are not allowed; only queries",
                      HINT_QUERY, tree)
    _check_size(tree)
    return tree


def _check_size(tree: exp.Expression) -> None:
    count = 0
    stack: list[tuple[exp.Expression, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH or count > MAX_NODES:
            raise Refusal("gate.too_large", "the query is nested too deeply or too long",
                          "simplify the query")
        stack.extend((child, depth + 1) for child in node.iter_expressions())
