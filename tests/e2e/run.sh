#!/usr/bin/env bash
# Installs the real honeypots (when not already there) and runs the
# end-to-end test against a built `valhalla` (default: target/debug/valhalla).
#
#   tests/e2e/run.sh [VALHALLA_BINARY]
#
# The venvs go to target/e2e-venv, or to VALHALLA_E2E_VENV when set.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VALHALLA=${1:-$ROOT/target/debug/valhalla}
VENV=${VALHALLA_E2E_VENV:-$ROOT/target/e2e-venv}

# Under root the honeypots run as `nobody`, who must be able to reach the
# venvs; a checkout inside a folder closed to others (as `mktemp -d` makes
# them) gets its venvs in /var/tmp instead.
if [[ -z ${VALHALLA_E2E_VENV:-} && $EUID -eq 0 ]] &&
    ! setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups test -x "$ROOT"; then
    VENV=/var/tmp/valhalla-e2e-venv
    echo "user nobody cannot reach $ROOT; the honeypots' venvs go to $VENV"
fi

bash "$ROOT/tests/e2e/install-honeypots.sh" "$VENV"
"$VENV/cowrie/bin/python" "$ROOT/tests/e2e/honeypots_e2e.py" \
    --valhalla "$VALHALLA" \
    --cowrie-venv "$VENV/cowrie" \
    --opencanary-venv "$VENV/opencanary"
