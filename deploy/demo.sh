#!/usr/bin/env bash
# Set up and run the demo on a fresh Debian machine with Python 3.11 (and Node 20):
# a virtual environment, the package, a key store, synthetic city data encrypted into
# the vault, the example scenario policies, a first differentially private query, and
# then (as root) the demo JupyterHub on http://127.0.0.1:8000 with demo accounts.
# Safe to re-run; Ctrl-C stops the hub, its proxy, the services and every server.
#   DEMO_SIZE=tiny|small|large   size of the synthetic data (default small)
#   DEMO_HUB=0                   stop after the first query (no hub, no system users)
#   DEMO_EGRESS=0                run the hub without the egress rules (deploy/egress.sh)
# While the hub runs, the developers' processes reach only the proxy and the gate
# (nftables rules applied at start, removed at stop; docs/deployment.md).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/setup-env.sh
source deploy/setup-env.sh

HUB=1
if [ "${DEMO_HUB:-1}" = 0 ]; then HUB=0; fi
if [ "$HUB" = 1 ] && [ "$(id -u)" != 0 ]; then
    echo "note: not root, so only the command-line demo runs (the hub needs root to create" \
         "system users and run servers as them)" >&2
    HUB=0
fi

DEMO_DIR="${SANDBOX_DEMO_DIR:-/var/lib/sandbox-demo}"   # the gate service's state (0700)
HUB_DIR="${SANDBOX_HUB_STATE_DIR:-/var/lib/sandbox-hub}" # hub database, secrets (root, 0700)
if [ "$HUB" = 1 ]; then
    export SANDBOX_HOME="$DEMO_DIR/home" SANDBOX_KEYSTORE="$DEMO_DIR/keystore"
    mkdir -p "$DEMO_DIR"
    chmod 700 "$DEMO_DIR"
else
    export SANDBOX_HOME="${SANDBOX_HOME:-$PWD/.demo/home}"
    export SANDBOX_KEYSTORE="${SANDBOX_KEYSTORE:-$PWD/.demo/keystore}"
fi

sandbox demo --size "${DEMO_SIZE:-small}"
echo
sandbox policy check policies/credit_underwriting.yaml
sandbox policy check policies/population_livelihood.yaml
echo
echo "$ sandbox query --policy policies/credit_underwriting.yaml --member demo --workspace adhoc:cli-demo \\"
echo "    \"SELECT district, count(*) AS people, avg(income) AS avg_income FROM persons GROUP BY district\""
sandbox query --policy policies/credit_underwriting.yaml --member demo --workspace adhoc:cli-demo \
    "SELECT district, count(*) AS people, avg(income) AS avg_income FROM persons GROUP BY district"
echo
echo "State: $SANDBOX_HOME (encrypted data, catalog); keys: $SANDBOX_KEYSTORE"
if [ "$HUB" = 0 ]; then
    echo "Try: source .venv/bin/activate; export SANDBOX_HOME=$SANDBOX_HOME SANDBOX_KEYSTORE=$SANDBOX_KEYSTORE; sandbox --help"
    exit 0
fi

# ---- the demo hub ---------------------------------------------------------------------
echo
echo "Setting up the demo hub (configurable-http-proxy, hub environment, demo accounts)..."
bash deploy/install-hub.sh
HUB_VENV="${SANDBOX_HUB_VENV:-/opt/sandbox-hub/venv}"

DEVELOPERS="alice,bob"
AUDITORS="audrey"
OPERATORS="oscar"
mkdir -p "$HUB_DIR"
chmod 700 "$HUB_DIR"
PASSWORDS="$HUB_DIR/demo-passwords"   # kept so a re-run prints the same passwords
touch "$PASSWORDS"
chmod 600 "$PASSWORDS"

id -u sandbox >/dev/null 2>&1 ||
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin sandbox
for u in ${DEVELOPERS//,/ } $AUDITORS $OPERATORS; do
    if ! id -u "$u" >/dev/null 2>&1; then
        useradd --create-home --shell /bin/bash "$u"
    fi
    chmod 700 "$(getent passwd "$u" | cut -d: -f6)"
    if ! grep -q "^$u:" "$PASSWORDS"; then
        pw="$(head -c 12 /dev/urandom | base64 | tr -d '+/=' | head -c 14)"
        echo "$u:$pw" >> "$PASSWORDS"
    fi
    grep "^$u:" "$PASSWORDS" | chpasswd
done

# The gate service's state: its configuration, data and keys, all owned by the `sandbox`
# user and unreadable by anyone else. Workspaces are records the operator makes below.
mkdir -p "$DEMO_DIR/policies"
cp policies/credit_underwriting.yaml policies/population_livelihood.yaml "$DEMO_DIR/policies/"
cat > "$DEMO_DIR/service.yaml" <<YAML
# The demo's gate service (python -m sandbox.service), started by the hub.
home: home
keystore: keystore
limits: {max_sql_chars: 20000, per_member_concurrency: 2, query_timeout_s: 30, memory_limit: 2GB}
YAML
chown -R sandbox:sandbox "$DEMO_DIR"
chmod 700 "$DEMO_DIR" "$SANDBOX_HOME" "$SANDBOX_KEYSTORE"

export SANDBOX_HUB_STATE_DIR="$HUB_DIR"
export SANDBOX_HUB_IP=127.0.0.1 SANDBOX_HUB_PORT="${SANDBOX_HUB_PORT:-8000}"
export SANDBOX_SERVICE_USER=sandbox SANDBOX_SERVICE_CONFIG="$DEMO_DIR/service.yaml"
export SANDBOX_HUB_AUDITORS="$AUDITORS" SANDBOX_HUB_OPERATORS="$OPERATORS"
export SANDBOX_HUB_SERVICE=on
unset SANDBOX_HOME SANDBOX_KEYSTORE   # the service reads them from its configuration

HUB_PID=""
EGRESS_SH="$PWD/deploy/egress.sh"
export SANDBOX_HUB_EGRESS=off
stop_hub() {   # safe to call twice
    if [ -n "$HUB_PID" ]; then
        kill -TERM "$HUB_PID" 2>/dev/null || true
        wait "$HUB_PID" 2>/dev/null || true
        HUB_PID=""
    fi
    if [ "$SANDBOX_HUB_EGRESS" = on ]; then
        bash "$EGRESS_SH" remove || true
        SANDBOX_HUB_EGRESS=off
    fi
}
trap 'stop_hub; exit 130' INT TERM
trap 'stop_hub' EXIT   # a failed step below must not leave the hub or the rules behind

# Egress: the developers (group sandbox-devs) may reach only the proxy and the gate; the
# hub also adds each developer it starts a server for (deploy/egress.sh add-developer).
if [ "${DEMO_EGRESS:-1}" != 0 ]; then
    export SANDBOX_EGRESS_GROUP=sandbox-devs
    getent group "$SANDBOX_EGRESS_GROUP" >/dev/null || groupadd --system "$SANDBOX_EGRESS_GROUP"
    for u in ${DEVELOPERS//,/ }; do usermod -aG "$SANDBOX_EGRESS_GROUP" "$u"; done
    SANDBOX_HUB_EGRESS=on   # before apply: a failed apply is still undone
    bash "$EGRESS_SH" apply
fi

cd "$HUB_DIR"
"$HUB_VENV/bin/jupyterhub" -f "$OLDPWD/deploy/jupyterhub_config.py" &
HUB_PID=$!
cd "$OLDPWD"
for _ in $(seq 1 120); do
    if "$HUB_VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "http://127.0.0.1:${SANDBOX_HUB_API_PORT:-8081}/hub/api/" 2>/dev/null; then break; fi
    kill -0 "$HUB_PID" 2>/dev/null || { echo "error: the hub did not start" >&2; exit 1; }
    sleep 0.5
done

# The operator (oscar) reviews the example scenarios once and provisions a workspace for
# each, as the service's user, with a hub token of their own (docs/workspaces.md).
OPERATOR_TOKEN="$(cd "$HUB_DIR" && "$HUB_VENV/bin/jupyterhub" token \
    -f "$OLDPWD/deploy/jupyterhub_config.py" "$OPERATORS" 2>/dev/null | tail -n 1)"
if ! [[ "$OPERATOR_TOKEN" =~ ^[0-9a-f]{32}$ ]]; then
    echo "error: could not make a hub token for the operator $OPERATORS" >&2
    exit 1
fi
operator() {
    runuser -u sandbox -- env JUPYTERHUB_API_TOKEN="$OPERATOR_TOKEN" \
        JUPYTERHUB_API_URL="http://127.0.0.1:${SANDBOX_HUB_API_PORT:-8081}/hub/api" \
        "$HUB_VENV/bin/sandbox" --home "$DEMO_DIR/home" --keystore "$DEMO_DIR/keystore" "$@"
}
EXPIRES="$(date -u -d '+1 year' +%F)"
# the core columns (数据分类分级) each policy exposes, accepted by name in its review
declare -A CORE=(
    [credit_underwriting]="--accept-core persons.income --accept-core persons.credit_score --accept-core loans.amount"
    [population_livelihood]="--accept-core persons.income"
)
for scenario in credit_underwriting population_livelihood; do
    ws="${scenario//_/-}"
    # shellcheck disable=SC2086  # the options are meant to split
    operator scenario review "$DEMO_DIR/policies/$scenario.yaml" \
        --reviewer "demo data review board" --reference "DEMO-$scenario" ${CORE[$scenario]}
    if operator workspace show "$ws" >/dev/null 2>&1; then
        operator workspace sync "$ws"
    else
        operator workspace create "$ws" --scenario "$ws" --members "$DEVELOPERS" \
            --budget-epsilon 10 --expires "$EXPIRES"
    fi
done

echo
echo "=================================================================="
echo " Demo hub: http://127.0.0.1:$SANDBOX_HUB_PORT/   (Ctrl-C stops everything)"
echo " Accounts (user: password):"
while IFS=: read -r u pw; do
    case ",$DEVELOPERS," in *",$u,"*) role=developer ;; *)
        if [ "$u" = "$AUDITORS" ]; then role=auditor; else role=operator; fi ;; esac
    printf '   %-8s %-16s (%s)\n' "$u" "$pw" "$role"
done < "$PASSWORDS"
echo " Developers start with getting-started.ipynb and one walk-through per workspace."
if [ "$SANDBOX_HUB_EGRESS" = on ]; then
    echo " Egress: developers reach only the proxy and the gate (bash deploy/egress.sh status)"
fi
echo " Operator CLI (as root): runuser -u sandbox -- $HUB_VENV/bin/sandbox --home $DEMO_DIR/home --keystore $DEMO_DIR/keystore workspace list"
echo "=================================================================="
wait "$HUB_PID"
