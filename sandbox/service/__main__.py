"""``python -m sandbox.service --config FILE [--port N]``: run the service.

Binds to the host and port of ``$JUPYTERHUB_SERVICE_URL`` (default
http://127.0.0.1:10101) and serves under ``$JUPYTERHUB_SERVICE_PREFIX`` (default
/services/sandbox/). Tokens are checked with the hub at ``$JUPYTERHUB_API_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from urllib.parse import urlparse

from ..errors import SandboxError, print_error

DEFAULT_URL = "http://127.0.0.1:10101"
DEFAULT_PREFIX = "/services/sandbox/"
log = logging.getLogger("sandbox.service")


def bind_address(url: str, port: int | None) -> tuple[str, int]:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "") or not parsed.hostname:
        raise SandboxError(f"JUPYTERHUB_SERVICE_URL must be an http URL, not {url!r}",
                           "e.g. http://127.0.0.1:10101")
    return parsed.hostname, port or parsed.port or 80


async def serve(config_path: Path, port: int | None) -> None:
    from jupyterhub.services.auth import HubAuth
    from tornado.httpserver import HTTPServer

    from .config import load_config
    from .core import Service
    from .handlers import make_app

    config = load_config(config_path)
    host, port = bind_address(os.environ.get("JUPYTERHUB_SERVICE_URL") or DEFAULT_URL, port)
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or DEFAULT_PREFIX
    if not prefix.startswith("/"):
        prefix = "/" + prefix
    if not os.environ.get("JUPYTERHUB_API_TOKEN"):
        log.warning("JUPYTERHUB_API_TOKEN is not set: is the service started by the hub?")
    service = Service.start(config)
    hub_auth = HubAuth(cache_max_age=config.limits["auth_cache_s"])
    app = make_app(service, prefix, hub_auth)
    limits = config.limits
    # Every handler that takes a body raises this cap itself, after checking the token
    # (export submissions to max_export_bytes); the console's forms stay under it. Forwarding
    # headers are not trusted: the access log shows the peer and, apart, what it claimed.
    server = HTTPServer(app, max_body_size=limits["max_body_bytes"],
                        idle_connection_timeout=limits["header_timeout_s"],
                        body_timeout=limits["body_timeout_s"], max_header_size=64 << 10,
                        xheaders=False)
    server.listen(port, address=host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("sandbox service %s listening on http://%s:%d%sapi/v1/ (%d tables loaded)",
             "ready", host, port, prefix if prefix.endswith("/") else prefix + "/",
             len(service.engine.tables))
    try:
        await stop.wait()
    finally:
        server.stop()
        # Idle keep-alive connections (the hub's) would hold the shutdown for their timeout.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.close_all_connections(), timeout=2)
        service.close()
        log.info("sandbox service stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.service",
                                     description="The sandbox gate as a JupyterHub service.")
    parser.add_argument("--config", required=True, type=Path, help="service configuration YAML")
    parser.add_argument("--port", type=int, default=None,
                        help="port (default: from $JUPYTERHUB_SERVICE_URL, else 10101)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("SANDBOX_LOG_LEVEL", "INFO"),
                        format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s")
    try:
        asyncio.run(serve(args.config, args.port))
    except SandboxError as exc:
        print_error(exc)
        return 2
    except OSError as exc:
        print(f"error: cannot start the service: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
