"""Dummy data through the real service and the notebook client, against a real JupyterHub
(see test_service): ``"dummy": true``, no budget spent, audit records, labelled results,
and the export airlock's refusal."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from test_service import (  # noqa: F401  (fixtures)
    JOIN,
    SIMPLE,
    WS,
    Hub,
    Svc,
    alice,
    assert_clean,
    charges,
    hub,
    rid,
    service,
    vault_home,
)

from sandbox.settings import Paths


def records(paths: Paths, kind: str) -> list[dict]:
    con = sqlite3.connect(paths.state_db)
    try:
        return [json.loads(b) for (b,) in con.execute(
            "SELECT body FROM audit_records WHERE kind = ? ORDER BY seq", (kind,))]
    finally:
        con.close()


def ask(svc: Svc, token: str, sql: str, **body: object):  # type: ignore[no-untyped-def]
    return svc.call("POST", f"workspaces/{WS}/query", token,
                    json={"sql": sql, "request_id": rid(), **body})


def test_dummy_query_is_free_labelled_and_audited(service: Svc, alice: str,  # noqa: F811
                                                  vault_home: Paths) -> None:  # noqa: F811
    before = service.call("GET", f"workspaces/{WS}/budget", alice).json()
    n_charges = len(charges(vault_home, "alice"))
    r = ask(service, alice, JOIN, epsilon=0.4, dummy=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dummy"] is True and body["noisy"] is True and body["replayed"] is False
    assert body["release_id"].startswith("dummy-") and "Sandbox-Replayed" not in r.headers
    assert body["columns"] == ["district", "n", "a"] and len(body["rows"]) == 6
    assert body["epsilon"] == pytest.approx(0.4)  # what it would cost for real
    assert body["budget"] == before
    assert service.call("GET", f"workspaces/{WS}/budget", alice).json() == before
    assert len(charges(vault_home, "alice")) == n_charges
    (rec,) = [x for x in records(vault_home, "query.dummy")
              if x["release_id"] == body["release_id"]]
    assert rec["member"] == "alice" and rec["workspace"] == WS and rec["sql"] == JOIN
    assert (rec["epsilon"], rec["rows"]) == (0.0, 6)
    assert rec["noise_epsilon"] == pytest.approx(0.4)
    # the same question again: answered afresh (never stored, never replayed), still free
    again = ask(service, alice, JOIN, epsilon=0.4, dummy=True).json()
    assert again["release_id"] != body["release_id"] and again["budget"] == before


def test_dummy_and_real_answers_have_the_same_shape(service: Svc, alice: str) -> None:  # noqa: F811
    fake = ask(service, alice, SIMPLE, dummy=True).json()
    real = ask(service, alice, SIMPLE).json()
    assert real["dummy"] is False and not real["release_id"].startswith("dummy-")
    assert fake["columns"] == real["columns"] and fake["mechanisms"] == real["mechanisms"]
    assert [r[0] for r in fake["rows"]] == [r[0] for r in real["rows"]]  # public keys
    assert real["budget"]["epsilon_spent"] == pytest.approx(
        fake["budget"]["epsilon_spent"] + real["epsilon"])
    # a dummy question never gets a real stored answer, even the same question
    again = ask(service, alice, SIMPLE, dummy=True).json()
    assert again["dummy"] is True and again["release_id"] != real["release_id"]


def test_dummy_refusal_is_the_same_and_recorded_as_dummy(service: Svc, alice: str,  # noqa: F811
                                                         vault_home: Paths) -> None:  # noqa: F811
    sql = "SELECT max(income) FROM persons /* dummy refusal */"
    fake = ask(service, alice, sql, dummy=True)
    real = ask(service, alice, sql)
    assert fake.status_code == real.status_code == 400
    assert fake.json() == real.json()
    assert_clean(fake)
    recs = [r for r in records(vault_home, "query.refused") if r["sql"] == sql]
    assert [r["dummy"] for r in recs] == [True, None]


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_dummy_must_be_a_boolean(service: Svc, alice: str, value: object) -> None:  # noqa: F811
    r = ask(service, alice, SIMPLE, dummy=value)
    assert r.status_code == 400 and r.json()["error"]["code"] == "input.invalid"
    assert "'dummy'" in r.json()["error"]["message"]


def test_openapi_documents_the_dummy_field() -> None:
    from sandbox.service.openapi import document

    doc = document("/services/sandbox/", "0")
    schemas = doc["components"]["schemas"]
    assert schemas["QueryRequest"]["properties"]["dummy"]["type"] == "boolean"
    assert schemas["Release"]["properties"]["dummy"]["type"] == "boolean"
    assert doc["x-error-codes"]["export.dummy"]["status"] == 400


def test_export_of_a_dummy_result_is_refused(service: Svc, alice: str,  # noqa: F811
                                             vault_home: Paths) -> None:  # noqa: F811
    rel = ask(service, alice, SIMPLE, dummy=True).json()
    items = [{"kind": "frame", "name": "mix", "columns": rel["columns"], "rows": rel["rows"],
              "release_ids": [rel["release_id"]]}]
    r = service.call("POST", f"workspaces/{WS}/exports", alice,
                     json={"title": "mix", "purpose": "report", "items": items})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "export.dummy" and "for real" in err["hint"]
    assert_clean(r)
    assert service.call("GET", f"workspaces/{WS}/exports", alice).json() == []
    invalid = records(vault_home, "request.invalid")
    assert invalid[-1]["code"] == "export.dummy" and invalid[-1]["member"] == "alice"


# -- the notebook client ---------------------------------------------------------------------
@pytest.fixture
def env(service: Svc, alice: str, monkeypatch: pytest.MonkeyPatch) -> Svc:  # noqa: F811
    monkeypatch.setenv("SANDBOX_SERVICE_URL", service.base.removesuffix("api/v1/"))
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", alice)
    return service


def test_client_dummy_results_are_labelled_and_never_exported(env: Svc) -> None:
    from sandbox.client import ExportError, Sandbox, render, render_text

    sb = Sandbox(WS, dummy=True)
    assert "dummy=True" in repr(sb)
    before = sb.budget()["epsilon_spent"]
    df = sb.sql(SIMPLE, epsilon=0.3)
    assert df.attrs["dummy"] is True and df.attrs["release"]["dummy"] is True
    assert df.attrs["release"]["release_id"].startswith("dummy-")
    page, text = render(df), render_text(df)
    assert "DUMMY" in page and "sandbox-result-dummy" in page and "ε spent: 0" in page
    assert text.startswith("*** DUMMY DATA")
    assert sb.budget()["epsilon_spent"] == before
    with pytest.raises(ExportError) as info:
        sb.export({"mix": df}, title="mix", purpose="report")
    assert info.value.code == "export.dummy"
    # per query: a real answer from the same client, labelled real
    real = sb.sql(SIMPLE, epsilon=0.3, dummy=False)
    assert real.attrs["dummy"] is False and "DUMMY" not in render(real)
    assert render_text(real) == real.to_string()
    assert sb.budget()["epsilon_spent"] == pytest.approx(before + 0.3)
    # explain is the same either way and spends nothing
    assert sb.explain(SIMPLE)["cost"]["epsilon"] == pytest.approx(0.5)


def test_dpsql_dummy_cell(env: Svc) -> None:
    from sandbox import client as client_mod

    client_mod._clients.clear()
    df = client_mod.dpsql(f"--workspace {WS} --dummy --epsilon 0.2", SIMPLE)
    assert df.attrs["dummy"] is True
    assert df.attrs["release"]["epsilon"] == pytest.approx(0.2)
    real = client_mod.dpsql(f"--workspace {WS} --epsilon 0.2", SIMPLE)
    assert real.attrs["dummy"] is False


def test_notebook_display_says_dummy(env: Svc) -> None:
    """IPython shows dummy results with the DUMMY banner, as HTML and as text."""
    from IPython.core.interactiveshell import InteractiveShell

    from sandbox import client as client_mod

    shell = InteractiveShell.instance()
    try:
        client_mod.load_ipython_extension(shell)
        df = client_mod.Sandbox(WS).sql(SIMPLE, dummy=True)
        data, _ = shell.display_formatter.format(df)
        assert "DUMMY" in data["text/html"] and "DUMMY" in data["text/plain"]
        import pandas as pd

        plain = pd.DataFrame({"a": [1]})
        data, _ = shell.display_formatter.format(plain)
        assert "DUMMY" not in data["text/plain"] and data["text/plain"] == repr(plain)
    finally:
        InteractiveShell.clear_instance()


def test_nothing_in_the_service_reads_the_vault_for_dummy_data() -> None:
    """The dummy engine is made from the approved policy alone (no catalog, no keys)."""
    source = (Path(__file__).resolve().parents[1] / "sandbox" / "dummy.py").read_text()
    for needle in ("catalog", "kms", "vault", "open_encrypted", "Engine"):
        assert f"import {needle}" not in source and f"from .{needle}" not in source
