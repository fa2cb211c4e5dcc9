"""The gate as an HTTP JSON service that JupyterHub runs as a managed service.

    python -m sandbox.service --config FILE [--port N]

See docs/service.md for endpoints, authentication, configuration and error codes.

    core.py      Service, Workspace, the timed executor (no HTTP; the composition root)
    errors.py    status of each code, the JSON error body
    bodies.py    request bodies: strict JSON, checked against the OpenAPI components
    handlers.py  tornado handlers, routes, authentication, limits
    openapi.py   the OpenAPI document;  config.py, limits.py;  console.py (auditors)

``make_app`` and ``SCOPE`` are imported on first use, so importing the core (or this
package) does not import tornado.
"""

from __future__ import annotations

from typing import Any

from .config import LIMITS, ServiceConfig, load_config
from .core import Service
from .errors import Problem

__all__ = ["LIMITS", "SCOPE", "Problem", "Service", "ServiceConfig", "load_config", "make_app"]


def __getattr__(name: str) -> Any:
    if name in ("SCOPE", "make_app"):
        from . import handlers

        return getattr(handlers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
