"""The one table of error codes (sandbox/error_codes.py) covers every error there is.

Every ``SandboxError`` subclass in the package has a code of its own, listed in the table;
every code a carrier class is raised with in the sources is listed too; docs/errors.md is
the table; the service, the OpenAPI document and the notebook client read it.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import sandbox
from sandbox import error_codes
from sandbox.error_codes import CODES, FAMILIES, lookup, markdown
from sandbox.errors import SandboxError

ROOT = Path(__file__).resolve().parents[1]


def _all_error_classes() -> list[type[SandboxError]]:
    for info in pkgutil.walk_packages(sandbox.__path__, "sandbox."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    out: list[type[SandboxError]] = [SandboxError]
    todo = [SandboxError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in out:
                out.append(sub)
                todo.append(sub)
    return out


def _carries_code(cls: type[SandboxError]) -> bool:
    """Instances take their code as an argument (Problem, Refusal, the client's classes):
    the class's own code is only a default."""
    params = inspect.signature(cls.__init__).parameters
    return "code" in params or "rule" in params


def test_every_error_class_has_a_unique_listed_code_and_a_unique_name() -> None:
    classes = _all_error_classes()
    names: dict[str, str] = {}
    for cls in classes:
        where = f"{cls.__module__}.{cls.__qualname__}"
        assert cls.__name__ not in names, f"{where} and {names[cls.__name__]} share a name"
        names[cls.__name__] = where
    owners: dict[str, str] = {}
    for cls in classes:
        if _carries_code(cls):
            continue
        where = f"{cls.__module__}.{cls.__qualname__}"
        assert "code" in vars(cls), f"{where} inherits its parent's code: give it its own"
        assert cls.code in CODES, f"{where}: code {cls.code} is not in sandbox/error_codes.py"
        assert cls.code not in owners, f"{where} and {owners[cls.code]} share {cls.code}"
        owners[cls.code] = where


def test_every_code_raised_in_the_sources_is_listed() -> None:
    carriers = sorted({c.__name__ for c in _all_error_classes() if _carries_code(c)})
    raised = re.compile(r"\b(?:{})\(\s*\"([a-z_]+(?:\.[a-z_]+)+)\"".format("|".join(carriers)))
    literal = re.compile(r"\"code\": \"([a-z_]+(?:\.[a-z_]+)*)\"")
    missing = []
    for path in sorted((ROOT / "sandbox").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for code in raised.findall(text) + literal.findall(text):
            if lookup(code) is None:
                missing.append(f"{path.relative_to(ROOT)}: {code}")
    assert not missing, missing
    assert len(carriers) >= 5  # Problem, Refusal, ConsoleError, the client's classes, ...


def test_docs_errors_md_is_the_table() -> None:
    text = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    assert text == markdown(), "docs/errors.md is stale: python -m sandbox.error_codes > " \
                               "docs/errors.md"
    documented = set(re.findall(r"^\| `([^`]+)` \|", text, re.M))
    assert documented == set(CODES)


def test_the_service_and_openapi_read_the_table() -> None:
    from sandbox.service.errors import STATUS, Problem, status_of
    from sandbox.service.openapi import ERROR_CODES, document

    api = {c: e for c, e in CODES.items() if e.api}
    assert {c: (e.status, e.description) for c, e in api.items()} == ERROR_CODES
    assert document("/p/", "0")["x-error-codes"] == {
        c: {"status": e.status, "description": e.description} for c, e in api.items()}
    assert {c: e.status for c, e in api.items() if not c.endswith(".*")} == STATUS
    for code, status in [("gate.too_large", 400), ("budget.exhausted", 403),
                         ("export.revoked", 410), ("engine.timeout", 504),
                         ("export.bundle_invalid", 500), ("budget.other", 500)]:
        assert status_of(Problem(code, "m")) == status, code


def test_the_client_raises_one_class_per_family_from_the_table() -> None:
    from sandbox import client

    for prefix, name in FAMILIES.items():
        cls = getattr(client, name)
        assert issubclass(cls, client.SandboxServiceError) and cls.__module__ == client.__name__
        assert client.FAMILIES[prefix] is cls
    for code, entry in CODES.items():
        err = client.error_from(entry.status or 500, {"error": {
            "code": code.replace("*", "x"), "message": "m", "hint": None}})
        assert type(err).__name__ == FAMILIES.get(code.split(".")[0], "SandboxServiceError")
    # the earlier names still catch what they caught
    assert client.WorkspaceError is client.WorkspaceRefused
    assert client.ExportError is client.ExportRefused


def test_the_table_imports_nothing_of_the_sandbox() -> None:
    """The notebook client imports it: it must stay free of server-side modules."""
    code = ("import sys, sandbox.error_codes; "
            "print(sorted(m for m in sys.modules if m.startswith('sandbox')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "['sandbox', 'sandbox.error_codes']"
    assert error_codes.__doc__
