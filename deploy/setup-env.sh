# Sourced by deploy/demo.sh and deploy/test.sh: create .venv and install the package.
# Usage: source deploy/setup-env.sh [extras]   (e.g. "test")
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        # Debian ships venv separately.
        if [ "$(id -u)" = 0 ]; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        else
            sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv >/dev/null
        fi
        rm -rf .venv
        "$PYTHON" -m venv .venv
    fi
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ -n "${1:-}" ]; then
    .venv/bin/python -m pip install -q -e ".[$1]"
else
    .venv/bin/python -m pip install -q -e .
fi
export PATH="$PWD/.venv/bin:$PATH"
