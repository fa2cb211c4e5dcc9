"""Dataset specs: the operator's description and classification of every column.

A spec says, for each column, its type, a description, a role and a grade
(数据分类分级). Roles decide what analysis may ever see: ``identifier`` columns
(name, ID number, phone) are encrypted under their own key and never loaded
into the query engine.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from .errors import SpecError
from .yamlio import LineDict, LineList, line_of, load_yaml

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
}
NUMERIC_TYPES = frozenset({"int16", "int32", "int64", "float64"})
ROLES = ("identifier", "privacy_unit", "quasi_identifier", "sensitive", "attribute")
GRADES = ("general", "important", "core")  # in order: a later grade is stricter
# The least grade a role allows: whatever identifies a person directly is core data, and
# the unit's pseudonym and sensitive values are at least important.
MIN_GRADE = {"identifier": "core", "privacy_unit": "important", "sensitive": "important"}
SPEC_KEYS = {"spec_version", "dataset", "title", "description", "owner", "source", "public",
             "columns"}
COLUMN_KEYS = {"name", "type", "role", "grade", "description"}


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: str
    role: str
    grade: str
    description: str = ""

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.type]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    description: str = ""
    owner: str = ""
    source: str = ""
    public: bool = False
    columns: tuple[ColumnSpec, ...] = field(default_factory=tuple)

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def identifier_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.role == "identifier"]

    @property
    def analytic_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.role != "identifier"]

    @property
    def privacy_unit(self) -> str | None:
        return next((c.name for c in self.columns if c.role == "privacy_unit"), None)

    def arrow_schema(self, columns: list[str] | None = None) -> pa.Schema:
        wanted = columns if columns is not None else [c.name for c in self.columns]
        return pa.schema([pa.field(n, self.column(n).arrow_type) for n in wanted])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["columns"] = [asdict(c) for c in self.columns]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetSpec:
        cols = tuple(ColumnSpec(**c) for c in d["columns"])
        return cls(**{**d, "columns": cols})


def validate_name(name: str, what: str = "dataset name") -> None:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SpecError(
            f"invalid {what} {name!r}",
            "use 1-63 characters: lower-case letters, digits and '_', starting with a letter",
        )


def _comma_note(col: LineDict, key: str) -> str:
    """An unknown key on the same line as the others is most likely the rest of a text cut
    at a comma: in a flow mapping ``{name: x, description: a, b}`` a comma ends the value."""
    line = line_of(col, key)
    if not any(line_of(col, k) == line for k in col if k != key):
        return ""
    return ("; it looks like the rest of a text cut at a comma: inside { } a comma ends the "
            "value, so quote text that holds commas, e.g. description: \"a, b\"")


def load_spec(path: Path, name_override: str | None = None) -> DatasetSpec:
    """Load and validate a spec file; report every problem at once, each with file:line."""
    doc = load_yaml(path, "dataset spec")
    problems: list[str] = []

    def bad(line: int, msg: str) -> None:
        problems.append(f"{path}:{line}: {msg}")

    if not isinstance(doc, LineDict):
        raise SpecError(f"{path}: a dataset spec must be a YAML mapping",
                        "see docs/dataset-spec.md for the format")
    for key in doc:
        if key not in SPEC_KEYS:
            bad(line_of(doc, key), f"unknown key '{key}' (allowed: {', '.join(sorted(SPEC_KEYS))})")
    if doc.get("spec_version", 1) != 1:
        bad(line_of(doc, "spec_version"), "spec_version must be 1")
    name = name_override or doc.get("dataset")
    if not name:
        bad(doc.line, "missing 'dataset' (the dataset name)")
    elif not isinstance(name, str) or not NAME_RE.match(name):
        bad(line_of(doc, "dataset"), f"invalid dataset name {name!r}: use lower-case letters, "
            "digits and '_', starting with a letter")
    for key in ("title", "description", "owner", "source"):
        if key in doc and not isinstance(doc[key], str):
            bad(line_of(doc, key), f"'{key}' must be text")
    public = doc.get("public", False)
    if not isinstance(public, bool):
        bad(line_of(doc, "public"), "'public' must be true or false")
        public = False

    cols_doc = doc.get("columns")
    columns: list[ColumnSpec] = []
    if not isinstance(cols_doc, LineList) or not cols_doc:
        bad(line_of(doc, "columns"), "'columns' must be a non-empty list of columns")
        cols_doc = LineList()
    seen: set[str] = set()
    for i, col in enumerate(cols_doc):
        line = cols_doc.item_lines[i]
        if not isinstance(col, LineDict):
            bad(line, "each column must be a mapping with name, type, role and grade")
            continue
        for key in col:
            if key not in COLUMN_KEYS:
                bad(line_of(col, key), f"unknown column key '{key}' (allowed: "
                    f"{', '.join(sorted(COLUMN_KEYS))}){_comma_note(col, key)}")
        cname = col.get("name")
        if not isinstance(cname, str) or not NAME_RE.match(cname):
            bad(line_of(col, "name"), f"invalid column name {cname!r}")
            continue
        if cname in seen:
            bad(line_of(col, "name"), f"column '{cname}' is declared twice")
        seen.add(cname)
        ctype, role, grade = col.get("type"), col.get("role"), col.get("grade")
        if ctype not in ARROW_TYPES:
            bad(line_of(col, "type"), f"column '{cname}': unknown type {ctype!r} (allowed: "
                f"{', '.join(ARROW_TYPES)})")
        if role not in ROLES:
            bad(line_of(col, "role"), f"column '{cname}': unknown role {role!r} (allowed: "
                f"{', '.join(ROLES)})")
        if grade not in GRADES:
            bad(line_of(col, "grade"), f"column '{cname}': unknown grade {grade!r} (allowed: "
                f"{', '.join(GRADES)})")
        desc = col.get("description", "")
        if not isinstance(desc, str):
            bad(line_of(col, "description"), f"column '{cname}': description must be text")
            desc = ""
        if role in MIN_GRADE and grade in GRADES and \
                GRADES.index(grade) < GRADES.index(MIN_GRADE[role]):
            bad(line_of(col, "grade"), f"column '{cname}': a {role} column is graded at least "
                f"{MIN_GRADE[role]}, not {grade} (数据分类分级)")
        if ctype in ARROW_TYPES and role in ROLES and grade in GRADES:
            columns.append(ColumnSpec(cname, ctype, role, grade, desc))

    units = [c for c in columns if c.role == "privacy_unit"]
    if public:
        for c in columns:
            if c.role in ("identifier", "privacy_unit", "sensitive"):
                bad(doc.line, f"public dataset cannot have a column with role {c.role} "
                    f"('{c.name}'); mark the dataset public: false")
    elif len(units) != 1 and columns:
        bad(line_of(doc, "columns"), "a non-public dataset needs exactly one column with role "
            f"privacy_unit (found {len(units)}): the person or entity whose privacy is protected")
    if columns and not any(c.role != "identifier" for c in columns):
        bad(line_of(doc, "columns"), "every column is an identifier: nothing could be analysed")

    if problems:
        raise SpecError(
            f"{len(problems)} problem(s) in dataset spec {path}: " + "; ".join(problems),
            "fix the spec; see docs/dataset-spec.md",
            problems,
        )
    return DatasetSpec(
        name=str(name), title=str(doc.get("title") or name),
        description=str(doc.get("description", "")), owner=str(doc.get("owner", "")),
        source=str(doc.get("source", "")), public=public, columns=tuple(columns),
    )
