"""The gate as an HTTP JSON service that JupyterHub runs as a managed service.

    python -m sandbox.service --config FILE [--port N]

See docs/service.md for endpoints, authentication, configuration and error codes.
"""

from __future__ import annotations

from .app import SCOPE, Problem, Service, make_app
from .config import LIMITS, ServiceConfig, load_config

__all__ = ["LIMITS", "SCOPE", "Problem", "Service", "ServiceConfig", "load_config", "make_app"]
