"""Pass 2: every node of the tree must be of a kind the gate understands.

Allowlists, not denylists: a construct or function not named here is refused,
whatever new feature the engine grows.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp
from sqlglot.errors import ErrorLevel

from .parse import HINT_QUERY
from .refusal import Refusal

STRUCTURE: tuple[type[exp.Expression], ...] = (
    exp.Select, exp.From, exp.Join, exp.Where, exp.Group, exp.Having, exp.Order, exp.Ordered,
    exp.Limit, exp.Offset, exp.With, exp.CTE, exp.Subquery, exp.TableAlias, exp.Table,
    exp.Identifier, exp.Column, exp.Alias, exp.Paren, exp.Literal, exp.Boolean, exp.Null,
    exp.DataType, exp.Var, exp.Distinct, exp.Star, exp.Filter,
)
OPERATORS: tuple[type[exp.Expression], ...] = (
    exp.Neg, exp.Not, exp.And, exp.Or, exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE,
    exp.Is, exp.In, exp.Between, exp.Like, exp.ILike, exp.Add, exp.Sub, exp.Mul, exp.Div,
    exp.Mod, exp.Case, exp.If, exp.Coalesce, exp.Nullif, exp.Cast,
)
SCALAR_FUNCTIONS: tuple[type[exp.Expression], ...] = (
    exp.Floor, exp.Ceil, exp.Round, exp.Abs, exp.Least, exp.Greatest,
    exp.TimestampTrunc, exp.DateTrunc, exp.Extract, exp.Year, exp.Month, exp.Quarter,
    exp.DayOfWeek, exp.Lower, exp.Upper, exp.Length,
)
AGGREGATES: tuple[type[exp.Expression], ...] = (
    exp.Count, exp.Sum, exp.Avg, exp.Variance, exp.VariancePop, exp.Stddev, exp.StddevPop,
    exp.StddevSamp, exp.Median, exp.PercentileCont, exp.PercentileDisc, exp.Quantile,
)
ALLOWED = STRUCTURE + OPERATORS + SCALAR_FUNCTIONS + AGGREGATES
EXTRACT_PARTS = {"YEAR", "QUARTER", "MONTH", "DAY", "DOW", "DAYOFWEEK", "ISODOW", "WEEK",
                 "DOY", "DAYOFYEAR", "HOUR"}
TRUNC_UNITS = {"YEAR", "QUARTER", "MONTH", "WEEK", "DAY", "HOUR"}

MINMAX_HINT = ("single values are never released; use QUANTILE_CONT(x, 0.95) or "
               "MEDIAN(x) for a noisy order statistic")

# Refused constructs as a user writes them, with a rewrite that is answered (built from the
# refused part's own columns where it can be). Messages name SQL, never the parser's node
# classes (DPIPE, WITHINGROUP, NULLSAFEEQ, ...).
Hint = str | Callable[[exp.Expression], str]


def _text(node: exp.Expression | None) -> str:
    return "x" if node is None else node.sql("duckdb")


def _columns(node: exp.Expression) -> list[str]:
    seen: list[str] = []
    for c in node.find_all(exp.Column):
        if c.sql("duckdb") not in seen:
            seen.append(c.sql("duckdb"))
    return seen or ["a", "b"]


def _concat_hint(node: exp.Expression) -> str:
    cols = ", ".join(_columns(node))
    return (f"select and group by the parts separately, e.g. SELECT {cols}, count(*) FROM ... "
            f"GROUP BY {cols}")


def _distinct_hint(node: exp.Expression) -> str:
    a, b = _text(node.this), _text(node.expression)
    if isinstance(node.expression, exp.Null):
        return f"write {a} IS NOT NULL" if isinstance(node, exp.NullSafeNEQ) else \
            f"write {a} IS NULL"
    if isinstance(node, exp.NullSafeNEQ):
        return f"compare with <> and IS NULL, e.g. {a} <> {b} OR {a} IS NULL"
    return f"compare with =, e.g. {a} = {b} (add OR {a} IS NULL to keep NULLs)"


def _like_hint(node: exp.Expression) -> str:
    col = _text(node.this)
    pattern = node.expression
    if isinstance(node, exp.StartsWith) and isinstance(pattern, exp.Literal) and \
            pattern.is_string:
        return f"use LIKE, e.g. {col} LIKE '{pattern.name.replace(chr(39), chr(39) * 2)}%'"
    return f"match with LIKE instead (% any text, _ one character), e.g. {col} LIKE 'S%'"


def _intdiv_hint(node: exp.Expression) -> str:
    return f"use floor(a / b), e.g. floor({_text(node.this)} / {_text(node.expression)})"


def _pow_hint(node: exp.Expression) -> str:
    base, power = _text(node.this), node.expression
    if isinstance(power, exp.Literal) and power.name in ("2", "3"):
        return f"multiply it out, e.g. {' * '.join([base] * int(power.name))}"
    return f"multiply it out, e.g. {base} * {base}"


def _any_hint(node: exp.Expression) -> str:
    left = node.parent.this if isinstance(node.parent, exp.Binary) else None
    return f"use an IN list, e.g. {_text(left)} IN (30, 40)"


def _collate_hint(node: exp.Expression) -> str:
    return f"compare lower-cased text, e.g. lower({_text(node.this)}) = 'siming'"


def _columns_of(what: str) -> Callable[[exp.Expression], str]:
    def hint(node: exp.Expression) -> str:
        cols = _columns(node)
        return f"{what}, e.g. {cols[0]}" if cols != ["a", "b"] else what
    return hint


_BITWISE: tuple[str, Hint] = (
    "bitwise operators (&, |, xor, ~, <<, >>)",
    "use arithmetic and CASE, e.g. CASE WHEN age >= 60 THEN 1 ELSE 0 END")
_STRINGS: tuple[str, Hint] = (
    "special string literals (E'...', x'...', b'...', N'...', U&'...')",
    "write a plain string constant in single quotes, e.g. 'Siming'")
_PARAMS: tuple[str, Hint] = (
    "query parameters (?, $1, :name)",
    "write the value into the query, e.g. WHERE district = 'Siming'")
_MAPS: tuple[str, Hint] = (
    "maps (MAP {...})", "use CASE, e.g. CASE district WHEN 'Siming' THEN 1 ELSE 0 END")
_GROUPING = "list the grouping expressions explicitly, e.g. GROUP BY gender, district"
CONSTRUCTS: dict[type[exp.Expression], tuple[str, Hint]] = {
    exp.DPipe: ("string concatenation ||", _concat_hint),
    exp.WithinGroup: ("this WITHIN GROUP aggregate",
                      "use QUANTILE_CONT(x, 0.5) or MEDIAN(x), e.g. quantile_cont(income, "
                      "0.5)"),
    exp.Interval: ("INTERVAL", "write the date out as a constant, e.g. registered_on > "
                               "DATE '2019-12-31'"),
    exp.PositionalColumn: ("positional columns (#1)", "name the column instead of #1"),
    exp.Placeholder: _PARAMS, exp.Parameter: _PARAMS, exp.SessionParameter: _PARAMS,
    exp.NullSafeNEQ: ("IS DISTINCT FROM", _distinct_hint),
    exp.NullSafeEQ: ("IS NOT DISTINCT FROM (<=>)", _distinct_hint),
    exp.Bracket: ("subscripts (x[1], x['key'])",
                  _columns_of("compare the column itself")),
    exp.Array: ("list literals ([...])", "use an IN list, e.g. district IN ('Siming', 'Huli')"),
    exp.Values: ("VALUES", "query one of the scenario's tables"),
    exp.SimilarTo: ("SIMILAR TO", _like_hint), exp.Glob: ("GLOB", _like_hint),
    exp.Escape: ("LIKE ... ESCAPE", "use LIKE without ESCAPE (% any text, _ one character)"),
    exp.Dot: ("field access on a value (x.field)",
              "use the scenario's columns, qualified by a table alias: p.income"),
    exp.IntDiv: ("integer division //", _intdiv_hint),
    exp.BitwiseAnd: _BITWISE, exp.BitwiseOr: _BITWISE, exp.BitwiseXor: _BITWISE,
    exp.BitwiseNot: _BITWISE, exp.BitwiseLeftShift: _BITWISE,
    exp.BitwiseRightShift: _BITWISE,
    exp.Tuple: ("row values ((a, b))",
                "compare one column at a time, e.g. age = 30 AND income > 50000"),
    exp.Any: ("ANY (...)", _any_hint),
    exp.All: ("ALL (...)", "compare with one constant, e.g. age > 40"),
    exp.ByteString: _STRINGS, exp.HexString: _STRINGS, exp.BitString: _STRINGS,
    exp.National: _STRINGS, exp.RawString: _STRINGS, exp.UnicodeString: _STRINGS,
    exp.Introducer: _STRINGS,
    exp.AtTimeZone: ("AT TIME ZONE", lambda node: f"compare the date directly, e.g. "
                                                  f"{_columns(node)[0]} >= DATE '2020-01-01'"),
    exp.Lambda: ("lambdas (x -> ...)", "write the expression over the column directly"),
    exp.Kwarg: ("named arguments (name := value)", "pass the arguments by position"),
    exp.PropertyEQ: ("named arguments (name := value)", "pass the arguments by position"),
    exp.Slice: ("slices ([a:b])", _columns_of("compare the column itself")),
    exp.Overlaps: ("OVERLAPS", "compare the dates with BETWEEN, e.g. issued_on BETWEEN "
                               "DATE '2024-01-01' AND DATE '2024-12-31'"),
    exp.Operator: ("OPERATOR(...)", "use the plain operators =, <>, <, >, +, -, *, /"),
    exp.Distance: ("distance operators (<->)", "use abs(a - b), e.g. abs(age - 40) < 5"),
    exp.Lateral: ("LATERAL", "join a scenario table with JOIN ... ON a declared key"),
    exp.Unnest: ("UNNEST", "query one of the scenario's tables"),
    exp.TableSample: ("TABLESAMPLE", "query the whole table: the answer is noisy already"),
    exp.Pseudocolumn: ("pseudo-columns (ROWNUM, ...)", "aggregate with COUNT(*) instead"),
    exp.Prior: ("CONNECT BY ... PRIOR", "use plain SELECT ... FROM ... WHERE ... GROUP BY"),
    exp.Connect: ("CONNECT BY", "use plain SELECT ... FROM ... WHERE ... GROUP BY"),
    exp.Semicolon: ("an empty statement", "send one SELECT query"),
    exp.Rollup: ("GROUP BY ROLLUP", _GROUPING),
    exp.Cube: ("GROUP BY CUBE", _GROUPING),
    exp.GroupingSets: ("GROUP BY GROUPING SETS", _GROUPING),
}
# Functions that come from operators or special syntax, named as the user wrote them.
FUNCTION_WORDS: dict[type[exp.Expression], tuple[str, Hint]] = {
    exp.Pow: ("^ (power)", _pow_hint),
    exp.RegexpLike: ("~ (regular expressions)", _like_hint),
    exp.StartsWith: ("^@ (starts_with)", _like_hint),
    exp.Collate: ("COLLATE", _collate_hint),
    exp.JSONExtract: ("JSON access (->, ->>)", "use the scenario's columns"),
    exp.JSONExtractScalar: ("JSON access (->, ->>)", "use the scenario's columns"),
    exp.ArrayContains: ("list containment (@>)",
                        "use an IN list, e.g. district IN ('Siming', 'Huli')"),
    exp.Xor: ("XOR", "write (a AND NOT b) OR (b AND NOT a)"),
    exp.Struct: ("structs (struct_pack, {...})", "use the scenario's columns"),
    exp.ToMap: _MAPS, exp.Map: _MAPS, exp.VarMap: _MAPS,
    exp.Columns: ("COLUMNS(...)", "name each column, e.g. avg(income), avg(age)"),
}


def _hint(hint: Hint, node: exp.Expression) -> str:
    return hint if isinstance(hint, str) else hint(node)


SELECT_CLAUSES: dict[str, str] = {
    "into": "SELECT ... INTO", "locks": "FOR UPDATE / FOR SHARE",
    "sample": "USING SAMPLE / TABLESAMPLE", "laterals": "LATERAL VIEW", "pivots": "PIVOT",
    "windows": "WINDOW", "connect": "CONNECT BY", "prewhere": "PREWHERE",
    "cluster": "CLUSTER BY", "distribute": "DISTRIBUTE BY", "sort": "SORT BY",
    "settings": "SETTINGS", "format": "FORMAT", "kind": "SELECT AS STRUCT / VALUE",
    "operation_modifiers": "SELECT modifiers", "exclude": "EXCLUDE", "match":
    "MATCH_RECOGNIZE", "options": "OPTION (...)", "for_": "FOR ...", "hint": "optimizer hints",
}
TABLE_MODIFIERS: dict[str, str] = {
    "joins": "nested joins", "pivots": "PIVOT / UNPIVOT", "laterals": "LATERAL",
    "version": "time travel (AT / FOR SYSTEM_TIME)", "sample": "TABLESAMPLE",
    "changes": "CHANGES", "when": "WHEN", "partition": "PARTITION", "hints": "table hints",
    "system_time": "FOR SYSTEM_TIME", "format": "FORMAT", "pattern": "PATTERN",
    "ordinality": "WITH ORDINALITY", "only": "ONLY", "rows_from": "ROWS FROM",
    "indexed": "INDEXED BY",
}
GENERIC_HINT = "use plain columns, arithmetic, CASE and the allowed functions (docs/gate.md)"


def check(tree: exp.Select, table_names: set[str]) -> None:
    """Refuse the first node that is not allowed. ``table_names`` are the scenario's tables."""
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    for node in tree.walk():
        if isinstance(node, exp.Expression):  # every node sqlglot builds
            _check_node(node, tree, table_names, ctes)


def _check_node(node: exp.Expression, root: exp.Select, tables: set[str],
                ctes: set[str]) -> None:
    if isinstance(node, exp.Identifier) and node.name.startswith("__"):
        raise Refusal("gate.reserved_name", f"the name '{node.name}' is reserved",
                      "rename it without the leading underscores", node)
    if isinstance(node, exp.Window | exp.Qualify):
        raise Refusal("gate.window", "window functions and QUALIFY are not answered",
                      "aggregate with GROUP BY instead", node)
    if isinstance(node, exp.AggFunc) and not isinstance(node, AGGREGATES):
        raise Refusal("gate.aggregate_not_allowed",
                      f"the aggregate {node.sql_name()} is not answered", _agg_hint(node), node)
    if not isinstance(node, ALLOWED):
        raise _not_allowed(node)

    if isinstance(node, exp.Select):
        _check_select(node, root)
    elif isinstance(node, exp.Table):
        _check_table(node, tables, ctes)
    elif isinstance(node, exp.TableAlias) and node.args.get("columns"):
        raise Refusal("gate.column_alias_list", "table aliases that rename columns are refused",
                      "alias columns in the SELECT list instead (col AS name)", node)
    elif isinstance(node, exp.Join):
        _check_join(node)
    elif isinstance(node, exp.Star):
        if not isinstance(node.parent, exp.Count):
            raise Refusal("gate.star", "SELECT * returns rows and is not answered",
                          "name the aggregates you need, e.g. SELECT COUNT(*) FROM t", node)
    elif isinstance(node, exp.Column) and isinstance(node.this, exp.Star):
        raise Refusal("gate.star", "t.* returns rows and is not answered",
                      "name the aggregates you need", node)
    elif isinstance(node, exp.Distinct) and not isinstance(node.parent, exp.Count):
        raise Refusal("gate.distinct_rows", "DISTINCT is only answered inside COUNT(DISTINCT "
                      "<privacy unit>)", "use GROUP BY with COUNT(*)", node)
    elif type(node) is exp.Cast and not isinstance(node.this, exp.Literal):
        raise Refusal("gate.strict_cast", "CAST of a column can fail on a value and is refused",
                      f"write TRY_CAST({node.this.sql('duckdb')} AS "
                      f"{node.to.sql('duckdb')}) instead", node)
    elif isinstance(node, exp.Subquery) and not isinstance(node.parent, exp.From | exp.Join):
        raise Refusal("gate.subquery", "subqueries inside expressions are not answered",
                      "join the table on a declared key, or filter in WHERE directly", node)
    elif isinstance(node, exp.In) and node.args.get("query"):
        raise Refusal("gate.subquery", "IN (SELECT ...) is not answered",
                      "join the table on a declared key instead", node)
    elif isinstance(node, exp.Extract):
        part = node.this.name.upper() if isinstance(node.this, exp.Var | exp.Literal) else ""
        if part not in EXTRACT_PARTS:
            raise Refusal("gate.function_not_allowed", f"EXTRACT({part or '?'} ...) is not "
                          "answered", f"use one of {', '.join(sorted(EXTRACT_PARTS))}", node)
    elif isinstance(node, exp.TimestampTrunc | exp.DateTrunc):
        unit = node.args.get("unit")
        name = unit.name.upper() if isinstance(unit, exp.Var | exp.Literal) else ""
        if name not in TRUNC_UNITS:
            raise Refusal("gate.function_not_allowed", "date_trunc needs a constant unit",
                          f"use one of {', '.join(sorted(TRUNC_UNITS))}", node)
    elif isinstance(node, exp.Group):
        for arg in ("all", "rollup", "cube", "grouping_sets", "totals"):
            if node.args.get(arg):
                raise Refusal("gate.group_by", f"GROUP BY {arg.upper().replace('_', ' ')} is "
                              "not answered", "list the grouping expressions explicitly", node)


def _check_select(node: exp.Select, root: exp.Select) -> None:
    if node.args.get("distinct"):
        raise Refusal("gate.distinct_rows", "SELECT DISTINCT returns rows",
                      "use GROUP BY with COUNT(*) to count each combination", node)
    for arg, words in SELECT_CLAUSES.items():
        if node.args.get(arg):
            raise Refusal("gate.construct_not_allowed", f"the gate does not answer {words}",
                          "use plain SELECT ... FROM ... WHERE ... GROUP BY ...", node)
    if node is not root:
        for arg, what in (("order", "ORDER BY"), ("limit", "LIMIT"), ("offset", "OFFSET"),
                          ("having", "HAVING"), ("group", "GROUP BY")):
            if node.args.get(arg):
                raise Refusal("gate.subquery", f"{what} inside a subquery or CTE is not "
                              "answered: subqueries may only filter, join and derive columns",
                              "aggregate once, in the outer query", node.args[arg])
        if node.find(*AGGREGATES):
            raise Refusal("gate.subquery", "aggregates inside a subquery or CTE (nested "
                          "aggregation) are not answered",
                          "aggregate once, in the outer query", node.find(*AGGREGATES))
    with_ = node.args.get("with_") or node.args.get("with")
    if with_ is not None and with_.args.get("recursive"):
        raise Refusal("gate.subquery", "WITH RECURSIVE is not answered",
                      "use plain CTEs", with_)


def _check_table(node: exp.Table, tables: set[str], ctes: set[str]) -> None:
    if not isinstance(node.this, exp.Identifier):
        raise Refusal("gate.table_function", "table functions are not answered (no file, "
                      "network, settings or metadata access)",
                      f"query one of the scenario's tables: {', '.join(sorted(tables))}", node)
    if node.args.get("db") or node.args.get("catalog"):
        raise Refusal("gate.unknown_table", f"'{node.sql('duckdb')}' is not a table of this "
                      "scenario", f"use one of: {', '.join(sorted(tables))}", node)
    for arg, words in TABLE_MODIFIERS.items():
        if node.args.get(arg):
            raise Refusal("gate.construct_not_allowed",
                          f"the gate does not answer {words} on a table",
                          f"reference the table by name only: FROM {node.name}", node)
    if node.name not in tables and node.name not in ctes:
        raise Refusal("gate.unknown_table", f"'{node.name}' is not a table of this scenario",
                      f"use one of: {', '.join(sorted(tables))}", node)


def _check_join(node: exp.Join) -> None:
    side = (node.side or "").upper()
    kind = (node.kind or "").upper()
    method = (node.method or "").upper() if node.args.get("method") else ""
    if method or kind not in ("", "INNER", "OUTER") or side not in ("", "LEFT"):
        what = " ".join(x for x in (method, side, kind) if x) + " JOIN"
        raise Refusal("gate.join", f"{what} is not answered",
                      "use [INNER] JOIN or LEFT JOIN ... ON a declared key", node)
    for arg in ("global_", "hint", "match_condition", "nearest", "directed", "expressions",
                "pivots"):
        if node.args.get(arg):
            raise Refusal("gate.join", "this join form is not answered",
                          "use [INNER] JOIN or LEFT JOIN ... ON a declared key", node)
    if node.args.get("using"):
        raise Refusal("gate.join", "JOIN ... USING is not answered",
                      "write JOIN ... ON a.key = b.key", node)
    if not node.args.get("on"):
        raise Refusal("gate.join", "joins without ON (cross or comma joins) are not answered",
                      "join on the privacy unit or a declared lookup key with ON", node)


def _agg_hint(node: exp.Expression) -> str:
    if isinstance(node, exp.Min | exp.Max | exp.ArgMax | exp.ArgMin | exp.First | exp.Last |
                  exp.AnyValue):
        return MINMAX_HINT
    if isinstance(node, exp.ApproxDistinct):
        return "use COUNT(DISTINCT <privacy unit>) or COUNT(*)"
    return "use COUNT, SUM, AVG, VAR/STDDEV, MEDIAN or QUANTILE_CONT with GROUP BY"


def _not_allowed(node: exp.Expression) -> Refusal:
    if isinstance(node, exp.Rollup | exp.Cube | exp.GroupingSets):
        return Refusal("gate.group_by", f"the gate does not answer {CONSTRUCTS[type(node)][0]}",
                       _GROUPING, node)
    if isinstance(node, exp.IgnoreNulls | exp.RespectNulls) and isinstance(node.this,
                                                                          exp.AggFunc):
        return Refusal("gate.aggregate_not_allowed",
                       f"the aggregate {node.this.sql_name()} is not answered",
                       _agg_hint(node), node)
    if isinstance(node, exp.Exists):
        return Refusal("gate.subquery", "EXISTS (SELECT ...) is not answered",
                       "join the table on a declared key instead", node)
    if isinstance(node, exp.Array) and isinstance(node.parent, AGGREGATES):
        return Refusal("gate.quantile_fraction", "ask for one quantile fraction per call",
                       "e.g. QUANTILE_CONT(x, 0.1) AS p10, QUANTILE_CONT(x, 0.9) AS p90", node)
    if isinstance(node, exp.Anonymous):
        name = node.name.lower()
        if name in ("histogram", "list", "string_agg", "listagg", "arbitrary", "min_by",
                    "max_by", "arg_min", "arg_max", "bit_and", "bit_or", "bool_and",
                    "bool_or", "product", "kurtosis", "skewness", "entropy",
                    "reservoir_quantile", "bitstring_agg", "favg", "fsum", "sumkahan"):
            return Refusal("gate.aggregate_not_allowed", f"the aggregate {name} is not answered",
                           MINMAX_HINT if "arg" in name or "by" in name else
                           "use COUNT, SUM, AVG, VAR/STDDEV, MEDIAN or QUANTILE_CONT", node)
        return Refusal("gate.function_not_allowed", f"the function {name} is not answered",
                       "see docs/gate.md for the functions the gate understands", node)
    if type(node) in FUNCTION_WORDS:
        words, hint = FUNCTION_WORDS[type(node)]
        return Refusal("gate.function_not_allowed", f"the gate does not answer {words}",
                       _hint(hint, node), node)
    if isinstance(node, exp.Func):
        return Refusal("gate.function_not_allowed",
                       f"the function {node.sql_name().lower()} is not answered",
                       "see docs/gate.md for the functions the gate understands", node)
    if isinstance(node, exp.DDL | exp.DML | exp.Command):
        return Refusal("gate.not_a_query", "only queries are answered", HINT_QUERY, node)
    if type(node) in CONSTRUCTS:
        words, hint = CONSTRUCTS[type(node)]
        return Refusal("gate.construct_not_allowed", f"the gate does not answer {words}",
                       _hint(hint, node), node)
    return Refusal("gate.construct_not_allowed", f"the gate does not answer {_excerpt(node)}",
                   GENERIC_HINT, node)


EXCERPT_MAX = 40


def _excerpt(node: exp.Expression) -> str:
    """The refused part as SQL text (short), or a generic phrase: never a node class."""
    try:
        text = " ".join(node.sql("duckdb", unsupported_level=ErrorLevel.IGNORE).split())
    except Exception:  # any generator failure: say it generically
        text = ""
    if not text or len(text) > EXCERPT_MAX:
        return "this part of the query" if not text else f"'{text[:EXCERPT_MAX - 1]}…'"
    return f"'{text}'"
