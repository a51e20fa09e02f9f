#!/usr/bin/env bash
# Real CrowdSec clients against a built `valhalla` (default:
# target/debug/valhalla): pycrowdsec (PyPI, in a venv) and Debian's
# crowdsec-custom-bouncer in this network namespace, then Debian's
# crowdsec-firewall-bouncer in nftables mode inside a network namespace
# that this script makes (Valhalla runs in it too, on its own loopback).
#
#   tests/crowdsec/run.sh [VALHALLA_BINARY]
#
# The Debian packages must be installed (.ci/run does); the venv goes to
# target/ci/pycrowdsec-VERSION, or to VALHALLA_PYCROWDSEC_VENV when set.
# Prints `N passed, M failed` and exits non-zero on any failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VALHALLA=${1:-$ROOT/target/debug/valhalla}
PYCROWDSEC_VERSION=0.0.5
VENV=${VALHALLA_PYCROWDSEC_VENV:-$ROOT/target/ci/pycrowdsec-$PYCROWDSEC_VERSION}
NAMESPACE="valhalla-crowdsec-$$"
RESULTS=$(mktemp -d)

cleanup() {
    if ip netns list 2>/dev/null | grep -qw "$NAMESPACE"; then
        ip netns delete "$NAMESPACE" || true
    fi
    rm -rf "$RESULTS"
}
trap cleanup EXIT

if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import pycrowdsec' 2>/dev/null; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "pycrowdsec==$PYCROWDSEC_VERSION"
fi
for tool in crowdsec-custom-bouncer crowdsec-firewall-bouncer nft ip; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done

status=0
"$VENV/bin/python" "$ROOT/tests/crowdsec/bouncers_e2e.py" --valhalla "$VALHALLA" \
    --part clients --results "$RESULTS/clients" || status=1

if ip netns add "$NAMESPACE"; then
    ip netns exec "$NAMESPACE" ip link set lo up
    ip netns exec "$NAMESPACE" "$VENV/bin/python" "$ROOT/tests/crowdsec/bouncers_e2e.py" \
        --valhalla "$VALHALLA" --part firewall --results "$RESULTS/firewall" || status=1
else
    echo "cannot make a network namespace: the firewall bouncer was not run" >&2
    echo "0 1" >"$RESULTS/firewall"
    status=1
fi

passed=0
failed=0
for part in clients firewall; do
    if [[ -s $RESULTS/$part ]]; then
        read -r part_passed part_failed <"$RESULTS/$part"
    else
        part_passed=0
        part_failed=1
    fi
    passed=$((passed + part_passed))
    failed=$((failed + part_failed))
done
echo "crowdsec clients: $passed passed, $failed failed"
[[ $failed -eq 0 && $status -eq 0 ]]
