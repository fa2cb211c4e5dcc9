#!/usr/bin/env bash
# Install what the single-machine hub needs (run as root; safe to re-run):
#   - configurable-http-proxy from the npm registry (Node 20+; installs nodejs/npm with apt
#     when missing),
#   - nftables (apt, when `nft` is missing) for the egress rules (deploy/egress.sh),
#   - a hub virtual environment built from the system Python (default
#     /opt/sandbox-hub/venv): the hub, the gate service and every developer's server and
#     kernel run from it, so it must be readable by all of their system users (a venv whose
#     interpreter lives under /root is not). The package is installed NOT editable, so
#     neither developers nor the service need read access to this checkout.
# Usage: bash deploy/install-hub.sh        (SANDBOX_HUB_VENV, SANDBOX_HUB_PYTHON override)
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022
HUB_VENV="${SANDBOX_HUB_VENV:-/opt/sandbox-hub/venv}"
HUB_PYTHON="${SANDBOX_HUB_PYTHON:-/usr/bin/python3}"

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v configurable-http-proxy >/dev/null 2>&1; then
    command -v npm >/dev/null 2>&1 || apt_install nodejs npm
    npm install -g --silent configurable-http-proxy >/dev/null
fi

command -v nft >/dev/null 2>&1 || apt_install nftables

if ! "$HUB_PYTHON" -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11)' \
        2>/dev/null; then
    apt_install python3 python3-venv
fi
if [ ! -x "$HUB_VENV/bin/python" ]; then
    mkdir -p "$(dirname "$HUB_VENV")"
    "$HUB_PYTHON" -m venv "$HUB_VENV"
    "$HUB_VENV/bin/python" -m pip install -q --upgrade pip
fi
"$HUB_VENV/bin/python" -m pip install -q ".[hub]"
# always the code of this checkout, even when the version number did not change
"$HUB_VENV/bin/python" -m pip install -q --no-deps --force-reinstall --no-cache-dir .
rm -rf build
chmod -R a+rX "$(dirname "$HUB_VENV")"
echo "hub environment: $HUB_VENV ($("$HUB_VENV/bin/jupyterhub" --version), proxy $(configurable-http-proxy --version))"
