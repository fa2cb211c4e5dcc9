"""Refusals say what was refused in SQL words, where, and a rewrite that is answered.

No message names a parser class (``DPIPE``, ``WITHINGROUP``, ``NULLSAFEEQ``, ...), whatever
construct is refused; the position is the start of the refused part; and the hints built
from the refused query's own columns are queries the gate answers.
"""

from __future__ import annotations

import inspect
import re

import pytest
from sqlglot import exp
from test_gate_attacks import ATTACKS

from gatekit import policy
from sandbox.gate import Gate
from sandbox.sql import allowlist
from sandbox.sql.refusal import Refusal

# Parser classes whose upper-cased name is not a SQL word (two or more capitals: DPipe,
# WithinGroup, NullSafeEQ, PositionalColumn, ...).
SQL_WORDS = {"CTE", "JSON", "TABLESAMPLE"}
CLASS_NAMES = {name.upper() for name, cls in inspect.getmembers(exp, inspect.isclass)
               if issubclass(cls, exp.Expression) and sum(ch.isupper() for ch in name) >= 2
               } - SQL_WORDS
MORE = [
    "SELECT district || 'x' AS d, count(*) FROM persons GROUP BY d",
    "SELECT count(*) FROM persons WHERE district IS DISTINCT FROM 'Siming'",
    "SELECT count(*) FROM persons WHERE age IS NOT DISTINCT FROM 30",
    "SELECT mode() WITHIN GROUP (ORDER BY district) FROM persons",
    "SELECT count(*) FROM persons NATURAL JOIN loans",
    "SELECT #2, count(*) FROM persons",
    "SELECT count(*) FROM persons WHERE district = ?",
    "SELECT count(*) FROM persons WHERE registered_on AT TIME ZONE 'UTC' > DATE '2020-01-01'",
    "SELECT count(*) FROM persons WHERE age // 10 = 3",
    "SELECT count(*) FROM persons WHERE (age, income) = (30, 2)",
    "SELECT count(*) FROM persons WHERE district ^@ 'Si'",
    "SELECT count(*) FROM persons WHERE district COLLATE NOCASE = 'siming'",
    "SELECT count(*) FROM persons WHERE age = ANY([30, 40])",
    "SELECT avg(income ^ 2) FROM persons",
    "SELECT count(*) FROM persons WHERE district SIMILAR TO 'S.*'",
    "SELECT count(*) FROM persons WHERE district GLOB 'S*'",
    "SELECT count(*) FROM persons WHERE district LIKE 'S!%' ESCAPE '!'",
    "SELECT count(*) FROM persons WHERE age & 1 = 1",
    "SELECT count(*) FROM persons TABLESAMPLE 10%",
    "SELECT count(*) FROM persons GROUP BY GROUPING SETS ((district), ())",
    "SELECT count(*) FROM persons WHERE {'a': age}.a = 1",
    "SELECT count(*) FROM persons WHERE district = E'Siming'",
    "SELECT count(*) FROM persons WHERE map {'a': 1}['a'] = 1",
]


@pytest.fixture(scope="module")
def gate(tiny_vault):  # type: ignore[no-untyped-def]
    return Gate(policy(tiny_vault.catalog))


def _refusal(gate: Gate, sql: str) -> Refusal:
    with pytest.raises(Refusal) as info:
        gate.check(sql)
    return info.value


def _class_names_in(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z_]+", text.upper())) & CLASS_NAMES


@pytest.mark.parametrize("sql", [sql for sql, _ in ATTACKS] + MORE)
def test_no_parser_class_name_in_a_refusal(gate: Gate, sql: str) -> None:
    r = _refusal(gate, sql)
    assert not _class_names_in(r.message), r.message
    assert not _class_names_in(r.hint or ""), r.hint


def test_every_unlisted_node_is_named_without_its_class() -> None:
    """The fallback for a node the allowlist names nowhere prints SQL or a generic phrase.
    (Functions are named by their SQL name, e.g. datediff, which is what users write.)"""
    for name, cls in inspect.getmembers(exp, inspect.isclass):
        if not issubclass(cls, exp.Expression) or issubclass(cls, allowlist.ALLOWED) or \
                (issubclass(cls, exp.Func) and cls not in allowlist.FUNCTION_WORDS):
            continue
        try:
            r = allowlist._not_allowed(cls())
        except (AttributeError, TypeError, ValueError):  # needs arguments to be named at all
            continue
        if name.upper() in CLASS_NAMES:
            assert name.upper() not in re.findall(r"[A-Za-z_]+", r.message.upper()), \
                (name, r.message)
        assert r.hint


@pytest.mark.parametrize(("sql", "words"), [
    (MORE[0], "string concatenation ||"),
    (MORE[1], "IS DISTINCT FROM"),
    (MORE[3], "WITHIN GROUP"),
    (MORE[4], "NATURAL JOIN"),
    (MORE[5], "positional columns (#1)"),
    (MORE[6], "query parameters"),
    (MORE[19], "GROUP BY GROUPING SETS"),
])
def test_refused_constructs_are_named_in_sql_words(gate: Gate, sql: str, words: str) -> None:
    assert words in _refusal(gate, sql).message


# (refused query, the rewrite with {} where the hint's example goes)
REWRITES = [
    (MORE[0], "{}"),
    (MORE[1], "SELECT count(*) FROM persons WHERE {}"),
    (MORE[2], "SELECT count(*) FROM persons WHERE {}"),
    (MORE[8], "SELECT count(*) FROM persons WHERE {} = 3"),
    (MORE[10], "SELECT count(*) FROM persons WHERE {}"),
    (MORE[11], "SELECT count(*) FROM persons WHERE {}"),
    (MORE[12], "SELECT count(*) FROM persons WHERE {}"),
    (MORE[13], "SELECT avg({}) FROM persons"),
    (MORE[14], "SELECT count(*) FROM persons WHERE {}"),
    (MORE[7], "SELECT count(*) FROM persons WHERE {}"),
]


@pytest.mark.parametrize(("sql", "template"), REWRITES)
def test_the_hints_rewrite_is_answered(gate: Gate, sql: str, template: str) -> None:
    hint = _refusal(gate, sql).hint or ""
    example = hint.split("e.g. ", 1)[1].split(" (add OR", 1)[0]
    if template == "{}":  # a whole query with FROM elided
        example = example.replace("FROM ...", "FROM persons")
    gate.check(template.format(example))  # answered: no Refusal


def test_positions_point_at_the_refused_part(gate: Gate) -> None:
    # `a || b` starts at a (sqlglot locates the node at b)
    assert _refusal(gate, "SELECT count(*)\nFROM persons\nWHERE  district || 'x' = 'a'") \
        .position == (3, 8)
    # a parameter has no location of its own: the comparison around it
    assert _refusal(gate, MORE[6]).position == (1, 36)
    # never a clause-level guess: `#2` alone is not located
    assert _refusal(gate, MORE[5]).position is None
    # CJK before the refused part counts in characters (the CLI turns it into columns)
    r = _refusal(gate, "SELECT count(*) FROM persons WHERE '市区' = district AND namex = 1")
    assert r.position == (1, 56)


def test_a_refusal_can_be_placed_without_a_node() -> None:
    assert Refusal("gate.syntax", "bad", "fix it", at=(2, 5)).to_dict()["column"] == 5
