"""The one HTTP client (sandbox.http): what it retries, and the hub client built on it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from sandbox import http
from sandbox.hubsync import HubClient, HubError


class Scripted(BaseHTTPRequestHandler):
    """Answers each request with the next (status, body) of ``script``; records requests."""

    script: ClassVar[list[tuple[int, bytes]]] = []
    seen: ClassVar[list[tuple[str, str, bytes, str | None]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        type(self).seen.append((self.command, self.path, body, self.headers.get("Authorization")))
        status, out = type(self).script.pop(0) if type(self).script else (200, b"{}")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def server() -> Iterator[str]:
    Scripted.script, Scripted.seen = [], []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


FAST = http.Retry(retries=2, backoff_s=0.001)


def test_502_and_503_are_retried_with_the_same_body(server: str) -> None:
    Scripted.script = [(502, b""), (503, b""), (200, b'{"ok": 1}')]
    r = http.send("POST", server + "/x", body=b'{"a": 1}', retry=FAST)
    assert r.ok and r.json() == {"ok": 1}
    assert [s[2] for s in Scripted.seen] == [b'{"a": 1}'] * 3


def test_other_errors_are_answered_at_once_and_the_last_retry_is_returned(server: str) -> None:
    Scripted.script = [(500, b'{"error": 1}')]
    r = http.send("GET", server + "/x", retry=FAST)
    assert (r.status, r.json(), len(Scripted.seen)) == (500, {"error": 1}, 1)
    Scripted.script = [(503, b"")] * 3
    assert http.send("GET", server + "/x", retry=FAST).status == 503
    assert len(Scripted.seen) == 4


def test_no_answer_is_unreachable() -> None:
    with pytest.raises(http.Unreachable) as info:
        http.send("GET", "http://127.0.0.1:9/", timeout=2, retry=FAST)
    assert info.value.kind and info.value.reason


def test_the_hub_client_sends_json_and_names_refusals(server: str) -> None:
    hub = HubClient(server + "/hub/api", "secret")
    Scripted.script = [(404, b'{"message": "no such group"}'), (201, b"{}"),
                       (200, b'{"users": ["alice"]}')]
    assert hub.ensure_group("ws") == set()
    hub.add_to_group("ws", ["bob"])
    method, path, body, auth = Scripted.seen[-1]
    assert (method, path, json.loads(body), auth) == (
        "POST", "/hub/api/groups/ws/users", {"users": ["bob"]}, "token secret")
    Scripted.script = [(403, b'{"message": "missing scope"}')]
    with pytest.raises(HubError, match="refused GET /user: HTTP 403 missing scope"):
        hub.whoami()
    hub.attempts = 1
    Scripted.script = [(502, b"")]
    with pytest.raises(HubError, match="failed GET /user: HTTP 502"):
        hub.whoami()
