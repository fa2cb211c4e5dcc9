"""Request bodies: strict JSON (numbers, Unicode, nesting), then the fields checked with
``jsonschema`` against the OpenAPI document's own component schemas, so the document and
the service cannot disagree about what a body may hold."""

from __future__ import annotations

import json
import math
import re
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator, ValidationError, validators

from .errors import Problem
from .openapi import document

MAX_NESTING = 32  # depth of JSON bodies (export items are the deepest, about 5)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes) -> Any:
    """The body as JSON, or input.invalid: strict numbers, valid Unicode, bounded nesting."""
    try:
        body = json.loads(raw or b"null", parse_constant=_no_constant)
    except RecursionError:
        raise Problem("input.invalid", "the body is nested too deeply",
                      f"send JSON nested at most {MAX_NESTING} levels") from None
    except (ValueError, UnicodeDecodeError):
        raise Problem("input.invalid", "the body is not valid JSON",
                      'send a JSON object such as {"sql": "SELECT ..."}') from None
    stack: list[tuple[Any, int]] = [(body, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_NESTING:
            raise Problem("input.invalid", "the body is nested too deeply",
                          f"send JSON nested at most {MAX_NESTING} levels")
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise Problem("input.invalid", "the body holds text that is not valid Unicode "
                              "(a lone surrogate such as \\ud800)",
                              "send text as UTF-8; escape only whole characters") from None
        elif isinstance(value, float) and not math.isfinite(value):
            raise Problem("input.invalid", "the body holds a number too large for a double",
                          "send numbers within ±1.7e308")
        elif isinstance(value, dict):
            stack += [(k, depth + 1) for k in value] + [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            stack += [(v, depth + 1) for v in value]
    return body



# -- fields: checked against the OpenAPI document's own component schemas -----------------
# What a request body must be is said once, in the document that clients read; the
# validator reports the first problem in a fixed order (the body's type, unknown fields,
# missing ones, wrong types, out-of-range values, malformed ids) so a body with several
# problems always gets the same answer. The content of export items is left to the export
# rules, which answer export.invalid with the item named.
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,),
    "null": (type(None),), "array": (list,), "object": (dict,)}
_TYPE_WORDS = {"string": "a string", "number": "a number", "integer": "a whole number",
               "boolean": "true or false", "null": "null", "array": "a list",
               "object": "an object"}
# Wording of a field's own constraints (beyond its type), as the message and its hint.
_FORM = {"request_id": ("must be 1-64 letters, digits, '_' or '-'",
                        "use a fresh uuid4 hex per request")}


@cache
def component(name: str) -> dict[str, Any]:
    """A body's schema as the served OpenAPI document states it."""
    return dict(document("/", "")["components"]["schemas"][name])


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    """``pattern`` as JSON Schema means it (ECMA-262): a final ``$`` ends the text. Python's
    ``$`` also matches before a trailing newline, which would let ``"abc\n"`` through."""
    if not validator.is_type(instance, "string"):
        return
    m = re.search(pattern, instance)
    if m is None or (pattern.endswith("$") and m.end() != len(instance)):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = validators.extend(Draft202012Validator, {"pattern": _pattern})


@cache
def _validator(name: str) -> Any:
    components = document("/", "")["components"]
    return _Validator({"$ref": f"#/components/schemas/{name}", "components": components})


def _types(schema: dict[str, Any]) -> list[str]:
    """The JSON types a field may have, in the order the schema names them."""
    if "type" in schema:
        t = schema["type"]
        return [t] if isinstance(t, str) else list(t)
    return [t for branch in schema.get("anyOf", ()) for t in _types(branch)]


def _is(value: Any, types: list[str]) -> bool:
    if isinstance(value, bool):
        return "boolean" in types
    return any(isinstance(value, _TYPES[t]) for t in types)


def _problem(error: ValidationError, schema: dict[str, Any],
             body: Any) -> tuple[tuple[int, int], Problem] | None:
    """(rank, the error as input.invalid), or None for what the schema leaves to others."""
    fields = schema["properties"]
    hint = f"allowed fields: {', '.join(fields)}"
    path = list(error.absolute_path)
    if not path:
        if error.validator == "type":
            return (0, 0), Problem("input.invalid", "the body must be a JSON object",
                                   'send a JSON object such as {"sql": "SELECT ..."}')
        if error.validator == "additionalProperties":
            key = next(k for k in body if k not in fields)
            return (1, 0), Problem("input.invalid", f"unknown field {str(key)[:64]!r}", hint)
        if error.validator == "required":
            key = next(k for k in schema["required"] if k not in body)
            return (2, 0), Problem("input.invalid", f"the field {key!r} is required", hint)
        return None
    key = path[0]
    if key not in fields:
        return None
    field, value, order = fields[key], body[key], list(body).index(key)
    types = _types(field)
    if not _is(value, types):
        names = " or ".join(_TYPE_WORDS[t] for t in types)
        return (3, order), Problem("input.invalid", f"the field {key!r} must be {names}", hint)
    if len(path) > 1:
        return None
    if error.validator in ("minimum", "maximum"):
        return (4, order), Problem("input.invalid", f"the field {key!r} must be from "
                                   f"{field['minimum']:g} to {field['maximum']:g}",
                                   "omit it to use the scenario's default")
    if error.validator in ("pattern", "anyOf") and key in _FORM:
        message, form_hint = _FORM[key]
        return (5, order), Problem("input.invalid", f"the field {key!r} {message}", form_hint)
    return None


def read_body(raw: bytes, name: str) -> dict[str, Any]:
    """The body as the component schema ``name`` of the OpenAPI document allows, or
    input.invalid naming the first problem (strict JSON is checked first)."""
    body = parse_json(raw)
    schema = component(name)
    found = [p for p in (_problem(e, schema, body) for e in _validator(name).iter_errors(body))
             if p is not None]
    if found:
        raise min(found, key=lambda p: p[0])[1]
    return dict(body)
