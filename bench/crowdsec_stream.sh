#!/usr/bin/env bash
# Measures a CrowdSec bouncer's startup stream against 1,000,000 active
# blocks (900,000 `ip`, 100,000 `cidr`, IPv4 and IPv6 half and half), on
# SQLite, with a release build: the time to the last byte, the bytes sent,
# and the server's peak memory. The blocks are written straight into the
# database (through the schema the server migrated), since the API would
# take far longer to load them than the stream takes to send them.
#
#   bench/crowdsec_stream.sh [VALHALLA_BINARY]
#
# Loading takes minutes; set VALHALLA_BENCH_KEEP=FILE to keep the loaded
# database there, and VALHALLA_BENCH_DB=FILE to start from such a copy.
set -euo pipefail
cd "$(dirname "$0")/.."

VALHALLA=${1:-target/release/valhalla}
SCRATCH=$(mktemp -d)
SERVER_PID=""
cleanup() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID"
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$SCRATCH"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
ADMIN=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
BASE="http://127.0.0.1:$PORT"

start_server() {
    VALHALLA_LISTEN="127.0.0.1:$PORT" VALHALLA_DATABASE_URL="sqlite://$SCRATCH/valhalla.db" \
        VALHALLA_ADMIN_TOKEN="$ADMIN" VALHALLA_LOG=warn "$VALHALLA" serve \
        >>"$SCRATCH/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 300); do
        curl -fsS -o /dev/null "$BASE/readyz" 2>/dev/null && return 0
        sleep 0.1
    done
    cat "$SCRATCH/server.log" >&2
    return 1
}

stop_server() {
    kill "$SERVER_PID"
    wait "$SERVER_PID" || true
    SERVER_PID=""
}

if [[ -n ${VALHALLA_BENCH_DB:-} ]]; then
    cp "$VALHALLA_BENCH_DB" "$SCRATCH/valhalla.db"
else
    start_server
    stop_server
fi
# The token goes straight into the database: a kept copy has an admin token
# of an earlier run.
KEY=$("$VALHALLA" token create --name "bench-bouncer-$$" --role bouncer \
    --database-url "sqlite://$SCRATCH/valhalla.db" 2>/dev/null)

[[ -n ${VALHALLA_BENCH_DB:-} ]] || python3 - "$SCRATCH/valhalla.db" <<'PY'
import ipaddress, random, sqlite3, sys, time

random.seed(7)
database = sqlite3.connect(sys.argv[1])
now = int(time.time() * 1000)
started = time.monotonic()

def key(value):
    return format(value, "032x")

def rows():
    seen = set()
    for n in range(1_000_000):
        v6 = n % 2 == 1
        if n < 900_000:
            if v6:
                address = ipaddress.IPv6Address((0x20010db8 << 96) | random.getrandbits(64))
            else:
                address = ipaddress.IPv4Address(random.randrange(0x0B000000, 0xDF000000))
            network = ipaddress.ip_network(address)
            kind, value = "ip", str(address)
        else:
            prefix = 48 if v6 else 24
            base = (0x20010db8 << 96) | (random.getrandbits(16) << 80) if v6 else \
                random.randrange(0x0B000000, 0xDF000000)
            network = ipaddress.ip_network((base, prefix), strict=False)
            kind, value = "cidr", str(network)
        if (kind, value) in seen:
            continue
        seen.add((kind, value))
        expires = None if n % 4 else now + random.randrange(3_600_000, 86_400_000)
        yield (kind, value, network.version, key(int(network.network_address)),
               key(int(network.broadcast_address)), "bench scenario", "heimdall",
               "bench", now, expires, 1, 1)

database.executemany(
    "INSERT INTO blocks (entity_type, value, family, range_start, range_end, reason, source, "
    "created_by, created_at, expires_at, created_seq, changed_seq) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    rows(),
)
database.execute("UPDATE blocklist_sequence SET last_seq = 1")
database.commit()
count = database.execute("SELECT count(*) FROM blocks").fetchone()[0]
print(f"loaded {count} blocks in {time.monotonic() - started:.1f} s", file=sys.stderr)
PY
if [[ -n ${VALHALLA_BENCH_KEEP:-} ]]; then
    cp "$SCRATCH/valhalla.db" "$VALHALLA_BENCH_KEEP"
fi

start_server
for run in 1 2 3; do
    curl -sS -o "$SCRATCH/stream.json" -H "X-Api-Key: $KEY" \
        -w "startup stream run $run: %{http_code}, %{size_download} bytes, %{time_total} s\n" \
        "$BASE/v1/decisions/stream?startup=true"
done
python3 -c '
import json, sys
body = json.load(open(sys.argv[1]))
print("decisions in the last stream:", len(body["new"]), "deleted:", body["deleted"])
' "$SCRATCH/stream.json"
echo "server peak memory (VmHWM): $(grep VmHWM "/proc/$SERVER_PID/status" | awk '{print $2, $3}')"
echo "server memory now (VmRSS): $(grep VmRSS "/proc/$SERVER_PID/status" | awk '{print $2, $3}')"
curl -sS -o /dev/null -H "X-Api-Key: $KEY" \
    -w "incremental pull with nothing new: %{size_download} bytes, %{time_total} s\n" \
    "$BASE/v1/decisions/stream"
curl -sS -o /dev/null -H "X-Api-Key: $KEY" \
    -w "live query for one address: %{size_download} bytes, %{time_total} s\n" \
    "$BASE/v1/decisions?ip=11.0.0.1"
stop_server
