"""Schemathesis hooks for tests/test_service_load.py: aim generated requests at the one
workspace the caller belongs to (random names only ever meet workspace.not_found)."""

from __future__ import annotations

import os
from typing import Any

import schemathesis


@schemathesis.hook
def map_path_parameters(ctx: Any, path_parameters: dict[str, Any] | None) -> Any:
    if path_parameters and "workspace" in path_parameters:
        path_parameters["workspace"] = os.environ["SANDBOX_TEST_WORKSPACE"]
    return path_parameters
