"""The reference docs cannot drift from the code.

* docs/gate.md names every refusal rule, and every SQL example in it is checked against
  the gate with the credit-underwriting policy: fenced ```sql answered``` blocks must be
  answered, ```sql refused <code>``` blocks and the refusal table's examples must be
  refused with the named code.
* docs/settings.md documents every setting and global CLI option.
* docs/policy.md and docs/policy.schema.json name every key, role, mechanism and refresh
  rule the policy loader knows; the schema accepts the shipped policies and rejects the
  same structural mistakes as the loader (checked with a small validator below for the
  subset of JSON Schema the schema uses: jsonschema is not a dependency).
* docs/dataset-spec.md names every spec key, type, role and grade, and its example specs
  load.
"""

from __future__ import annotations

import copy
import datetime as dt
import getpass
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatekit import POLICIES, policy, resolver
from sandbox import spec as spec_module
from sandbox.cli import main as cli_main
from sandbox.gate import Gate
from sandbox.ledger import InMemoryLedger
from sandbox.policy import (
    ALIAS_RE,
    BUDGET_KEYS,
    COLUMN_KEYS,
    ID_RE,
    MAX_KEYS,
    MAX_ROWS_PER_UNIT_LIMIT,
    MECHANISMS,
    PRIVACY_KEYS,
    REFRESH,
    REVIEW_KEYS,
    ROLES,
    TABLE_KEYS,
    TOP_KEYS,
    PolicyError,
    load_policy,
)
from sandbox.policy_keys import DATE_STEPS, RANGE_KEYS
from sandbox.settings import SETTINGS
from sandbox.sql.allowlist import AGGREGATES, EXTRACT_PARTS, SCALAR_FUNCTIONS, TRUNC_UNITS
from sandbox.sql.refusal import RULES, Refusal

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GATE_MD = DOCS / "gate.md"
SETTINGS_MD = DOCS / "settings.md"
POLICY_MD = DOCS / "policy.md"
SCHEMA = DOCS / "policy.schema.json"
SPEC_MD = DOCS / "dataset-spec.md"
KEYS_MD = DOCS / "keys.md"
OWN_DOCS = (GATE_MD, SETTINGS_MD, POLICY_MD, SPEC_MD, KEYS_MD)
QUERY_START = re.compile(r"^(SELECT|WITH|FROM)\b", re.IGNORECASE)


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def squash(s: str) -> str:
    return " ".join(s.split())


def sections(md: str, level: int) -> dict[str, str]:
    """Heading text -> the text under it, for headings of exactly ``level``."""
    marker = "#" * level + " "
    out: dict[str, str] = {}
    current: str | None = None
    for line in md.splitlines():
        if line.startswith(marker):
            current = line[len(marker):].strip()
            out[current] = ""
        elif re.match("^#{1," + str(level) + "} ", line):
            current = None
        elif current is not None:
            out[current] += line + "\n"
    return out


# -- docs/gate.md: the SQL examples -------------------------------------------------------
@dataclass(frozen=True)
class Example:
    line: int
    sql: str
    refused: str | None  # the rule code, or None when the query must be answered
    epsilon: float | None = None

    @property
    def id(self) -> str:
        return f"{'refused' if self.refused else 'answered'}-L{self.line}"


FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
SPAN = re.compile(r"`(?P<code>[^`]+)`(?:\s*\(epsilon (?P<eps>[0-9.]+)\))?")


def _queries(body: str) -> list[str]:
    out = []
    for piece in re.split(r";[ \t]*$", body, flags=re.M):
        real = [ln for ln in piece.splitlines() if ln.strip() and not ln.strip().startswith("--")]
        if real:
            out.append(piece.strip())
    return out


def fenced_examples(md: str) -> list[Example]:
    examples = []
    for m in FENCE.finditer(md):
        words = m.group("info").split()
        if len(words) < 2 or words[0] != "sql" or words[1] not in ("answered", "refused"):
            continue
        code = words[2] if words[1] == "refused" else None
        assert words[1] == "answered" or (code and code in RULES), m.group("info")
        eps = next((float(w.split("=", 1)[1]) for w in words if w.startswith("epsilon=")),
                   None)
        line = md.count("\n", 0, m.start()) + 1
        examples += [Example(line, sql, code, eps) for sql in _queries(m.group("body"))]
    return examples


def refusal_table(md: str) -> list[tuple[int, str, str, str]]:
    """(line, code, refused cell, rephrased cell) of each row of the refusal table."""
    body = sections(md, 3)["Refusal rules"]
    start = md.index("### Refusal rules")
    rows = []
    for line in body.splitlines():
        if not line.startswith("| `gate."):
            continue
        cells = [c.replace("\\|", "|").strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 4, line
        code = re.fullmatch(r"`(gate\.[a-z_]+)`", cells[0])
        assert code, cells[0]
        lineno = md.count("\n", 0, md.index(line, start)) + 1
        rows.append((lineno, code.group(1), cells[2], cells[3]))
    return rows


def table_examples(md: str) -> list[Example]:
    examples = []
    for line, code, refused, rephrased in refusal_table(md):
        for m in SPAN.finditer(refused):
            examples.append(Example(line, m.group("code"), code,
                                    float(m.group("eps")) if m.group("eps") else None))
        for m in SPAN.finditer(rephrased):
            if QUERY_START.match(m.group("code")):
                examples.append(Example(line, m.group("code"), None,
                                        float(m.group("eps")) if m.group("eps") else None))
    return examples


GATE_EXAMPLES = fenced_examples(text(GATE_MD)) + table_examples(text(GATE_MD))


@pytest.fixture(scope="module")
def gate(tiny_vault):  # type: ignore[no-untyped-def]
    return Gate(policy(tiny_vault.catalog))


def test_gate_md_has_examples_of_both_kinds() -> None:
    assert sum(e.refused is None for e in GATE_EXAMPLES) >= 40
    assert sum(e.refused is not None for e in GATE_EXAMPLES) >= len(RULES)


@pytest.mark.parametrize("example", GATE_EXAMPLES, ids=[e.id for e in GATE_EXAMPLES])
def test_gate_md_example(gate, engine, example: Example) -> None:  # type: ignore[no-untyped-def]
    where = f"docs/gate.md:{example.line}: {example.sql}"
    if example.refused is None:
        try:
            gate.check(example.sql, example.epsilon)
        except Refusal as exc:
            pytest.fail(f"{where}\nis marked answered but was refused: {exc.to_dict()}")
    else:
        # Through the whole answer path: some rules (gate.engine_check) apply only with the
        # engine at hand, and a refusal must cost nothing.
        ledger = InMemoryLedger(100, 1e-3)
        with pytest.raises(Refusal) as info:
            gate.answer(example.sql, member="m", ledger=ledger, executor=engine,
                        epsilon=example.epsilon)
        assert info.value.code == example.refused, f"{where}\n{info.value.to_dict()}"
        assert ledger.balance("m").epsilon_spent == 0


def test_every_refusal_rule_is_in_the_table_with_an_example() -> None:
    rows = refusal_table(text(GATE_MD))
    codes = [code for _, code, _, _ in rows]
    assert sorted(codes) == sorted(RULES), "the table must list every rule of RULES once"
    refused = {e.refused for e in GATE_EXAMPLES if e.refused}
    assert refused == set(RULES), f"rules without a refused example: {set(RULES) - refused}"
    for line, code, _, rephrased in rows:
        assert rephrased, f"docs/gate.md:{line}: {code} says nothing about rephrasing"


def test_gate_md_lists_the_allowed_functions() -> None:
    md = text(GATE_MD).upper()
    same_as = {"TimestampTrunc": "DATE_TRUNC"}
    for cls in SCALAR_FUNCTIONS + AGGREGATES:
        names = [same_as.get(cls.__name__, n) for n in cls.sql_names()]
        assert any(f"`{n}" in md for n in names), f"{cls.__name__} ({names}) not in gate.md"
    for part in EXTRACT_PARTS | TRUNC_UNITS:
        assert f"`{part}`" in md, f"EXTRACT part / date_trunc unit {part} not in gate.md"


# -- docs/settings.md -----------------------------------------------------------------------
def test_every_setting_is_documented() -> None:
    md = text(SETTINGS_MD)
    secs = sections(md, 2)
    for s in SETTINGS:
        assert s.env in secs, f"docs/settings.md needs a section '## {s.env}'"
        body = squash(secs[s.env])
        assert f"**Default:** `{s.default}`" in body, f"{s.env}: default {s.default!r}"
        assert squash(s.help) in body, f"{s.env}: the help text of SETTINGS must appear"
    documented = {h for h in secs if h.startswith("SANDBOX_")}
    assert documented == {s.env for s in SETTINGS}, "a section names an unknown setting"


def test_every_global_cli_option_is_documented() -> None:
    md = text(SETTINGS_MD)
    for param in cli_main.params:
        for opt in param.opts:
            assert f"`{opt}" in md, f"global option {opt} not in docs/settings.md"
    assert "`-h`" in md and "`--help`" in md


# -- docs/policy.md and docs/policy.schema.json ---------------------------------------------
POLICY_TERMS = (TOP_KEYS | TABLE_KEYS | COLUMN_KEYS | PRIVACY_KEYS | BUDGET_KEYS | REVIEW_KEYS
                | set(ROLES) | set(MECHANISMS) | set(REFRESH))


@pytest.mark.parametrize("term", sorted(POLICY_TERMS))
def test_policy_md_names_every_key(term: str) -> None:
    assert f"`{term}`" in text(POLICY_MD)


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(text(SCHEMA))


def test_schema_key_sets_match_the_loader(schema) -> None:  # type: ignore[no-untyped-def]
    defs = schema["$defs"]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["properties"]) == TOP_KEYS
    assert set(defs["table"]["properties"]) == TABLE_KEYS
    variants = [defs[r["$ref"].rsplit("/", 1)[1]] for r in defs["column"]["oneOf"]
                if "$ref" in r]
    assert set().union(*(v["properties"] for v in variants)) == COLUMN_KEYS
    assert {role for v in variants for role in v["properties"]["role"]["enum"]} == set(ROLES)
    shorthand = next(r for r in defs["column"]["oneOf"] if "$ref" not in r)
    assert set(shorthand["enum"]) < set(ROLES)
    assert set(defs["privacy"]["properties"]) == PRIVACY_KEYS
    assert defs["privacy"]["properties"]["mechanism"]["enum"] == list(MECHANISMS)
    assert set(defs["budget"]["properties"]) == BUDGET_KEYS
    assert defs["budget"]["properties"]["refresh"]["enum"] == list(REFRESH)
    assert set(schema["properties"]["review"]["properties"]) == REVIEW_KEYS
    for obj in (schema, schema["properties"]["review"], defs["table"], defs["privacy"],
                defs["budget"], *variants):
        assert obj["additionalProperties"] is False, "the loader rejects unknown keys"
    assert schema["properties"]["id"]["pattern"] == ID_RE.pattern
    assert schema["properties"]["tables"]["propertyNames"]["pattern"] == ALIAS_RE.pattern
    assert defs["table"]["properties"]["dataset"]["pattern"] == spec_module.NAME_RE.pattern
    key_list, key_range = defs["dimension"]["properties"]["keys"]["oneOf"]
    assert key_list["maxItems"] == MAX_KEYS
    assert set(key_range["properties"]) == RANGE_KEYS
    assert key_range["properties"]["step"]["oneOf"][0]["enum"] == list(DATE_STEPS)
    assert defs["table"]["properties"]["max_rows_per_unit"]["maximum"] == \
        MAX_ROWS_PER_UNIT_LIMIT


class SchemaError(Exception):
    pass


ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description", "$comment", "default"}
KEYWORDS = {"$ref", "type", "enum", "properties", "required", "additionalProperties",
            "propertyNames", "minProperties", "items", "minItems", "maxItems", "uniqueItems",
            "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "oneOf", "pattern"}
TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def validate(schema: dict[str, Any], value: Any, root: dict[str, Any] | None = None,
             path: str = "$") -> list[str]:
    """Errors of ``value`` against ``schema``, for the subset of JSON Schema 2020-12 above."""
    root = root if root is not None else schema
    unknown = set(schema) - KEYWORDS - ANNOTATIONS
    if unknown:
        raise SchemaError(f"the test validator does not support {sorted(unknown)} at {path}")
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        errors = validate(target, value, root, path)
        if errors:
            return errors
    errors: list[str] = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(TYPES[t](value) for t in types):
            return [f"{path}: {value!r} is not of type {types}"]
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if "oneOf" in schema:
        matches = sum(not validate(s, value, root, path) for s in schema["oneOf"])
        if matches != 1:
            errors.append(f"{path}: {value!r} matches {matches} of oneOf, not exactly one")
    if isinstance(value, str) and "pattern" in schema and \
            not re.search(schema["pattern"], value):
        errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if TYPES["number"](value):
        for key, ok in (("minimum", lambda lim: value >= lim),
                        ("maximum", lambda lim: value <= lim),
                        ("exclusiveMinimum", lambda lim: value > lim),
                        ("exclusiveMaximum", lambda lim: value < lim)):
            if key in schema and not ok(schema[key]):
                errors.append(f"{path}: {value!r} fails {key} {schema[key]}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        if schema.get("uniqueItems") and any(
                _same(a, b) for i, a in enumerate(value) for b in value[i + 1:]):
            errors.append(f"{path}: items repeat")
        if "items" in schema:
            for i, item in enumerate(value):
                errors += validate(schema["items"], item, root, f"{path}[{i}]")
    if isinstance(value, dict):
        if len(value) < schema.get("minProperties", 0):
            errors.append(f"{path}: fewer than {schema['minProperties']} properties")
        errors += [f"{path}: missing '{k}'" for k in schema.get("required", [])
                   if k not in value]
        props = schema.get("properties", {})
        for key, item in value.items():
            if "propertyNames" in schema:
                errors += validate(schema["propertyNames"], key, root, f"{path}.{key} (name)")
            if key in props:
                errors += validate(props[key], item, root, f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}: unknown key '{key}'")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += validate(schema["additionalProperties"], item, root, f"{path}.{key}")
    return errors


def as_json(value: Any) -> Any:
    """What a YAML-aware editor sees: dates are strings."""
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def shipped_policy(name: str) -> dict[str, Any]:
    return yaml.safe_load(text(POLICIES / f"{name}.yaml"))


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_policies_match_the_schema(schema, path: Path) -> None:  # type: ignore[no-untyped-def]
    assert validate(schema, as_json(yaml.safe_load(text(path)))) == []


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        doc = doc[p]
    if value is DELETE:
        del doc[last]
    else:
        doc[last] = value


DELETE = object()
BAD = [
    ("colour", "blue"),
    ("id", "Credit Underwriting"),
    ("policy_version", 2),
    ("title", "   "),
    ("privacy", DELETE),
    ("budget", DELETE),
    ("tables", {}),
    ("tables.persons.colour", "blue"),
    ("tables.persons.version", 0),
    ("tables.persons.max_rows_per_unit", 0),
    ("tables.persons.columns", {}),
    ("tables.persons.columns.income", "measure"),
    ("tables.persons.columns.income", {"role": "measure"}),
    ("tables.persons.columns.income", {"role": "measure", "bounds": [0, 1, 2]}),
    ("tables.persons.columns.income", {"role": "measure", "bounds": [0, "x"]}),
    ("tables.persons.columns.income", {"role": "secret", "bounds": [0, 1]}),
    ("tables.persons.columns.gender", {"role": "filter", "keys": ["F", "M"]}),
    ("tables.persons.columns.gender", {"role": "dimension", "bounds": [0, 1]}),
    ("tables.persons.columns.gender", {"role": "dimension", "keys": []}),
    ("tables.persons.columns.gender", {"role": "dimension", "keys": ["F", "F"]}),
    ("tables.persons.columns.gender", {"role": "dimension", "colour": "blue"}),
    ("joins", [["persons.person_id"]]),
    ("privacy.epsilon_default", 0),
    ("privacy.delta", "1e-7"),
    ("privacy.delta", 0.01),
    ("privacy.max_groups_per_unit", 0),
    ("privacy.mechanism", "geometric"),
    ("privacy.colour", "blue"),
    ("budget.epsilon", -1),
    ("budget.delta", 1),
    ("budget.refresh", "weekly"),
    ("review.approved", True),
]
BAD_CASES = [
    pytest.param(where, value, id=f"bad-{where}")
    for where, value in BAD
]
GOOD = [
    ("tables.persons.columns.gender", "dimension"),
    ("tables.persons.columns.gender", {"role": "dimension", "description": "F or M"}),
    ("tables.persons.columns.employed", {"role": "dimension", "keys": [True, False]}),
    ("tables.persons.columns.registered_on", {"role": "filter"}),
    ("tables.persons.version", DELETE),
    ("review", None),
    ("joins", DELETE),
    ("privacy.mechanism", "gaussian"),
    ("budget.refresh", "none"),
]


def _load(tmp_path: Path, doc: dict[str, Any], catalog) -> Exception | None:  # type: ignore[no-untyped-def]
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    try:
        load_policy(path, resolver(catalog))
    except PolicyError as exc:
        return exc
    return None


@pytest.mark.parametrize(("where", "value"), BAD_CASES)
def test_schema_and_loader_reject_the_same_mistakes(schema, tiny_vault, tmp_path,  # type: ignore[no-untyped-def]
                                                    where: str, value: Any) -> None:
    doc = copy.deepcopy(shipped_policy("credit_underwriting"))
    _set(doc, where, value)
    assert validate(schema, as_json(doc)), f"the schema accepts {where} = {value!r}"
    assert _load(tmp_path, doc, tiny_vault.catalog) is not None, \
        f"the loader accepts {where} = {value!r}"


@pytest.mark.parametrize(("where", "value"), GOOD, ids=[f"good-{w}" for w, _ in GOOD])
def test_schema_and_loader_accept_the_same_variants(schema, tiny_vault, tmp_path,  # type: ignore[no-untyped-def]
                                                    where: str, value: Any) -> None:
    doc = copy.deepcopy(shipped_policy("credit_underwriting"))
    _set(doc, where, value)
    assert validate(schema, as_json(doc)) == []
    assert _load(tmp_path, doc, tiny_vault.catalog) is None


# -- docs/dataset-spec.md -------------------------------------------------------------------
SPEC_TERMS = (spec_module.SPEC_KEYS | spec_module.COLUMN_KEYS | set(spec_module.ARROW_TYPES)
              | set(spec_module.ROLES) | set(spec_module.GRADES))


@pytest.mark.parametrize("term", sorted(SPEC_TERMS))
def test_dataset_spec_md_names_every_term(term: str) -> None:
    assert f"`{term}`" in text(SPEC_MD)


def test_dataset_spec_md_examples_load(tmp_path: Path) -> None:
    blocks = [m.group("body") for m in FENCE.finditer(text(SPEC_MD))
              if m.group("info").strip() == "yaml" and "columns:" in m.group("body")]
    assert len(blocks) >= 2
    for i, body in enumerate(blocks):
        path = tmp_path / f"example{i}.yaml"
        path.write_text(body, encoding="utf-8")
        spec = spec_module.load_spec(path)
        assert spec.columns


# -- walk-throughs that run as written -----------------------------------------------------------
WALKTHROUGH_DOCS = (KEYS_MD, DOCS / "workspaces.md")


def walkthroughs() -> list[tuple[str, int, str]]:
    """(doc, line, body) of every ```bash walkthrough``` block."""
    out = []
    for path in WALKTHROUGH_DOCS:
        md = text(path)
        for m in FENCE.finditer(md):
            if m.group("info").split() == ["bash", "walkthrough"]:
                out.append((path.name, md.count("\n", 0, m.start()) + 1, m.group("body")))
    return out


def test_the_operator_guides_have_walkthroughs() -> None:
    assert [doc for doc, _, _ in walkthroughs()] == ["keys.md", "workspaces.md"]


@pytest.mark.slow
@pytest.mark.parametrize(("doc", "line", "body"), walkthroughs(),
                         ids=lambda v: str(v)[:20] if not isinstance(v, int) else f"L{v}")
def test_walkthrough_runs_as_written_on_a_fresh_home(doc: str, line: int, body: str,
                                                     tmp_path: Path) -> None:
    """The block runs in bash (stopping at the first failing command) in an empty directory
    that holds only the checkout's policies/, as an operator would run it."""
    import os
    import subprocess
    import sys

    (tmp_path / "policies").symlink_to(ROOT / "policies")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["HOME"] = str(tmp_path / "user")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{doc}:{line}: {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr and "error [" not in proc.stderr, proc.stderr
    if doc == "keys.md":
        assert "and the identifier index key" in proc.stdout
        assert re.search(r"master key mk-\S+ destroyed", proc.stdout)
        assert "added loans version 1" in proc.stdout and "epsilon spent" in proc.stdout
    if doc == "workspaces.md":
        sha = hashlib.sha256((ROOT / "policies" / "credit_underwriting.yaml").read_bytes())
        assert f" query.answered {getpass.getuser()} credit-underwriting {sha.hexdigest()}" \
            in proc.stdout
        assert re.search(r"adhoc:credit-underwriting\s+ad-hoc\s+alice", proc.stdout)


# -- links between the docs -----------------------------------------------------------------
def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    s = heading.strip().lower()
    s = "".join(ch for ch in s if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return s.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    md = FENCE.sub("", text(path))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", md, re.M)}


@pytest.mark.parametrize("path", OWN_DOCS, ids=lambda p: p.name)
def test_links_resolve(path: Path) -> None:
    md = FENCE.sub("", text(path))
    for target in re.findall(r"\]\(([^)\s]+)\)", md):
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file) if file else path
        assert dest.exists(), f"{path.name}: broken link {target}"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{path.name}: no heading for #{anchor} in {dest}"


# -- docs/service.md: limits and error codes come from the code ----------------------------------
def _service_doc() -> str:
    return (Path(__file__).resolve().parents[1] / "docs" / "service.md").read_text()


def test_service_limits_table_is_made_from_the_code() -> None:
    from sandbox.service.config import limits_table

    table = _service_doc().split("<!-- limits table: begin -->\n", 1)[1].split(
        "<!-- limits table: end -->", 1)[0]
    assert table.strip() == limits_table(), \
        "docs/service.md is stale: paste limits_table() between the markers"


def test_service_error_codes_are_documented_both_ways() -> None:
    from sandbox.service.errors import STATUS
    from sandbox.service.openapi import ERROR_CODES

    section = _service_doc().split("## Errors", 1)[1].split("\n## ", 1)[0]
    documented: dict[str, int] = {}
    for codes, status in re.findall(r"^\| ((?:`[^`]+`(?: / )?)+) \| (\d{3}) \|", section, re.M):
        for code in re.findall(r"`([^`]+)`", codes):
            documented[code] = int(status)
    assert documented == {c: s for c, (s, _) in ERROR_CODES.items()}
    assert {c: s for c, s in STATUS.items() if c != "state.error"} == \
        {c: s for c, s in documented.items() if c in STATUS}


def test_docs_name_the_state_database_and_link_only_existing_docs() -> None:
    """A new user copied `sqlite3 state.db ...` (the file is state.sqlite) and followed a
    link to docs/refusals.md, which never existed."""
    from sandbox.settings import Paths

    name = Paths.resolve(ROOT / "h", ROOT / "k").state_db.name
    for doc in [*DOCS.glob("*.md"), ROOT / "README.md"]:
        text = doc.read_text(encoding="utf-8")
        assert "state.db" not in text.replace(name, ""), f"{doc.name} names state.db"
        for target in re.findall(r"docs/([a-z-]+\.md)", text) + \
                re.findall(r"\]\(([a-z-]+\.md)", text):
            assert (DOCS / target).exists(), f"{doc.name} refers to docs/{target}"
