"""Request bodies are checked against the OpenAPI document's own component schemas."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sandbox.service import handlers
from sandbox.service.bodies import component, read_body
from sandbox.service.errors import Problem
from sandbox.service.openapi import document

ROOT = Path(__file__).resolve().parents[1]


def _refused(raw: bytes, name: str) -> tuple[str, str | None]:
    with pytest.raises(Problem) as info:
        read_body(raw, name)
    assert info.value.code == "input.invalid"
    return info.value.message, info.value.hint


def test_every_route_with_a_body_has_a_component_schema_the_handler_uses() -> None:
    doc = document("/p/", "0")
    named = set()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method == "post":
                assert "requestBody" in op, path
            if "requestBody" in op:
                ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                named.add(ref.rsplit("/", 1)[1])
    used = set(re.findall(r'self\.json_body\("(\w+)"\)',
                          Path(handlers.__file__).read_text(encoding="utf-8")))
    assert used == named == {"ExplainRequest", "QueryRequest", "ExportSubmit",
                             "ExportResubmit", "ExportWithdraw"}
    for name in named:
        assert component(name)["additionalProperties"] is False, name


def test_the_example_bodies_in_docs_service_md_validate() -> None:
    text = (ROOT / "docs" / "service.md").read_text(encoding="utf-8")
    examples = re.findall(r"<!-- body: (\w+) -->\n```json\n(.*?)```", text, re.S)
    assert {name for name, _ in examples} == {"ExplainRequest", "QueryRequest", "ExportSubmit",
                                             "ExportResubmit", "ExportWithdraw"}
    for name, body in examples:
        assert read_body(body.encode(), name) == json.loads(body), name


def test_the_first_problem_is_named_in_a_fixed_order() -> None:
    q = "QueryRequest"
    assert _refused(b"[1]", q)[0] == "the body must be a JSON object"
    assert _refused(b'{"sql": 1, "zz": 1, "x": 2}', q) == (
        "unknown field 'zz'", "allowed fields: sql, epsilon, request_id, dummy")
    assert _refused(b'{"sql": 1}', q)[0] == "the field 'request_id' is required"
    assert _refused(b'{"request_id": "a b", "sql": 1, "epsilon": 1e9}', q)[0] == \
        "the field 'sql' must be a string"
    assert _refused(b'{"sql": "s", "request_id": "a", "epsilon": true}', q)[0] == \
        "the field 'epsilon' must be a number or null"
    assert _refused(b'{"sql": "s", "request_id": "a b", "epsilon": 1e9}', q) == (
        "the field 'epsilon' must be from 1e-06 to 10000",
        "omit it to use the scenario's default")
    assert _refused(b'{"sql": "s", "request_id": "a b"}', q) == (
        "the field 'request_id' must be 1-64 letters, digits, '_' or '-'",
        "use a fresh uuid4 hex per request")
    assert _refused(b'{"sql": "s", "request_id": "abc\\n"}', q)[0] == \
        "the field 'request_id' must be 1-64 letters, digits, '_' or '-'"
    assert _refused(b'{"sql": "s", "request_id": "a", "dummy": 1}', q)[0] == \
        "the field 'dummy' must be true or false"
    assert _refused(b'{"comment": 3}', "ExportWithdraw")[0] == \
        "the field 'comment' must be a string or null"
    assert _refused(b'{"title": "t", "purpose": "p", "items": [], "request_id": "!"}',
                    "ExportSubmit")[0] == \
        "the field 'request_id' must be 1-64 letters, digits, '_' or '-'"


def test_strict_json_comes_first() -> None:
    assert _refused(b'{"sql": NaN}', "QueryRequest")[0] == "the body is not valid JSON"


def test_items_content_is_left_to_the_export_rules() -> None:
    """An empty list or a malformed item passes the body check: the export rules answer
    export.invalid naming the item, as they always did."""
    body = read_body(b'{"title": "t", "purpose": "p", "items": [1]}', "ExportSubmit")
    assert body["items"] == [1]
    assert read_body(b'{"items": []}', "ExportResubmit") == {"items": []}


def test_resubmit_takes_what_a_resubmission_uses() -> None:
    """A resubmission is a new revision of an existing request: it has no request id of its
    own (the document used to offer one that the service ignored)."""
    assert "request_id" not in component("ExportResubmit")["properties"]
    assert _refused(b'{"items": [{}], "request_id": "x"}', "ExportResubmit")[0] == \
        "unknown field 'request_id'"
