#!/usr/bin/env bash
# Enforcement benchmarks on 1,000,000 blocks (900,000 ip, 100,000 cidr,
# IPv4 and IPv6): server start-up time and memory, and HTTP checks under
# wrk (2 threads, 64 connections) against /healthz of the same server in
# the same run. Writes the table into BENCHMARKS.md between the
# enforcement markers. Needs wrk (Debian package `wrk`) and python3.
#
#   bash bench/enforcement.sh [BLOCKS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BLOCKS=${1:-1000000}
PORT=${BENCH_PORT:-18181}
DURATION=${BENCH_SECONDS:-10}
BASE=http://127.0.0.1:$PORT

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet
BIN=$ROOT/target/release/valhalla

WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
    if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

export VALHALLA_DATABASE_URL="sqlite://$WORK/valhalla.db"
export VALHALLA_LISTEN="127.0.0.1:$PORT"
export VALHALLA_LOG=warn
ADMIN=vh_bench_$(python3 -c 'import secrets; print(secrets.token_hex(16))')
export VALHALLA_ADMIN_TOKEN=$ADMIN

"$BIN" migrate >/dev/null 2>&1
echo "writing $BLOCKS blocks ..."
python3 bench/blocklist_rows.py "$WORK/valhalla.db" "$BLOCKS" "$WORK/probes.txt"
awk 'NR % 3 == 0' "$WORK/probes.txt" >"$WORK/misses.txt"
awk 'NR % 3 != 0' "$WORK/probes.txt" >"$WORK/hits.txt"

# Start-up: from exec to the first ready answer, index loaded.
started=$(date +%s%N)
"$BIN" serve >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 1000); do
    curl -sf "$BASE/readyz" >/dev/null && break
    sleep 0.01
done
ready=$(date +%s%N)
startup_ms=$(((ready - started) / 1000000))
rss_after_start=$(awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status")

token=$(curl -sf -X POST -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d '{"name":"bench-proxy","role":"bouncer"}' "$BASE/security/tokens" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
# The benchmark measures the check, not the rate limiter's refusals.
curl -sf -X POST -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d '{"rate_limits":{"normal":{"requests_per_minute":100000000,"burst":1000000},
         "elevated":{"requests_per_minute":1200,"burst":120},
         "lockdown":{"requests_per_minute":120,"burst":20}}}' \
    "$BASE/security/policy/" >/dev/null

cat >"$WORK/probes.lua" <<'LUA'
local probes = {}
for line in io.lines(os.getenv("PROBES")) do probes[#probes + 1] = line end
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/security/policy/blocks/check?ip=" .. probes[(n % #probes) + 1])
end
LUA

# shellcheck source=bench/wrk_load.sh
source bench/wrk_load.sh

PROBES=$WORK/hits.txt load -s "$WORK/probes.lua" -H "Authorization: Bearer $token" "$BASE" \
    >/dev/null # warm-up: the first pass reads each matched block once
read -r health_rps health_p50 health_p99 < <(load "$BASE/healthz")
read -r miss_rps miss_p50 miss_p99 < <(PROBES=$WORK/misses.txt load -s "$WORK/probes.lua" \
    -H "Authorization: Bearer $token" "$BASE")
read -r mixed_rps mixed_p50 mixed_p99 < <(PROBES=$WORK/probes.txt load -s "$WORK/probes.lua" \
    -H "Authorization: Bearer $token" "$BASE")
read -r health2_rps _ _ < <(load "$BASE/healthz")
peak_rss=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status")

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
baseline=$(((health_rps + health2_rps) / 2))
table=$(
    cat <<TABLE
| measure | result | baseline (same run) | ratio | target |
|---|---|---|---|---|
| start-up with $BLOCKS blocks (exec → ready, index loaded) | $((startup_ms)) ms | | | ≤ 3 s |
| memory after start-up (RSS) | $((rss_after_start / 1024)) MiB | | | ≤ 300 MB |
| memory at the end of the run (peak RSS) | $((peak_rss / 1024)) MiB | | | ≤ 300 MB |
| \`GET /healthz\` (no auth, trivial), 2 threads × 64 connections | $baseline req/s (p50 $health_p50, p99 $health_p99) | | | |
| check, addresses not blocked | $miss_rps req/s (p50 $miss_p50, p99 $miss_p99) | $baseline req/s | $(ratio "$miss_rps" "$baseline") | ≥ 0.60 |
| check, ⅓ blocked addresses, ⅓ inside blocked networks, ⅓ random | $mixed_rps req/s (p50 $mixed_p50, p99 $mixed_p99) | $baseline req/s | $(ratio "$mixed_rps" "$baseline") | ≥ 0.60 |
TABLE
)
printf '%s\n' "$table" | python3 bench/write_section.py enforcement bench/enforcement.sh
echo "$table"
