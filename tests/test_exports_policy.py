"""The policy's optional `export:` section, its documentation and schema, and the export
docs (record kinds, rules) against the code."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_docs import as_json, validate

from gatekit import POLICIES, policy, resolver
from sandbox.exports import EXPORT_KINDS, RULES
from sandbox.exports.checks import RULES_VERSION
from sandbox.exports.items import POSTPROCESSING
from sandbox.policy import EXPORT_KEYS, ExportParams, PolicyError, load_policy

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _load(tmp_path: Path, doc: dict[str, Any], catalog: Any) -> Any:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return load_policy(path, resolver(catalog))


def shipped() -> dict[str, Any]:
    return yaml.safe_load((POLICIES / "credit_underwriting.yaml").read_text(encoding="utf-8"))


def test_shipped_policies_have_an_export_section(tiny_vault) -> None:  # type: ignore[no-untyped-def]
    for name in ("credit_underwriting", "population_livelihood"):
        assert policy(tiny_vault.catalog, name).export == ExportParams(20, 1)


def test_defaults_when_absent(tiny_vault, tmp_path) -> None:  # type: ignore[no-untyped-def]
    doc = shipped()
    del doc["export"]
    assert _load(tmp_path, doc, tiny_vault.catalog).export == ExportParams(10, 1)
    doc["export"] = None
    assert _load(tmp_path, doc, tiny_vault.catalog).export == ExportParams(10, 1)
    doc["export"] = {"approvals": 2}
    assert _load(tmp_path, doc, tiny_vault.catalog).export == ExportParams(10, 2)


@pytest.mark.parametrize(("section", "words"), [
    ({"approvals": 3}, "export.approvals must be 1 or 2"),
    ({"approvals": True}, "export.approvals must be 1 or 2"),
    ({"approvals": 1.0}, "export.approvals must be 1 or 2"),
    ({"min_group_count": 0}, "export.min_group_count must be an integer"),
    ({"min_group_count": "20"}, "export.min_group_count must be an integer"),
    ({"colour": "blue"}, "unknown key 'colour' in export"),
    ("twenty", "'export' must be a mapping"),
])
def test_bad_sections_are_reported_with_their_line(tiny_vault, tmp_path, section: Any,  # type: ignore[no-untyped-def]
                                                   words: str) -> None:
    doc = shipped()
    doc["export"] = section
    with pytest.raises(PolicyError) as info:
        _load(tmp_path, doc, tiny_vault.catalog)
    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert words in problem
    text = (tmp_path / "policy.yaml").read_text(encoding="utf-8").splitlines()
    line = int(re.match(r"^.*?:(\d+): ", problem).group(1))  # type: ignore[union-attr]
    assert "export" in text[line - 1] or any(k in text[line - 1] for k in
                                             ("approvals", "min_group_count", "colour"))


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads((DOCS / "policy.schema.json").read_text(encoding="utf-8"))


def test_schema_and_docs_name_every_export_key(schema) -> None:  # type: ignore[no-untyped-def]
    ex = schema["$defs"]["export"]
    assert set(ex["properties"]) == EXPORT_KEYS and ex["additionalProperties"] is False
    md = (DOCS / "policy.md").read_text(encoding="utf-8")
    for key in EXPORT_KEYS | {"export"}:
        assert f"`{key}`" in md


@pytest.mark.parametrize(("section", "ok"), [
    ({"min_group_count": 20, "approvals": 2}, True),
    ({}, True),
    (None, True),
    ({"approvals": 3}, False),
    ({"approvals": 1.0}, False),
    ({"min_group_count": 0}, False),
    ({"colour": "blue"}, False),
])
def test_schema_and_loader_agree(schema, tiny_vault, tmp_path, section: Any,  # type: ignore[no-untyped-def]
                                 ok: bool) -> None:
    doc = copy.deepcopy(shipped())
    doc["export"] = section
    assert (validate(schema, as_json(doc)) == []) == ok
    try:
        _load(tmp_path, doc, tiny_vault.catalog)
        loaded = True
    except PolicyError:
        loaded = False
    assert loaded == ok


# -- docs/exports.md -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def exports_md() -> str:
    return (DOCS / "exports.md").read_text(encoding="utf-8")


def test_exports_md_describes_every_record_kind_and_field(exports_md: str) -> None:
    """Same format as docs/audit-events.md, so the sections can move there verbatim."""
    sections = re.split(r"^#### ", exports_md, flags=re.M)[1:]
    by_kind = {s.split("`")[1]: s for s in sections if s.startswith("`export.")}
    assert set(by_kind) == set(EXPORT_KINDS)
    for kind, fields in EXPORT_KINDS.items():
        section = re.split(r"\n#{2,3} ", by_kind[kind])[0]
        documented = re.findall(r"^\| `([a-z0-9_]+)` \|", section, re.M)
        assert documented == list(fields), f"{kind}: fields {documented} != {list(fields)}"


def test_exports_md_names_every_rule_and_post_processing(exports_md: str) -> None:
    for rule in RULES:
        assert f"`{rule}`" in exports_md
    for step in POSTPROCESSING:
        assert f"`{step}" in exports_md
    assert RULES_VERSION in exports_md
