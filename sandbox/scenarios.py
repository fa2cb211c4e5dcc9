"""Reviewed scenario policies (一类场景一审定): one review per kind of use, then many workspaces.

A review stores the exact policy text, its SHA-256, the dataset versions it was checked
against, the reviewer and the review reference, as the next version of the scenario, with
an audit record in the same transaction. What is served is always a stored version, never
the file on disk: editing the file changes nothing until it is reviewed again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, SandboxError
from .fsutil import atomic_write_bytes
from .grading import DEFAULT_RULES, GradeRule, grade
from .policy import Policy, load_policy
from .spec import DatasetSpec
from .state import State

Resolver = Callable[[str, int | None], "tuple[DatasetSpec, int] | None"]
TEXT_RE = re.compile(r"^\S(.{0,198}\S)?$")


class ScenarioError(SandboxError):
    code = "scenario.error"


class GradingError(InputError):
    """The grades of the columns a policy exposes do not allow it (``sandbox.grading``);
    ``problems`` lists every reason."""

    code = "scenario.grading"

    def __init__(self, message: str, hint: str, problems: list[str]) -> None:
        super().__init__(message, hint)
        self.problems = problems


class ScenarioNotFoundError(ScenarioError):
    code = "scenario.not_found"


@dataclass(frozen=True)
class ScenarioVersion:
    id: str
    version: int
    title: str
    content_hash: str
    text: str
    datasets: dict[str, int]
    reviewer: str
    reference: str
    reviewed: str
    source: str
    seq: int

    def file_status(self) -> str:
        """Whether the reviewed file still holds the reviewed text (for operators)."""
        path = Path(self.source)
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return "file missing (the approved version is still served)"
        if digest != self.content_hash:
            return "policy changed since review; re-review required"
        return "file matches the review"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "title": self.title,
                "content_hash": self.content_hash, "datasets": self.datasets,
                "reviewer": self.reviewer, "reference": self.reference,
                "reviewed": self.reviewed, "source": self.source, "audit_seq": self.seq,
                "file": self.file_status()}


def _text_arg(name: str, value: str) -> str:
    value = (value or "").strip()
    if not TEXT_RE.match(value):
        raise InputError(f"--{name} must be 1-200 characters of text",
                         f"e.g. --{name} " + ("'Data review board'" if name == "reviewer"
                                              else "DRB-2026-014"))
    return value


def _row(r: tuple[Any, ...]) -> ScenarioVersion:
    return ScenarioVersion(r[0], int(r[1]), r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8],
                           r[9], int(r[10]))


_COLUMNS = ("id, version, title, content_hash, text, datasets, reviewer, reference, reviewed, "
            "source, seq")


class Scenarios:
    """Approved scenario versions in the state database."""

    def __init__(self, state: State) -> None:
        self.state = state

    def review(self, path: Path, resolve: Resolver, *, reviewer: str, reference: str,
               actor: str, accept_core: Iterable[str] = (),
               rules: dict[str, GradeRule] | None = None) -> tuple[ScenarioVersion, bool]:
        """Validate the policy against the catalog and store it as the next approved version.

        The grades of the columns it exposes must allow it (``sandbox.grading``: every core
        column accepted by name in ``accept_core``, the floors of ``rules``). Returns
        (version, stored): a file identical to the newest approved version is not stored
        again (re-running a review script is safe)."""
        reviewer, reference = _text_arg("reviewer", reviewer), _text_arg("reference", reference)
        path = Path(path).absolute()
        raw = path.read_bytes() if path.is_file() else b""
        policy = load_policy(path, resolve)  # names every problem, or a missing file
        graded = grade(policy, resolve, DEFAULT_RULES if rules is None else rules, accept_core)
        if graded.problems:
            raise GradingError(f"{path}: " + (graded.problems[0] if len(graded.problems) == 1
                                              else "the grades of the data it exposes do not "
                                              "allow this policy as it is"),
                               "accept core columns by name, or change the policy to meet the "
                               "floors (docs/workspaces.md, grading)", problems=graded.problems)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{path} is not UTF-8 text", "save the policy as UTF-8") from None
        digest = hashlib.sha256(raw).hexdigest()
        if digest != policy.content_hash:  # what was checked must be what is stored
            raise ScenarioError(f"{path} changed while it was being reviewed",
                                "review it again once nobody is editing it")
        datasets = {t.dataset: int(t.version) for t in policy.tables.values()
                    if t.version is not None}
        with self.state.transaction() as con:
            same = con.execute("SELECT version FROM scenarios WHERE id = ? AND content_hash = ? "
                               "ORDER BY version DESC LIMIT 1", (policy.id, digest)).fetchone()
            latest = con.execute("SELECT max(version) FROM scenarios WHERE id = ?",
                                 (policy.id,)).fetchone()[0]
            if same is not None and same[0] == latest:
                return self.get(policy.id, int(latest)), False
            version = int(latest or 0) + 1
            now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            seq = self.state.append(con, "scenario.approved", actor=actor, scenario=policy.id,
                                    version=version, content_hash=digest, title=policy.title,
                                    reviewer=reviewer, reference=reference, datasets=datasets,
                                    source=str(path), grades=graded.by_grade(),
                                    accepted_core=graded.accepted_core)
            con.execute(f"INSERT INTO scenarios ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (policy.id, version, policy.title, digest, text,
                         json.dumps(datasets, sort_keys=True), reviewer, reference, now,
                         str(path), seq))
        return self.get(policy.id, version), True

    def get(self, scenario: str, version: int | None = None) -> ScenarioVersion:
        con = self.state.con
        if version is None:
            row = con.execute(f"SELECT {_COLUMNS} FROM scenarios WHERE id = ? ORDER BY version "
                              "DESC LIMIT 1", (scenario,)).fetchone()
        else:
            row = con.execute(f"SELECT {_COLUMNS} FROM scenarios WHERE id = ? AND version = ?",
                              (scenario, version)).fetchone()
        if row is None:
            known = self.ids()
            what = f"{scenario!r}" + (f" version {version}" if version is not None else "")
            raise ScenarioNotFoundError(
                f"there is no approved scenario {what}",
                f"approved scenarios: {', '.join(known)}" if known else
                "approve one first with `sandbox scenario review POLICY.yaml --reviewer ... "
                "--reference ...`")
        return _row(row)

    def grading(self, sv: ScenarioVersion) -> tuple[dict[str, list[str]], list[str]]:
        """The grades the version exposes (grade -> columns) and the core columns its
        reviewer accepted, from its approval record (empty for reviews made before
        grading)."""
        row = self.state.con.execute("SELECT body FROM audit_records WHERE seq = ?",
                                     (sv.seq,)).fetchone()
        approval = json.loads(row[0]) if row else {}
        return approval.get("grades") or {}, approval.get("accepted_core") or []

    def ids(self) -> list[str]:
        return [r[0] for r in self.state.con.execute(
            "SELECT DISTINCT id FROM scenarios ORDER BY id")]

    def versions(self, scenario: str | None = None) -> list[ScenarioVersion]:
        sql = f"SELECT {_COLUMNS} FROM scenarios"
        args: tuple[str, ...] = ()
        if scenario is not None:
            sql, args = sql + " WHERE id = ?", (scenario,)
        return [_row(r) for r in self.state.con.execute(sql + " ORDER BY id, version", args)]


def pinned(resolve: Resolver, datasets: dict[str, int]) -> Resolver:
    """A resolver that gives the dataset versions a review was made against."""

    def resolver(name: str, version: int | None) -> tuple[DatasetSpec, int] | None:
        want = datasets.get(name)
        if want is None or (version is not None and version != want):
            return None
        return resolve(name, want)

    return resolver


def load_approved(sv: ScenarioVersion, resolve: Resolver, cache_dir: Path) -> Policy:
    """The policy of an approved version, from its stored text (never the reviewed file)."""
    if hashlib.sha256(sv.text.encode("utf-8")).hexdigest() != sv.content_hash:
        raise ScenarioError(f"the stored text of scenario {sv.id} version {sv.version} does not "
                            "match its hash", "run `sandbox audit verify`; review it again")
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = cache_dir / f"{sv.id}.v{sv.version}.yaml"
    try:
        current = path.read_bytes()
    except OSError:
        current = b""
    if current != sv.text.encode("utf-8"):
        atomic_write_bytes(path, sv.text.encode("utf-8"))
    return load_policy(path, pinned(resolve, sv.datasets))
