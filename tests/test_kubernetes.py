"""The Kubernetes deployment cannot drift from the service it deploys.

* Every manifest in deploy/kubernetes/ (the resources of its kustomization.yaml) validates
  against the Kubernetes API schemas of the versions in ``K8S_VERSIONS`` (strict: unknown
  fields are errors), bundled by ``kubernetes-validate``; values.yaml validates against the
  Zero to JupyterHub 4.4.0 values schema kept beside it.
* The config map's service.yaml loads through the service's own loader, and its
  copy-home.sh (the replicas' init step) runs for real on a temporary home.
* Names, labels and ports agree: Secrets and ConfigMaps referenced exist or are made by the
  operator (docs/deployment.md) or the chart; NetworkPolicies select the Deployment's pods
  and ports; probes hit the health route of ``ROUTES``; the hub's service URL is the
  Service; scopes and roles are those of the one-machine hub.
* The Dockerfiles (deploy/docker/) parse; their COPY sources exist and pass .dockerignore,
  which keeps anything secret out of the context; users, ports, commands and tags match
  the manifests; and the context builds the wheel the way the images build it.

No network and no container engine are needed.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from sandbox.service.__main__ import bind_address
from sandbox.service.config import load_config
from sandbox.service.handlers import ROUTES, HealthHandler
from sandbox.settings import SETTINGS, Paths

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
DOCKER = ROOT / "deploy" / "docker"
VALUES = K8S / "values.yaml"
CHART_SCHEMA = K8S / "z2jh-4.4.0.values.schema.json"
DEPLOYMENT_MD = ROOT / "docs" / "deployment.md"
K8S_VERSIONS = ("1.33.0", "1.37.0")  # the oldest and newest versions the manifests target
BASE_IMAGE = "python:3.11-slim-bookworm"
NAMESPACE = "sandbox"
# Made by the operator with kubectl (docs/deployment.md): name -> keys
OPERATOR_SECRETS = {"sandbox-state": {"url"}, "sandbox-cookie": {"secret"},
                    "sandbox-master-key": {"master.key"}}
CHART_HUB_SECRET = "hub"  # the chart's Secret (no fullnameOverride), one key per service
SECRET_FILE = re.compile(r"(keystore|master-keys\.json|audit-signing-key|\.key$|\.pem$|"
                         r"state\.sqlite|\.venv|\.env$)", re.IGNORECASE)
SOURCE_SUFFIXES = (".py", ".html", ".css", ".ipynb")  # code may be named after keys


def secret_like(name: str) -> bool:
    return not name.endswith(SOURCE_SUFFIXES) and bool(SECRET_FILE.search(name))


class StrictLoader(yaml.SafeLoader):
    """kubectl refuses a mapping with a key twice; PyYAML would keep the last one."""


def _mapping(loader: StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    keys = [loader.construct_object(k) for k, _ in node.value]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {dupes}",
                                                node.start_mark)
    return loader.construct_mapping(node)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(path.read_text(encoding="utf-8"), StrictLoader) if d]


KUSTOMIZATION = load_all(K8S / "kustomization.yaml")[0]
MANIFESTS = [K8S / name for name in KUSTOMIZATION["resources"]]
DOCS = [(path, doc) for path in MANIFESTS for doc in load_all(path)]
VALUES_DOC = load_all(VALUES)[0]


def find(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pods() -> list[tuple[str, dict[str, Any]]]:
    return [(d["metadata"]["name"], d["spec"]["template"]) for _, d in DOCS
            if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod["spec"].get("initContainers", []) + pod["spec"]["containers"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


SERVICE_CM = find("ConfigMap", "sandbox-service-config")
GATE = find("Deployment", "sandbox-service")["spec"]["template"]
GATE_MAIN = GATE["spec"]["containers"][0]
GATE_ENV = env_of(GATE_MAIN)
GATE_SVC = find("Service", "sandbox-service")


def mount_of(container: dict[str, Any], volume: str) -> str:
    [path] = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume]
    return str(path)


# -- the manifests -----------------------------------------------------------------------
def test_kustomization_lists_every_manifest() -> None:
    listed = {p.name for p in MANIFESTS}
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", VALUES.name}
    assert listed == present


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path,doc", DOCS, ids=[f"{p.name}:{d['kind']}/{d['metadata']['name']}"
                                                  for p, d in DOCS])
def test_manifest_validates_against_the_kubernetes_schema(path: Path, doc: dict[str, Any],
                                                          version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)
    if doc["kind"] != "Namespace":
        assert doc["metadata"]["namespace"] == NAMESPACE


def test_a_broken_manifest_is_refused() -> None:
    """The validator really checks: a misspelt field and a wrong type are errors."""
    svc = json.loads(json.dumps(GATE_SVC))
    svc["spec"]["prots"] = svc["spec"].pop("ports")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(svc, K8S_VERSIONS[0], strict=True)
    dep = json.loads(json.dumps(find("Deployment", "sandbox-service")))
    dep["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSIONS[0], strict=True)
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.load("a: 1\nb: 2\na: 3\n", StrictLoader)


def test_config_map_loads_through_the_service_loader(tmp_path: Path) -> None:
    config_dir = mount_of(GATE_MAIN, "config")
    assert GATE_MAIN["args"][:1] == ["--config"]
    config_path = Path(GATE_MAIN["args"][1])
    assert str(config_path.parent) == config_dir
    (tmp_path / config_path.name).write_text(SERVICE_CM["data"][config_path.name])
    config = load_config(tmp_path / config_path.name)
    assert config.home is not None and config.keystore is not None
    Paths.resolve(config.home, config.keystore)  # the key store lies outside the home
    # the home is on this replica's own volume; the master key file on the Secret mount
    assert config.home.is_relative_to(mount_of(GATE_MAIN, "local"))
    assert str(config.keystore) == mount_of(GATE_MAIN, "master-key")
    key_file = Path(GATE_ENV["SANDBOX_MASTER_KEY_FILE"])
    volume = next(v for v in GATE["spec"]["volumes"] if v["name"] == "master-key")
    assert key_file == config.keystore / volume["secret"]["items"][0]["path"]
    # a stopping replica finishes its queries; the pod has room for the engine
    assert GATE["spec"]["terminationGracePeriodSeconds"] > config.limit("query_timeout_s")
    engine_gb = float(config.limit("memory_limit").removesuffix("GB"))
    limit_gi = float(GATE_MAIN["resources"]["limits"]["memory"].removesuffix("Gi"))
    assert limit_gi * 2**30 > engine_gb * 1e9


def test_copy_home_copies_the_vault_but_never_a_state_database(tmp_path: Path) -> None:
    init = GATE["spec"]["initContainers"][0]
    script = Path(mount_of(init, "config")) / "copy-home.sh"
    assert init["command"] == ["sh", str(script), mount_of(init, "shared-home"),
                               str(load_home(tmp_path))]
    src, dst = tmp_path / "shared", tmp_path / "local" / "home"
    (src / "vault" / "persons").mkdir(parents=True)
    (src / "vault" / "persons" / "v1.enc").write_bytes(b"\x00" * 100)
    (src / "vault" / "persons" / "v1.enc").chmod(0o600)
    (src / "catalog.sqlite").write_bytes(b"catalog")
    (src / ".exports").mkdir()
    (src / ".exports" / "index-key").write_text("wrapped")
    for name in ("state.sqlite", "state.sqlite-wal", "state.sqlite-shm"):
        (src / name).write_bytes(b"state")
    (src / "lost+found").mkdir(mode=0o000)
    script_file = tmp_path / script.name
    script_file.write_text(SERVICE_CM["data"][script.name])
    run = subprocess.run(["sh", str(script_file), str(src), str(dst)], capture_output=True,
                         text=True, timeout=30)
    (src / "lost+found").chmod(0o700)
    assert run.returncode == 0, run.stderr
    copied = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert copied == [".exports/index-key", "catalog.sqlite", "vault/persons/v1.enc"]
    assert stat.S_IMODE(dst.stat().st_mode) == 0o700
    assert stat.S_IMODE((dst / "vault" / "persons" / "v1.enc").stat().st_mode) == 0o600
    assert "copied 3 files" in run.stdout


def load_home(tmp_path: Path) -> Path:
    (tmp_path / "service.yaml").write_text(SERVICE_CM["data"]["service.yaml"])
    home = load_config(tmp_path / "service.yaml").home
    assert home is not None
    return home


def test_the_gate_is_replicated_and_spread() -> None:
    dep = find("Deployment", "sandbox-service")["spec"]
    assert dep["replicas"] >= 2
    assert dep["strategy"]["type"] == "RollingUpdate"
    assert dep["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = find("PodDisruptionBudget", "sandbox-service")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= GATE["metadata"]["labels"].items()
    assert 0 < pdb["maxUnavailable"] < dep["replicas"]
    [spread] = GATE["spec"]["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"] == dep["selector"]["matchLabels"]
    # the state is shared: every replica gets the same PostgreSQL URL and cookie secret
    assert GATE_ENV["SANDBOX_STATE"] == {"secretKeyRef": {"name": "sandbox-state", "key": "url"}}
    assert GATE_ENV["SANDBOX_COOKIE_SECRET"] == {
        "secretKeyRef": {"name": "sandbox-cookie", "key": "secret"}}
    # the shared volume is read-only for the replicas
    volumes = {v["name"]: v for v in GATE["spec"]["volumes"]}
    assert volumes["shared-home"]["persistentVolumeClaim"]["readOnly"] is True
    assert all(m.get("readOnly") for c in containers(GATE) for m in c["volumeMounts"]
               if m["name"] in ("shared-home", "master-key", "config"))


def test_every_pod_uses_the_shared_state(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica on a state database of its own would let each replica spend a member's
    whole budget: the URL comes from the Secret (required, not optional) and nothing in the
    config map overrides it."""
    names = {s.env for s in SETTINGS}
    for pod_name, pod in pods():
        for c in containers(pod):
            for var in env_of(c):
                assert not var.startswith("SANDBOX_") or var in names, (pod_name, var)
        main = pod["spec"]["containers"][0]
        ref = env_of(main)["SANDBOX_STATE"]["secretKeyRef"]
        assert ref == {"name": "sandbox-state", "key": "url"}, pod_name
    url = "postgresql://sandbox@db:5432/sandbox"
    monkeypatch.setenv("SANDBOX_STATE", url)
    (tmp_path / "service.yaml").write_text(SERVICE_CM["data"]["service.yaml"])
    config = load_config(tmp_path / "service.yaml")
    assert config.state is None
    assert Paths.resolve(config.home, config.keystore, config.state).state_db == url


def test_probes_hit_the_health_route() -> None:
    prefix = GATE_ENV["JUPYTERHUB_SERVICE_PREFIX"]
    [pattern] = [p for p, _, handler in ROUTES if handler is HealthHandler]
    port = {p["name"]: p["containerPort"] for p in GATE_MAIN["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = GATE_MAIN[probe]["httpGet"]
        assert re.fullmatch(re.escape(prefix + "api/v1/") + pattern, get["path"]), probe
        assert get["port"] in port
    # the server listens where the probes, the Service and the image say
    assert bind_address(GATE_ENV["JUPYTERHUB_SERVICE_URL"], None) == ("0.0.0.0", port["http"])
    [svc_port] = GATE_SVC["spec"]["ports"]
    assert port[svc_port["targetPort"]] == svc_port["port"] == port["http"]
    assert GATE_SVC["spec"]["selector"].items() <= GATE["metadata"]["labels"].items()


def referenced(pod: dict[str, Any]) -> set[tuple[str, str, str | None]]:
    """(kind, name, key) of every Secret, ConfigMap and claim the pod uses."""
    refs: set[tuple[str, str, str | None]] = set()
    for c in containers(pod):
        for e in c.get("env", []):
            for kind, ref in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                if ref in e.get("valueFrom", {}):
                    refs.add((kind, e["valueFrom"][ref]["name"], e["valueFrom"][ref]["key"]))
        mounted = {m["name"] for m in c.get("volumeMounts", [])}
        assert mounted <= {v["name"] for v in pod["spec"]["volumes"]}
    for v in pod["spec"]["volumes"]:
        if "secret" in v:
            for item in v["secret"].get("items", [{"key": None}]):
                refs.add(("Secret", v["secret"]["secretName"], item["key"]))
        if "configMap" in v:
            refs.add(("ConfigMap", v["configMap"]["name"], None))
        if "persistentVolumeClaim" in v:
            refs.add(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"], None))
    return refs


def operator_secrets_in_docs() -> dict[str, set[str]]:
    """The `kubectl create secret generic NAME --from-...=KEY...` commands of the docs."""
    made: dict[str, set[str]] = {}
    md = DEPLOYMENT_MD.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in md.splitlines():
        if "create secret generic" in line:
            words = shlex.split(line.split("#")[0])
            name = words[words.index("generic") + 1]
            made[name] = {w.split("=", 2)[1] for w in words if w.startswith("--from-")}
    return made


def test_every_reference_resolves() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in DOCS}
    documented = operator_secrets_in_docs()
    assert documented == OPERATOR_SECRETS, "docs/deployment.md: kubectl create secret"
    header = (K8S / "sandbox-service.yaml").read_text(encoding="utf-8").split("\napiVersion")[0]
    for name, keys in OPERATOR_SECRETS.items():
        assert all(re.search(rf"{name}\s+key {k}:", header) for k in keys), name
    assert "fullnameOverride" not in VALUES_DOC and "nameOverride" not in VALUES_DOC
    chart_keys = {f"hub.services.{s}.apiToken" for s in VALUES_DOC["hub"]["services"]}
    seen = set()
    for pod_name, pod in pods():
        for kind, name, key in referenced(pod):
            seen.add(name)
            if (kind, name) in docs:
                doc = docs[kind, name]
                assert key is None or key in doc.get("data", {}), (pod_name, name, key)
            elif kind == "Secret" and name in OPERATOR_SECRETS:
                assert key in OPERATOR_SECRETS[name], (pod_name, name, key)
            elif kind == "Secret" and name == CHART_HUB_SECRET:
                assert key in chart_keys, (pod_name, key)
            else:
                pytest.fail(f"{pod_name} uses {kind} {name}, which nothing makes")
    assert set(OPERATOR_SECRETS) <= seen
    # every config map key the pods name is there
    assert {"service.yaml", "copy-home.sh"} <= set(SERVICE_CM["data"])


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return bool(selector["matchLabels"]) and selector["matchLabels"].items() <= labels.items()


HUB = {"app": "jupyterhub", "component": "hub"}  # the chart's pod labels
PROXY = {"app": "jupyterhub", "component": "proxy"}
SINGLEUSER = {"app": "jupyterhub", "component": "singleuser-server"}
KUBE_DNS = {"k8s-app": "kube-dns"}


def peers(rules: list[dict[str, Any]], side: str) -> dict[tuple[str, ...], set[int]]:
    """Destination (pod labels as a key) -> ports, of ingress ('from') or egress ('to')."""
    out: dict[tuple[str, ...], set[int]] = {}
    for rule in rules:
        for peer in rule[side]:
            key = tuple(sorted(f"{k}={v}" for k, v in peer["podSelector"]["matchLabels"].items()))
            out.setdefault(key, set()).update(p["port"] for p in rule["ports"])
    return out


def labels_key(labels: dict[str, str]) -> tuple[str, ...]:
    return tuple(sorted(f"{k}={v}" for k, v in labels.items()))


def test_network_policies_match_the_pods_and_ports() -> None:
    gate = find("NetworkPolicy", "sandbox-service")["spec"]
    assert selects(gate["podSelector"], GATE["metadata"]["labels"])
    assert sorted(gate["policyTypes"]) == ["Egress", "Ingress"]
    port = GATE_MAIN["ports"][0]["containerPort"]
    # reachable only from the hub and its proxy, on the service's port
    assert peers(gate["ingress"], "from") == {labels_key(PROXY): {port}, labels_key(HUB): {port}}
    assert not any(selects(p["podSelector"], SINGLEUSER) for r in gate["ingress"]
                   for p in r["from"])
    # out: the hub API where JUPYTERHUB_API_URL points, PostgreSQL, DNS; nothing else
    api = urlparse(GATE_ENV["JUPYTERHUB_API_URL"])
    assert api.hostname == "hub"  # the chart's hub Service (port 8081 to the hub pod)
    expected = {labels_key(HUB): {api.port}, ("app.kubernetes.io/name=postgresql",): {5432},
                labels_key(KUBE_DNS): {53}}
    assert peers(gate["egress"], "to") == expected
    toolbox = find("NetworkPolicy", "sandbox-operator")["spec"]
    operator_pod = find("Deployment", "sandbox-operator")["spec"]["template"]
    assert selects(toolbox["podSelector"], operator_pod["metadata"]["labels"])
    assert toolbox["ingress"] == [] and "Ingress" in toolbox["policyTypes"]
    assert peers(toolbox["egress"], "to") == expected
    assert not selects(toolbox["podSelector"], GATE["metadata"]["labels"])


def test_pods_meet_the_restricted_pod_security_standard() -> None:
    for name, pod in pods():
        spec = pod["spec"]
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, name
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        assert not any("hostPath" in v for v in spec["volumes"]), name
        for c in containers(pod):
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert csc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert csc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert "limits" in c["resources"] and "requests" in c["resources"]


# -- values.yaml (Zero to JupyterHub) ------------------------------------------------------
def without_required(schema: Any) -> Any:
    """The chart checks the merge of its defaults and these values; alone, they lack the
    defaults, so only what they set is checked (names, types, no unknown keys)."""
    if isinstance(schema, dict):
        return {k: without_required(v) for k, v in schema.items() if k != "required"}
    if isinstance(schema, list):
        return [without_required(v) for v in schema]
    return schema


def test_values_match_the_chart_schema() -> None:
    schema = without_required(json.loads(CHART_SCHEMA.read_text(encoding="utf-8")))
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in
              validator.iter_errors(VALUES_DOC)]
    assert errors == []
    wrong = json.loads(json.dumps(VALUES_DOC))
    wrong["singleuser"]["networkPolicy"]["egressAllowRule"] = {}
    assert not validator.is_valid(wrong)


def test_the_hub_registers_the_service_at_its_service() -> None:
    [(name, service)] = VALUES_DOC["hub"]["services"].items()
    assert name == GATE_ENV["JUPYTERHUB_SERVICE_NAME"]
    assert GATE_ENV["JUPYTERHUB_SERVICE_PREFIX"] == f"/services/{name}/"
    url = urlparse(service["url"])
    meta = GATE_SVC["metadata"]
    assert url.hostname == f"{meta['name']}.{meta['namespace']}.svc.cluster.local"
    assert url.port == GATE_SVC["spec"]["ports"][0]["port"]
    assert "api_token" not in service  # made by the chart, read by the pods from its Secret
    assert service["oauth_client_id"] == GATE_ENV["JUPYTERHUB_CLIENT_ID"]
    assert service["oauth_redirect_uri"] == GATE_ENV["JUPYTERHUB_OAUTH_CALLBACK_URL"]


def demo_hub() -> dict[str, Any]:
    """The literal scopes and roles of deploy/jupyterhub_config.py, read from its source."""
    tree = ast.parse((ROOT / "deploy" / "jupyterhub_config.py").read_text(encoding="utf-8"))
    out: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
            target = ast.unparse(node.targets[0])
            if target in ("c.JupyterHub.custom_scopes", "c.Spawner.server_token_scopes"):
                out[target] = ast.literal_eval(node.value)
            elif target == "c.JupyterHub.load_roles":
                assert isinstance(node.value, ast.List)
                roles = {}
                for elt in node.value.elts:
                    assert isinstance(elt, ast.Dict)
                    role = {ast.literal_eval(k): v for k, v in zip(elt.keys, elt.values,
                                                                     strict=True) if k}
                    roles[ast.literal_eval(role["name"])] = ast.literal_eval(role["scopes"])
                out[target] = roles
        if isinstance(node, ast.Dict) and any(isinstance(k, ast.Constant) and
                                              k.value == "oauth_client_allowed_scopes"
                                              for k in node.keys):
            i = [getattr(k, "value", None) for k in node.keys].index(
                "oauth_client_allowed_scopes")
            out["oauth_client_allowed_scopes"] = ast.literal_eval(node.values[i])
    return out


def test_scopes_and_roles_are_those_of_the_demo_hub() -> None:
    demo = demo_hub()
    hub = VALUES_DOC["hub"]
    assert set(hub["config"]["JupyterHub"]["custom_scopes"]) == \
        set(demo["c.JupyterHub.custom_scopes"])
    assert hub["config"]["KubeSpawner"]["server_token_scopes"] == \
        demo["c.Spawner.server_token_scopes"]
    for name, role in hub["loadRoles"].items():
        assert sorted(role["scopes"]) == sorted(demo["c.JupyterHub.load_roles"][name]), name
    assert set(demo["c.JupyterHub.load_roles"]) - set(hub["loadRoles"]) == {"idle-culler"}
    [service] = hub["services"].values()
    assert service["oauth_client_allowed_scopes"] == demo["oauth_client_allowed_scopes"]


def test_notebook_egress_reaches_only_the_hub_the_proxy_and_dns() -> None:
    su = VALUES_DOC["singleuser"]
    policy = su["networkPolicy"]
    assert policy["enabled"] is True
    assert policy["egressAllowRules"] and not any(policy["egressAllowRules"].values())
    assert peers(policy["egress"], "to") == {labels_key(HUB): {8081},
                                             labels_key(PROXY): {8000},
                                             labels_key(KUBE_DNS): {53}}
    # kernels call the gate through the proxy's route to the service
    url = urlparse(su["extraEnv"]["SANDBOX_SERVICE_URL"])
    assert url.hostname == "proxy-public" and url.port is None  # the chart's Service, port 80
    assert url.path == GATE_ENV["JUPYTERHUB_SERVICE_PREFIX"]


# -- the images ----------------------------------------------------------------------------
IMAGES = {"service": DOCKER / "service.Dockerfile", "singleuser": DOCKER / "singleuser.Dockerfile"}
PYPROJECT = ROOT / "pyproject.toml"


def parsed(name: str) -> DockerfileParser:
    return DockerfileParser(path=str(IMAGES[name]), cache_content=False)


def final_stage(df: DockerfileParser) -> list[dict[str, Any]]:
    starts = [i for i, s in enumerate(df.structure) if s["instruction"] == "FROM"]
    return df.structure[starts[-1]:]


def instruction(df: DockerfileParser, name: str) -> str:
    [value] = [s["value"] for s in final_stage(df) if s["instruction"] == name]
    return str(value)


def documented_tag(path: Path) -> str:
    [tag] = re.findall(rf"docker build -f {re.escape(str(path.relative_to(ROOT)))} -t (\S+) \.",
                       path.read_text(encoding="utf-8"))
    return str(tag)


def project_version() -> str:
    [version] = re.findall(r'^version = "([^"]+)"', PYPROJECT.read_text(), re.M)
    return str(version)


def test_the_images_are_tagged_as_the_manifests_use_them() -> None:
    service_tag = documented_tag(IMAGES["service"])
    for _, pod in pods():
        assert {c["image"] for c in containers(pod)} == {service_tag}
    su = VALUES_DOC["singleuser"]["image"]
    assert documented_tag(IMAGES["singleuser"]) == f"{su['name']}:{su['tag']}"
    for name in IMAGES:
        df = parsed(name)
        assert documented_tag(IMAGES[name]).endswith(":" + project_version())
        assert df.labels["org.opencontainers.image.version"] == project_version()


@pytest.mark.parametrize("name", IMAGES)
def test_dockerfile_sources_users_and_base(name: str) -> None:
    df = parsed(name)
    assert df.parent_images and set(df.parent_images) == {BASE_IMAGE}
    for s in df.structure:
        if s["instruction"] in ("COPY", "ADD"):
            words = shlex.split(s["value"])
            if any(w.startswith("--from=") for w in words):
                continue
            assert s["instruction"] == "COPY", "ADD fetches URLs and unpacks: use COPY"
            for src in [w for w in words if not w.startswith("--")][:-1]:
                assert (ROOT / src).exists(), f"{name}: COPY {src} does not exist"
                assert not excluded(src.rstrip("/")), f"{name}: COPY {src} is in .dockerignore"
    user, _, group = instruction(df, "USER").partition(":")
    assert user.isdigit() and int(user) != 0
    if name == "service":
        for _, pod in pods():
            sc = pod["spec"]["securityContext"]
            assert (sc["runAsUser"], sc["runAsGroup"]) == (int(user), int(group))
        assert instruction(df, "EXPOSE") == str(GATE_MAIN["ports"][0]["containerPort"])
        entry = json.loads(instruction(df, "ENTRYPOINT"))
        assert entry[:2] == ["python", "-m"]
        assert importlib.util.find_spec(entry[2] + ".__main__") is not None
        assert json.loads(instruction(df, "CMD")) == GATE_MAIN["args"]
    else:
        su = VALUES_DOC["singleuser"]
        assert (int(user), int(group)) == (su["uid"], su["fsGid"])
        assert instruction(df, "EXPOSE") == "8888"  # KubeSpawner's default port
        [cmd] = json.loads(instruction(df, "CMD"))
        assert cmd == su["cmd"]
        scripts = importlib.metadata.distribution("jupyterhub").entry_points
        assert cmd in {e.name for e in scripts if e.group == "console_scripts"}
        hook = " ".join(su["lifecycleHooks"]["postStart"]["exec"]["command"])
        assert "/usr/local/share/sandbox/notebooks_template/" in hook  # pip's prefix there
        assert '"share/sandbox/notebooks_template"' in PYPROJECT.read_text()


@functools.cache
def ignore_patterns() -> tuple[tuple[bool, str, re.Pattern[str]], ...]:
    """(negated, pattern, regex) of each .dockerignore line, in order."""
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line.lstrip("!").strip("/")
        rx = re.escape(pat).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*") \
            .replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        out.append((negate, pat, re.compile(rx)))
    return tuple(out)


def excluded(rel: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    verdict = False
    for negate, _, rx in ignore_patterns():
        if any(rx.fullmatch(p) for p in prefixes):
            verdict = not negate
    return verdict


def context_files() -> list[str]:
    """The files `docker build` sends from the repository root (walked, not git's list: an
    untracked key store in the checkout must not get in either)."""
    def reincluded_below(rel: str) -> bool:
        return any(neg and (pat.startswith(rel + "/") or pat.startswith("**"))
                   for neg, pat, _ in ignore_patterns())

    out = []
    for top, dirs, files in os.walk(ROOT):
        rel_top = Path(top).relative_to(ROOT)
        dirs[:] = [d for d in dirs if not excluded(str(rel_top / d))
                   or reincluded_below(str(rel_top / d))]
        out += [str(rel_top / f) for f in files if not excluded(str(rel_top / f))]
    return sorted(out)


def test_the_build_context_holds_the_package_sources_only() -> None:
    files = context_files()
    assert {"pyproject.toml", "README.md", "sandbox/service/__main__.py", "sandbox/client.py",
            "notebooks_template/getting-started.ipynb"} <= set(files)
    for f in files:
        assert f.split("/")[0] in ("pyproject.toml", "README.md", "sandbox",
                                   "notebooks_template"), f
        assert not secret_like(f), f"{f} would go into the images"
        assert "__pycache__" not in f and not f.endswith(".pyc")
    for leak in (".venv/bin/python", "keystore/master-keys.json", "home/state.sqlite",
                 "tests/conftest.py", ".git/config", "sandbox/__pycache__/x.pyc"):
        assert excluded(leak), leak


def test_the_context_builds_the_wheel_the_images_install(tmp_path: Path) -> None:
    """`pip wheel --no-deps` on exactly the files the Dockerfiles COPY (the venv's setuptools,
    no build isolation: nothing is downloaded)."""
    context = tmp_path / "context"
    for f in context_files():
        (context / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, context / f)
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index",
                          "--no-build-isolation", "--check-build-dependencies", "-q",
                          "--wheel-dir", str(tmp_path / "wheels"), str(context)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    [wheel] = (tmp_path / "wheels").glob("*.whl")
    assert wheel.name == f"sandbox-{project_version()}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    data = f"sandbox-{project_version()}.data/data/share/sandbox/notebooks_template/"
    assert {"sandbox/service/__main__.py", "sandbox/client.py", "sandbox/templates/sandbox.css",
            data + "getting-started.ipynb"} <= names
    assert not any(secret_like(n) for n in names)
