#!/usr/bin/env bash
# Installs the real honeypots for the end-to-end test, pinned, from PyPI:
# Cowrie (with paramiko, the attacker's SSH client) and OpenCanary, each in
# a venv of its own, since their pins conflict (bcrypt 5.0.0 against 3.2.0).
#
#   tests/e2e/install-honeypots.sh [DIR]     (default: target/e2e-venv)
#
# A venv whose requirements file has not changed is kept, so a second run
# costs nothing.
#
# The venvs are built on Debian's interpreter (/usr/bin/python3; override
# with E2E_PYTHON): when the test runs as root it starts the honeypots as
# `nobody` (Cowrie refuses to run as root), and that user must be able to
# run the interpreter, which a pyenv one under /root (mode 700) is not.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEST=$(realpath -m "${1:-$HERE/../../target/e2e-venv}")
PYTHON=${E2E_PYTHON:-/usr/bin/python3}

if ! "$PYTHON" -c 'import sys, venv; sys.exit(sys.version_info < (3, 10))'; then
    echo "$PYTHON is missing, older than 3.10 or lacks venv (Debian: python3-venv)" >&2
    exit 1
fi

install_venv() {
    local name=$1 requirements=$2
    local venv=$DEST/$name
    if cmp -s "$requirements" "$venv/requirements.txt"; then
        echo "$name: already installed in $venv"
        return
    fi
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
        -r "$requirements"
    # Twisted caches its plugin index beside the plugins; write it now, as
    # the unprivileged honeypot cannot. In a scratch folder: loading Cowrie's
    # plugin writes var/lib/cowrie/uuid under the current one.
    scratch=$(mktemp -d)
    (cd "$scratch" && "$venv/bin/python" -c \
        'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))')
    rm -rf "$scratch"
    cp "$requirements" "$venv/requirements.txt"
    echo "$name: installed in $venv"
}

# Both at once: most of the time is spent waiting on downloads and builds.
mkdir -p "$DEST"
install_venv cowrie "$HERE/requirements-cowrie.txt" &
cowrie_job=$!
install_venv opencanary "$HERE/requirements-opencanary.txt" &
opencanary_job=$!
status=0
wait "$cowrie_job" || status=1
wait "$opencanary_job" || status=1
exit "$status"
