#!/usr/bin/env bash
# Install everything the tests need and run the whole suite (lint, then pytest).
# CI runs exactly this (.ci/run). Safe to re-run on a machine where all is installed.
# The slow tests start a real hub and create (and remove) system users: run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# System packages: Debian's chromium for the browser test (Playwright's own browser
# download does not work here), Node/npm for configurable-http-proxy, nftables and
# iproute2 for the egress test.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing+=(nftables)  # test_egress.py
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || missing+=(iproute2)  # its netns
# PostgreSQL's server programs: tests/pgkit.py runs initdb and a server in a temporary
# directory (the state database's second back end, tests/test_replicas.py)
command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null \
    || missing+=(postgresql)
if [ "${#missing[@]}" -gt 0 ]; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# configurable-http-proxy and the hub's own environment (/opt/sandbox-hub/venv)
as_root bash deploy/install-hub.sh

# shellcheck source=deploy/setup-env.sh
source deploy/setup-env.sh test
ruff check sandbox tests bench deploy
mypy  # strict on the core's sql, dp, ledger and audit (pyproject.toml [tool.mypy])
pytest -q "$@"
