"""The dummy-data workflow on a real hub (tests/hubkit.py): a developer's kernel runs the
scenario walk-through on dummy data with no budget spent, then once for real, and the export
airlock refuses the dummy result while it accepts the real one."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hubkit import ROOT, Hub, Kernel, running_hub

pytestmark = pytest.mark.slow

WS = "credit-underwriting"
WALK = ROOT / "notebooks_template" / "scenarios" / f"{WS}.ipynb"


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub() as h:
        yield h


@pytest.fixture(scope="module")
def dev(hub: Hub) -> str:
    name = hub.groups[WS][0]
    hub.start_server(name)
    return name


@pytest.fixture(scope="module")
def kernel(hub: Hub, dev: str) -> Iterator[Kernel]:
    k = hub.kernel(dev)
    yield k
    k.close()


def walk_through(dummy: bool) -> list[str]:
    """The code cells of the scenario's walk-through as provisioned, DUMMY set as asked."""
    nb = json.loads(WALK.read_text(encoding="utf-8"))
    cells = ["".join(c["source"]).replace("__WORKSPACE__", WS)
             for c in nb["cells"] if c["cell_type"] == "code"]
    assert sum("DUMMY = True" in c for c in cells) == 1
    return [c.replace("DUMMY = True", f"DUMMY = {dummy}") for c in cells]


def spent(hub: Hub, dev: str) -> float:
    return float(hub.budget(WS, dev).get("epsilon_spent", 0.0))


def html_of(outputs: list[dict]) -> str:
    return "".join(str(r.get("text/html", "")) for o in outputs for r in o["results"])


def test_walk_through_on_dummy_data_then_for_real(hub: Hub, dev: str, kernel: Kernel) -> None:
    before = spent(hub, dev)
    # 1. the whole walk-through on dummy data: every query answered, nothing spent
    outputs = [kernel.check(code) for code in walk_through(dummy=True)]
    page = html_of(outputs)
    assert "DUMMY" in page and "±" in page and "sandbox-result-dummy" in page
    assert spent(hub, dev) == before
    out = kernel.check("print(by_education.attrs['dummy'], "
                       "by_education.attrs['release']['release_id'][:6], "
                       "sorted(by_education.columns))")
    assert out["stdout"].split()[:2] == ["True", "dummy-"]
    # 2. the airlock refuses the dummy result, from the client and over HTTP
    out = kernel.check(
        "from sandbox.client import ExportError\n"
        "try:\n"
        "    sb.export({'by_education': by_education}, title='t', purpose='p')\n"
        "except ExportError as exc:\n"
        "    print('refused', exc.code)\n")
    assert out["stdout"].strip() == "refused export.dummy"
    out = kernel.check(
        "rel = sb.query('SELECT status, count(*) AS loans FROM loans GROUP BY status', "
        "dummy=True)\n"
        "item = {'kind': 'frame', 'name': 'x', 'columns': rel['columns'], "
        "'rows': rel['rows'], 'release_ids': [rel['release_id']]}\n"
        "try:\n"
        "    sb._call('POST', sb._ws('exports'), {'title': 't', 'purpose': 'p', "
        "'items': [item]})\n"
        "except ExportError as exc:\n"
        "    print('refused', exc.code, exc.status)\n")
    assert out["stdout"].strip() == "refused export.dummy 400"
    assert spent(hub, dev) == before
    audit = hub.sandbox("audit", "log", "--member", dev, "--kind", "query.dummy",
                        "--format", "jsonl", operator=False).stdout.splitlines()
    assert len(audit) >= 5 and all(json.loads(r)["epsilon"] == 0 for r in audit)
    # 3. once for real: the same cells, charged (four queries at epsilon 0.5)
    outputs = [kernel.check(code) for code in walk_through(dummy=False)]
    assert "DUMMY" not in html_of(outputs)
    assert spent(hub, dev) == pytest.approx(before + 2.0)
    out = kernel.check("status = sb.export({'by_education': by_education}, title='t', "
                       "purpose='p')\nprint(by_education.attrs['dummy'], status['state'])")
    assert out["stdout"].split() == ["False", "checked"]
