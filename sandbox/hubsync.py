"""Mirror workspace records into JupyterHub (users, one group per workspace, servers).

The operator's own hub token is used: the hub checks that it may change users, groups and
servers, and ``operator()`` checks it carries ``custom:sandbox:admin`` and names the actor
for the audit log. Every step is idempotent, so a failed mirroring is simply run again
(``sandbox workspace sync``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from . import http
from .errors import SandboxError
from .workspaces import WorkspaceRecord, Workspaces

ADMIN_SCOPE = "custom:sandbox:admin"
REVIEW_SCOPE = "custom:sandbox:review"
DEFAULT_HUB_API = "http://127.0.0.1:8081/hub/api"


class HubError(SandboxError):
    code = "hub.error"


class OperatorRequiredError(SandboxError):
    code = "auth.operator_required"


@dataclass
class HubClient:
    url: str  # .../hub/api
    token: str
    timeout: float = 15.0
    attempts: int = 3

    @classmethod
    def from_env(cls, url: str | None = None, token_file: Path | None = None) -> HubClient:
        url = (url or os.environ.get("JUPYTERHUB_API_URL") or DEFAULT_HUB_API).rstrip("/")
        if token_file is not None:
            try:
                token = token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise HubError(f"cannot read the hub token file {token_file} "
                               f"({exc.strerror})", "check the path") from None
        else:
            token = os.environ.get("JUPYTERHUB_API_TOKEN", "").strip()
        if not token:
            raise OperatorRequiredError(
                "operator commands need your JupyterHub token",
                "create one at /hub/token as an operator and pass --hub-token-file FILE or "
                "set JUPYTERHUB_API_TOKEN")
        return cls(url, token)

    def call(self, method: str, path: str, ok: tuple[int, ...] = (200, 201, 202, 204),
             payload: Any = None) -> http.Response:
        """One API call (``payload`` sent as JSON), retried under the one retry policy of
        ``sandbox.http`` (connection failures, 502, 503); errors name the step."""
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Authorization": f"token {self.token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            r = http.send(method, self.url + path, headers=headers, body=body,
                          timeout=self.timeout, retry=http.Retry(self.attempts - 1, 0.5))
        except http.Unreachable as exc:
            raise HubError(f"the hub at {self.url} did not answer ({exc.kind})",
                           "check that the hub is running, then `sandbox workspace sync`"
                           ) from None
        if r.status in ok:
            return r
        if r.status < 500:
            raise HubError(f"the hub refused {method} {path}: HTTP {r.status} "
                           f"{_hub_message(r)}", "check that your token has the operator role")
        raise HubError(f"the hub failed {method} {path}: HTTP {r.status}",
                       "check that the hub is running, then `sandbox workspace sync`")

    # -- queries -----------------------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        return dict(self.call("GET", "/user").json())

    def user(self, name: str) -> dict[str, Any] | None:
        r = self.call("GET", f"/users/{quote(name)}", ok=(200, 404))
        return None if r.status == 404 else dict(r.json())

    def group_members(self, group: str) -> set[str] | None:
        r = self.call("GET", f"/groups/{quote(group)}", ok=(200, 404))
        return None if r.status == 404 else set(r.json().get("users") or [])

    # -- changes (idempotent) ------------------------------------------------------------
    def ensure_user(self, name: str) -> bool:
        if self.user(name) is not None:
            return False
        self.call("POST", f"/users/{quote(name)}", ok=(201, 409))
        return True

    def ensure_group(self, group: str) -> set[str]:
        members = self.group_members(group)
        if members is None:
            self.call("POST", f"/groups/{quote(group)}", ok=(201, 409))
            members = set()
        return members

    def add_to_group(self, group: str, users: list[str]) -> None:
        if users:
            self.call("POST", f"/groups/{quote(group)}/users", payload={"users": users})

    def remove_from_group(self, group: str, users: list[str]) -> None:
        if users:
            self.call("DELETE", f"/groups/{quote(group)}/users", payload={"users": users})

    def stop_server(self, user: str) -> bool:
        model = self.user(user)
        if not model or "" not in (model.get("servers") or {}):
            return False
        self.call("DELETE", f"/users/{quote(user)}/server", ok=(202, 204, 400))
        return True


def _hub_message(r: http.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return ""
    return str(body.get("message", ""))[:200] if isinstance(body, dict) else ""


def operator(hub: HubClient, scope: str = ADMIN_SCOPE) -> str:
    """The hub user name of the token's owner, once the token proves the role: the
    operator's (``custom:sandbox:admin``) or an auditor's (``custom:sandbox:review``)."""
    model = hub.whoami()
    scopes = set(model.get("scopes") or [])
    if scope not in scopes or model.get("kind", "user") != "user":
        role = "sandbox-operator" if scope == ADMIN_SCOPE else "sandbox-auditor"
        raise OperatorRequiredError(
            f"the hub token of {model.get('name', '?')!r} lacks the scope {scope}",
            f"use the token of a user with the {role} role")
    return str(model.get("name") or "")


def sync(store: Workspaces, hub: HubClient, name: str, actor: str,
         stop: tuple[str, ...] = ()) -> WorkspaceRecord:
    """Make the hub mirror the records of one workspace; record success or the failure.

    Members get hub users and the workspace group; people no longer members leave it. The
    servers of ``stop`` (every member, once the workspace is closed) are stopped unless
    they have another open workspace.
    """
    rec = store.get(name)
    created: list[str] = []
    stopped: list[str] = []
    try:
        current = hub.ensure_group(name)
        wanted = set(rec.members) if rec.state != "closed" else set()
        for member in sorted(wanted - current):
            if hub.ensure_user(member):
                created.append(member)
        hub.add_to_group(name, sorted(wanted - current))
        removed = sorted(current - wanted)
        hub.remove_from_group(name, removed)
        for member in sorted(set(rec.members) if rec.state == "closed" else set(stop)):
            if not store.open_workspaces_of(member, besides=name) and \
                    hub.stop_server(member):
                stopped.append(member)
    except HubError as exc:
        return store.hub_failed(name, actor, exc.message)
    return store.hub_synced(name, actor, {"users_created": created, "group_members":
                                          sorted(wanted), "servers_stopped": stopped})
