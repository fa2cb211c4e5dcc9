#!/usr/bin/env bash
# Set up and run the demo on a fresh Debian machine with Python 3.11:
# a virtual environment, the package, a key store, synthetic city data encrypted
# into the vault, and a first differentially private query.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/setup-env.sh
source deploy/setup-env.sh

export SANDBOX_HOME="${SANDBOX_HOME:-$PWD/.demo/home}"
export SANDBOX_KEYSTORE="${SANDBOX_KEYSTORE:-$PWD/.demo/keystore}"
sandbox demo --size "${DEMO_SIZE:-small}"
echo
sandbox policy check policies/credit_underwriting.yaml
sandbox policy check policies/population_livelihood.yaml
echo
echo "$ sandbox query --policy policies/credit_underwriting.yaml --member demo \\"
echo "    \"SELECT district, count(*) AS people, avg(income) AS avg_income FROM persons GROUP BY district\""
sandbox query --policy policies/credit_underwriting.yaml --member demo \
    "SELECT district, count(*) AS people, avg(income) AS avg_income FROM persons GROUP BY district"
echo
echo "State: $SANDBOX_HOME (encrypted data, catalog); keys: $SANDBOX_KEYSTORE"
echo "Try: source .venv/bin/activate; export SANDBOX_HOME=$SANDBOX_HOME SANDBOX_KEYSTORE=$SANDBOX_KEYSTORE; sandbox --help"
