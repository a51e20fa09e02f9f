# Sourced by the bench scripts that load the server with wrk.
#
# load ARGS...: runs wrk with 2 threads and 64 connections for $DURATION
# seconds and prints "requests/s p50 p99"; any non-2xx answer fails the run,
# so that a refusal is never counted as a served request.
load() {
    local output
    output=$(wrk -t2 -c64 -d"${DURATION}s" --latency "$@")
    if grep -q "Non-2xx" <<<"$output"; then
        echo "$output" >&2
        echo "non-2xx answers under load" >&2
        exit 1
    fi
    awk '/Requests\/sec/ {printf "%d", $2} / 50%/ {p50=$2} / 99%/ {p99=$2}
         END {printf " %s %s\n", p50, p99}' <<<"$output"
}
