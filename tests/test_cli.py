"""The real ``sandbox`` command, run as a subprocess on a private home and key store."""

from __future__ import annotations

import json
import pathlib
import re
import stat
import subprocess
import sys
from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner

from sandbox.cli import main
from sandbox.keys import FileKeyStore
from sandbox.settings import Paths

SANDBOX = pathlib.Path(sys.executable).with_name("sandbox")
ERROR_LINE = re.compile(r"^error \[[a-z_]+(\.[a-z_]+)+\]: \S.*$")


@dataclass
class Result:
    rc: int
    out: str
    err: str


@pytest.fixture
def sandbox(cli_env: dict[str, str]):
    """``sandbox(*args, input=..., env=...)`` runs the installed console script."""
    assert SANDBOX.exists(), f"console script not installed at {SANDBOX}"

    def run(*args: str, input: str | None = None, **env: str) -> Result:
        proc = subprocess.run(
            [str(SANDBOX), *args],
            env={**cli_env, **env},
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


def _ok(result: Result) -> str:
    assert result.rc == 0, result.err
    return result.out


def _error(result: Result, code: str) -> str:
    """Assert a clean failure: non-zero exit, one ``error [code]: ...`` line, a hint."""
    assert result.rc == 2, (result.rc, result.err)
    lines = result.err.splitlines()
    assert ERROR_LINE.match(lines[0]), lines
    assert lines[0].startswith(f"error [{code}]: "), lines[0]
    assert sum(line.startswith("error [") for line in lines) == 1
    hints = [line for line in lines if line.startswith("hint: ")]
    assert len(hints) == 1 and len(hints[0]) > len("hint: ") + 5, lines
    assert lines[-1] == hints[0]
    # Between the error and the hint: a list of problems ("  - ..."), or the refused SQL
    # line and a caret under the refused part (indented).
    assert all(line.startswith("  ") for line in lines[1:-1]), lines
    return lines[0]


# -- keys ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_keys_init_list_rotate_destroy(sandbox, paths: Paths, demo_dir: pathlib.Path) -> None:
    _error(sandbox("keys", "list"), "keys.not_initialised")
    out = _ok(sandbox("keys", "init"))
    (first,) = re.findall(r"active master key (mk-\d{8}-[0-9a-f]{8})", out)
    assert "back up" in out
    assert stat.S_IMODE(paths.keystore.stat().st_mode) == 0o700
    assert stat.S_IMODE((paths.keystore / "master-keys.json").stat().st_mode) == 0o600
    assert "already initialised" in _error(sandbox("keys", "init"), "keys.error")

    table = _ok(sandbox("keys", "list"))
    assert table.splitlines()[0].split() == ["ID", "STATE", "CREATED", "CHANGED", "DATASETS",
                                             "OTHER_KEYS"]
    assert re.search(rf"^{first}\s+active\s", table, re.M)
    material = json.loads((paths.keystore / "master-keys.json").read_text())["keys"][0]
    assert material["material"] not in table

    _ok(
        sandbox(
            "dataset",
            "add",
            "districts",
            str(demo_dir / "districts.parquet"),
            "--spec",
            str(demo_dir / "districts.yaml"),
        )
    )
    keys = json.loads(_ok(sandbox("keys", "list", "--format", "json")))
    assert [(k["id"], k["state"], k["datasets"], k["other_keys"]) for k in keys] == [
        (first, "active", "districts@1", "identifier index key")
    ]
    assert all("material" not in k for k in keys)

    line = _error(sandbox("keys", "destroy", first), "keys.error")
    assert "active and cannot be destroyed" in line

    out = _ok(sandbox("keys", "rotate"))
    (second,) = re.findall(r"active master key is now (mk-\S+);", out)
    assert f"retired: {first}" in out
    assert "re-wrapped 5 data key(s) and the identifier index key" in out
    keys = {k["id"]: k for k in json.loads(_ok(sandbox("keys", "list", "--format", "json")))}
    assert (keys[first]["state"], keys[first]["datasets"], keys[first]["other_keys"]) == (
        "retired", "-", "-")
    assert (keys[second]["state"], keys[second]["datasets"]) == ("active", "districts@1")
    assert _ok(sandbox("keys", "list", "--state", "retired", "-q")) == f"{first}\n"

    assert f"master key {first} destroyed" in _ok(sandbox("keys", "destroy", first))
    keys = {k["id"]: k for k in json.loads(_ok(sandbox("keys", "list", "--format", "json")))}
    assert keys[first]["state"] == "destroyed"
    assert "districts@1: ok" in _ok(sandbox("dataset", "verify"))

    line = _error(sandbox("keys", "destroy", second, "--force"), "keys.error")
    assert "active and cannot be destroyed" in line
    _error(sandbox("keys", "destroy", "mk-19700101-00000000"), "keys.not_found")


def test_keys_destroy_force_makes_data_unreadable(sandbox, demo_dir: pathlib.Path) -> None:
    _ok(sandbox("keys", "init"))
    _ok(
        sandbox(
            "dataset",
            "add",
            "districts",
            str(demo_dir / "districts.parquet"),
            "--spec",
            str(demo_dir / "districts.yaml"),
        )
    )
    keys = json.loads(_ok(sandbox("keys", "list", "--format", "json")))
    first = keys[0]["id"]
    # A new active key without re-wrapping, then crypto-shredding of the old one.
    ks = FileKeyStore(Paths.resolve().keystore)
    ks.activate(ks.create_key())
    result = sandbox("keys", "destroy", first)
    line = _error(result, "keys.in_use")
    assert "still wraps the data keys of districts@1 and the identifier index key" in line
    assert "sandbox keys rotate" in result.err and "--force" in result.err
    out = _ok(sandbox("keys", "destroy", first, "--force"))
    assert "destroyed" in out and "unreadable now: districts@1" in out
    # the identifier index key was moved to the active key first: later ingests still work
    _ok(sandbox("dataset", "add", "districts2", str(demo_dir / "districts.parquet"), "--spec",
                str(demo_dir / "districts.yaml")))
    result = sandbox("dataset", "verify", "districts")
    _error(result, "vault.verify_failed")
    assert "districts@1: FAILED" in result.out and "destroyed" in result.out
    assert "files are intact but their master key is destroyed" in result.err
    assert "restore" not in result.err


# -- datasets -------------------------------------------------------------------------------


@pytest.mark.slow
def test_dataset_add_list_show_verify_remove(sandbox, paths: Paths, demo_dir: pathlib.Path) -> None:
    _ok(sandbox("keys", "init"))
    assert _ok(sandbox("dataset", "list")).strip() == "(none)"
    assert json.loads(_ok(sandbox("dataset", "list", "--format", "json"))) == []
    src, spec = str(demo_dir / "persons.parquet"), str(demo_dir / "persons.yaml")

    out = _ok(sandbox("dataset", "add", "persons", src, "--spec", spec))
    assert out.strip() == (
        "added persons version 1: 2,000 rows, 3 identifier column(s) under their own key"
    )
    out = _ok(sandbox("dataset", "add", "people", src, "--spec", spec))
    assert "added people version 1" in out
    assert "added persons version 2" in _ok(
        sandbox("dataset", "add", "persons", src, "--spec", spec)
    )

    table = _ok(sandbox("dataset", "list"))
    assert table.splitlines()[0].split() == [
        "NAME",
        "VERSION",
        "ROWS",
        "COLUMNS",
        "PUBLIC",
        "TITLE",
        "OWNER",
    ]
    assert re.search(r"^persons\s+2\s+2000\s+12\s+False\s+Resident persons", table, re.M)
    assert re.search(r"^people\s+1\s+2000\s", table, re.M)
    listed = json.loads(_ok(sandbox("dataset", "list", "--format", "json")))
    assert [(d["name"], d["version"], d["rows"]) for d in listed] == [
        ("people", 1, 2000),
        ("persons", 2, 2000),
    ]

    shown = _ok(sandbox("dataset", "show", "persons"))
    assert re.search(r"^name:\s+persons$", shown, re.M)
    assert re.search(r"^version:\s+2$", shown, re.M)
    assert re.search(r"^row_count:\s+2000$", shown, re.M)
    assert re.search(
        r"^\s+part-00000\.parquet\s+[\d,]+ bytes\s+2,000 rows\s+sha256 [0-9a-f]{64}$", shown, re.M
    )
    assert re.search(r"^id_number\s+string\s+identifier\s+core\s", shown, re.M)
    assert re.search(r"^income\s+int64\s+sensitive\s+core\s", shown, re.M)

    doc = json.loads(
        _ok(sandbox("dataset", "show", "persons", "--version", "1", "--format", "json"))
    )
    assert (doc["name"], doc["version"], doc["row_count"], doc["public"]) == (
        "persons",
        1,
        2000,
        False,
    )
    roles = {c["name"]: c["role"] for c in doc["columns"]}
    assert roles["phone"] == "identifier" and roles["person_id"] == "privacy_unit"
    (f,) = doc["files"]
    v1_file = paths.vault_dir / "persons"
    v1_path = next(p for p in v1_file.rglob(f["file"]) if _sha(p) == f["sha256"])
    assert f["size"] == v1_path.stat().st_size and f["rows"] == 2000

    out = _ok(sandbox("dataset", "verify"))
    assert out.splitlines() == ["people@1: ok", "persons@1: ok", "persons@2: ok"]
    assert _ok(sandbox("dataset", "verify", "persons", "--version", "1")).strip() == "persons@1: ok"

    data = bytearray(v1_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    v1_path.write_bytes(bytes(data))
    result = sandbox("dataset", "verify")
    assert "1 dataset version(s) failed verification" in _error(result, "vault.verify_failed")
    assert result.out.splitlines() == [
        "people@1: ok",
        "persons@1: FAILED",
        "  - part-00000.parquet: SHA-256 differs from the catalog (altered)",
        "persons@2: ok",
    ]

    indexes = paths.home / "exports" / "identifiers" / "persons"
    v1_index = indexes / f"{v1_path.parent.name}.idx"
    assert v1_index.is_file() and len(list(indexes.glob("*.idx"))) == 2
    assert (
        _ok(sandbox("dataset", "remove", "persons", "--version", "1", "--yes")).strip()
        == "removed persons version(s) 1"
    )
    assert not v1_path.exists()
    assert not v1_index.exists() and len(list(indexes.glob("*.idx"))) == 1  # its index too
    # Without a terminal there is nobody to ask: one error line, exit 2, the --yes hint.
    result = sandbox("dataset", "remove", "persons", input="y\n")
    assert "no terminal to ask on" in _error(result, "input.confirmation_required")
    assert "--yes" in result.err and "Aborted" not in result.err
    assert "persons" in _ok(sandbox("dataset", "list"))
    out = _ok(sandbox("dataset", "remove", "persons", "--yes"))
    assert "removed persons version(s) 2" in out
    assert [d["name"] for d in json.loads(_ok(sandbox("dataset", "list", "--format", "json")))] == [
        "people"
    ]
    assert not (paths.vault_dir / "persons").exists() or not any(
        (paths.vault_dir / "persons").iterdir()
    )
    line = _error(sandbox("dataset", "show", "persons"), "catalog.not_found")
    assert "dataset 'persons' is not in the catalog" in line


def _sha(path: pathlib.Path) -> str:
    from sandbox.fsutil import sha256_file

    return sha256_file(path)


def test_demo_sets_everything_up(sandbox, paths: Paths) -> None:
    out = _ok(sandbox("demo", "--size", "tiny"))
    assert "created key store" in out and "master key mk-" in out
    for name, rows in (("districts", "6"), ("persons", "2,000"), ("loans", "")):
        assert f"ingested {name}: {rows}" in out
        assert re.search(rf"^{name}\s+1\s+\d+\s", out, re.M)
    assert (paths.keystore / "master-keys.json").exists()
    plain = [p for p in paths.home.rglob("*") if p.suffix in (".parquet", ".yaml")
             and "vault" not in p.parts]
    assert plain == [], "no plaintext source stays in the home"
    out = _ok(sandbox("dataset", "verify"))
    assert out.splitlines() == ["districts@1: ok", "loans@1: ok", "persons@1: ok"]
    # Running it again changes nothing.
    again = _ok(sandbox("demo", "--size", "tiny"))
    assert "ingested" not in again and "created key store" not in again
    assert re.search(r"^persons\s+1\s+2000\s", again, re.M)


def test_demo_data_writes_plaintext_sources(sandbox, tmp_path: pathlib.Path) -> None:
    out_dir = tmp_path / "demo-out"
    out = _ok(sandbox("demo-data", "--size", "tiny", "--out", str(out_dir)))
    assert sorted(pathlib.Path(p).name for p in out.split()) == sorted(
        f"{n}.{ext}" for n in ("persons", "loans", "districts") for ext in ("parquet", "yaml")
    )
    assert all((out_dir / pathlib.Path(p).name).exists() for p in out.split())


# -- errors ---------------------------------------------------------------------------------


@pytest.fixture
def bad_inputs(tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
    spec = tmp_path / "t.yaml"
    spec.write_text(
        "dataset: t\ncolumns:\n"
        "  - {name: pid, type: string, role: privacy_unit, grade: important}\n"
        "  - {name: n, type: int32, role: sensitive, grade: core}\n"
    )
    bad_spec = tmp_path / "bad.yaml"
    bad_spec.write_text(
        "dataset: t\ncolour: red\ncolumns:\n"
        "  - {name: pid, type: text, role: privacy_unit, grade: important}\n"
    )
    malformed = tmp_path / "malformed.csv"
    malformed.write_text("pid,n\nP1,1\nP2,2,3\n")
    mismatch = tmp_path / "mismatch.csv"
    mismatch.write_text("pid,n\nP1,1\nP2,secret-value\n")
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    return {
        "spec": spec,
        "bad_spec": bad_spec,
        "malformed": malformed,
        "mismatch": mismatch,
        "blocker": blocker,
    }


@pytest.mark.parametrize(
    ("setup", "args", "env", "code", "fragment"),
    [
        (False, ["keys", "list"], {}, "keys.not_initialised", "no key store"),
        (False, ["keys", "rotate"], {}, "keys.not_initialised", "no key store"),
        (False, ["keys", "destroy", "mk-1"], {}, "keys.not_initialised", "no key store"),
        (
            False,
            ["dataset", "add", "t", "{malformed}", "--spec", "{spec}"],
            {},
            "keys.not_initialised",
            "no key store",
        ),
        (
            True,
            ["dataset", "add", "t", "{malformed}", "--spec", "{tmp}/absent.yaml"],
            {},
            "input.invalid",
            "not found",
        ),
        (
            True,
            ["dataset", "add", "t", "{malformed}", "--spec", "{bad_spec}"],
            {},
            "spec.invalid",
            "2 problem(s)",
        ),
        (
            True,
            ["dataset", "add", "Bad-Name", "{malformed}", "--spec", "{spec}"],
            {},
            "spec.invalid",
            "invalid dataset name",
        ),
        (
            True,
            ["dataset", "add", "t", "{malformed}", "--spec", "{spec}"],
            {},
            "ingest.malformed_row",
            "malformed.csv:3: expected 2 fields, found 3",
        ),
        (
            True,
            ["dataset", "add", "t", "{mismatch}", "--spec", "{spec}"],
            {},
            "ingest.type_mismatch",
            "mismatch.csv:3: column 'n'",
        ),
        (
            True,
            ["dataset", "add", "t", "{tmp}/absent.csv", "--spec", "{spec}"],
            {},
            "ingest.failed",
            "source file not found",
        ),
        (True, ["dataset", "show", "nope"], {}, "catalog.not_found", "'nope' is not in"),
        (True, ["dataset", "verify", "nope"], {}, "catalog.not_found", "'nope' is not in"),
        (True, ["dataset", "remove", "nope", "--yes"], {}, "catalog.not_found", "'nope'"),
        (
            True,
            ["--keystore", "{home}/keys", "keys", "list"],
            {},
            "config.invalid",
            "inside the home",
        ),
        (
            True,
            ["keys", "list"],
            {"SANDBOX_HOME": "{blocker}/home"},
            "config.invalid",
            "cannot write to the home directory",
        ),
        (
            True,
            ["keys", "list"],
            {"SANDBOX_MASTER_KEY": "tooshort"},
            "keys.error",
            "not a base64-encoded 32-byte key",
        ),
        (
            True,
            ["keys", "rotate"],
            {"SANDBOX_MASTER_KEY": "A" * 43 + "="},
            "keys.error",
            "read-only",
        ),
        (True, ["keys", "destroy", "mk-19700101-00000000"], {}, "keys.not_found", "not in"),
    ],
    ids=[
        "keys-list-no-store",
        "keys-rotate-no-store",
        "keys-destroy-no-store",
        "add-no-store",
        "spec-missing",
        "spec-invalid",
        "bad-dataset-name",
        "malformed-row",
        "type-mismatch",
        "source-missing",
        "show-unknown",
        "verify-unknown",
        "remove-unknown",
        "keystore-in-home",
        "home-unwritable",
        "bad-env-key",
        "env-key-read-only",
        "destroy-unknown-key",
    ],
)
def test_errors_are_one_line_with_a_hint(
    sandbox,
    paths: Paths,
    bad_inputs,
    tmp_path,
    setup: bool,
    args: list[str],
    env: dict[str, str],
    code: str,
    fragment: str,
) -> None:
    if setup:
        FileKeyStore(paths.keystore).init()
    fill = {k: str(v) for k, v in bad_inputs.items()} | {
        "tmp": str(tmp_path),
        "home": str(paths.home),
    }
    result = sandbox(
        *(a.format(**fill) for a in args), **{k: v.format(**fill) for k, v in env.items()}
    )
    line = _error(result, code)
    assert fragment in line
    assert "secret-value" not in result.err + result.out
    assert not (paths.vault_dir.exists() and any(paths.vault_dir.rglob("*.parquet")))


def test_spec_errors_list_every_problem(sandbox, paths: Paths, bad_inputs) -> None:
    FileKeyStore(paths.keystore).init()
    result = sandbox(
        "dataset", "add", "t", str(bad_inputs["malformed"]), "--spec", str(bad_inputs["bad_spec"])
    )
    _error(result, "spec.invalid")
    problems = [line for line in result.err.splitlines() if line.startswith("  - ")]
    assert len(problems) == 2
    assert problems[0].startswith(f"  - {bad_inputs['bad_spec']}:2: unknown key 'colour'")
    assert problems[1].startswith(f"  - {bad_inputs['bad_spec']}:4: column 'pid': unknown type")


def test_usage_errors_exit_non_zero(sandbox) -> None:
    for args in (
        ["dataset", "add"],
        ["no-such-command"],
        ["dataset", "list", "--format", "xml"],
        ["keys", "destroy"],
    ):
        result = sandbox(*args)
        assert result.rc == 2 and "Usage:" in result.err, args


# -- help -----------------------------------------------------------------------------------


def _walk(cmd: click.Command, path: tuple[str, ...] = ()):
    yield path, cmd
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            yield from _walk(cmd.get_command(ctx, name), (*path, name))


def test_every_command_is_documented_and_has_help(paths: Paths) -> None:
    commands = list(_walk(main))
    names = {" ".join(p) for p, _ in commands}
    assert {
        "",
        "keys",
        "keys init",
        "keys list",
        "keys rotate",
        "keys destroy",
        "dataset",
        "dataset add",
        "dataset list",
        "dataset show",
        "dataset verify",
        "dataset remove",
        "demo",
        "demo-data",
    } <= names
    runner = CliRunner()
    env = {"SANDBOX_HOME": str(paths.home), "SANDBOX_KEYSTORE": str(paths.keystore)}
    for path, cmd in commands:
        label = " ".join(("sandbox", *path))
        assert (cmd.help or "").strip(), f"`{label}` has no help text"
        assert cmd.get_short_help_str().strip(), label
        result = runner.invoke(
            main, [*path, "--help"], env=env, prog_name="sandbox", catch_exceptions=False
        )
        assert result.exit_code == 0, (label, result.output)
        assert result.output.startswith(f"Usage: {label} [OPTIONS]"), result.output
        first_line = cmd.help.strip().splitlines()[0]
        assert first_line[:40] in " ".join(result.output.split()), label
        for sub in getattr(cmd, "commands", {}):
            assert sub in result.output, (label, sub)
    # --help has no side effects: no state was created.
    assert not paths.home.exists() and not paths.keystore.exists()


def test_help_and_version_through_the_console_script(sandbox) -> None:
    out = _ok(sandbox("--help"))
    assert out.startswith("Usage: sandbox ")
    for group in ("keys", "dataset", "demo"):
        assert re.search(rf"^\s+{group}\s+\S", out, re.M)
    assert "Usage: sandbox dataset add [OPTIONS] NAME PATH" in _ok(sandbox("dataset", "add", "-h"))
    assert _ok(sandbox("--version")).strip() == "sandbox, version 0.1.0"


def test_one_error_format_for_the_command_and_the_service(
        capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    """sandbox.errors.error_lines is the one terminal format of an error: the command
    prints it (red first line on a terminal), and so does the service when it cannot start."""
    from sandbox.errors import SpecError, error_lines, print_error
    from sandbox.service.__main__ import main as service_main

    exc = SpecError("bad\x1bspec", "fix\nit", problems=["a", "b"])
    assert error_lines(exc) == ["error [spec.invalid]: bad spec", "  - a", "  - b",
                                "hint: fix it"]
    print_error(exc)
    assert capsys.readouterr().err.splitlines() == error_lines(exc)
    assert service_main(["--config", str(tmp_path / "missing.yaml")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("error [config.invalid]: ") and lines[-1].startswith("hint: ")
