#!/usr/bin/env bash
# Single-event POSTs under wrk (2 threads, 64 connections), each answered
# only once its event is committed, beside GET /healthz of the same server
# in the same run, on SQLite and on PostgreSQL. wrk spends far less of the
# two cores than the Rust clients of benches/ingest.rs, so the server gets
# more of the machine. Writes the table into BENCHMARKS.md between the
# single_posts markers. Needs wrk (Debian package `wrk`), python3, psql.
#
#   bash bench/single_posts.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PORT=${BENCH_PORT:-18191}
DURATION=${BENCH_SECONDS:-10}
BASE=http://127.0.0.1:$PORT
POSTGRES=${VALHALLA_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet
BIN=$ROOT/target/release/valhalla

WORK=$(mktemp -d)
SERVER_PID=""
DATABASE=bench_single_$$
cleanup() {
    if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    psql "$POSTGRES" -qc "DROP DATABASE IF EXISTS $DATABASE WITH (FORCE)" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

export VALHALLA_LISTEN="127.0.0.1:$PORT"
export VALHALLA_LOG=warn
ADMIN=vh_bench_$(python3 -c 'import secrets; print(secrets.token_hex(16))')
export VALHALLA_ADMIN_TOKEN=$ADMIN

# Each request a new source among 62,500, so the engine judges many.
cat >"$WORK/post.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  local body = string.format(
    '{"event_type":"auth_attempt","source_ip":"198.51.%d.%d","username":"root",' ..
    '"password":"123456","destination_port":22}', math.floor(n / 250) % 250, n % 250 + 1)
  return wrk.format("POST", "/security/honeypot/events",
    {["Content-Type"] = "application/json", ["X-HONEYPOT-KEY"] = os.getenv("KEY")}, body)
end
LUA

# shellcheck source=bench/wrk_load.sh
source bench/wrk_load.sh

# Starts the server on $1, measures, stops it; prints one table row.
measure() {
    local backend=$1
    export VALHALLA_DATABASE_URL=$2
    "$BIN" serve >"$WORK/server-$backend.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 500); do
        curl -sf "$BASE/readyz" >/dev/null && break
        sleep 0.02
    done
    # The benchmark measures ingest, not the rate limiter's refusals.
    curl -sf -X POST -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
        -d '{"rate_limits":{"normal":{"requests_per_minute":100000000,"burst":1000000}}}' \
        "$BASE/security/policy/" >/dev/null
    KEY=$(curl -sf -X POST -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
        -d "{\"name\":\"bench-$backend\",\"honeypot_type\":\"ssh\"}" \
        "$BASE/security/honeypot/instances" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["api_key"])')
    export KEY

    local health_rps post_rps post_p50 post_p99
    read -r health_rps _ _ < <(load "$BASE/healthz")
    read -r post_rps post_p50 post_p99 < <(load -s "$WORK/post.lua" "$BASE")
    local peak_rss
    peak_rss=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status")
    kill "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""

    local ratio
    ratio=$(python3 -c "print(f'{$post_rps / $health_rps:.2f}')")
    echo "| $backend | $post_rps (p50 $post_p50, p99 $post_p99) | $health_rps | $ratio" \
        "| $((peak_rss / 1024)) MiB | ≥ 10,000 |"
}

rows=$(measure sqlite "sqlite://$WORK/valhalla.db")
psql "$POSTGRES" -qc "CREATE DATABASE $DATABASE"
rows+=$'\n'$(measure postgres "${POSTGRES%/*}/$DATABASE")

table=$(
    cat <<TABLE
| backend | single POSTs, committed (events/s) | \`GET /healthz\`, same server (req/s) | ratio | server peak RSS | target |
|---|---|---|---|---|---|
$rows
TABLE
)
printf '%s\n' "$table" | python3 bench/write_section.py single_posts bench/single_posts.sh
echo "$table"
