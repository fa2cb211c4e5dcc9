#!/usr/bin/env bash
# Install everything the tests need and run the whole suite (lint, then pytest).
# CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/setup-env.sh
source deploy/setup-env.sh test
ruff check sandbox tests bench
pytest -q "$@"
