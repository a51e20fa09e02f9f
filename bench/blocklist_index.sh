#!/usr/bin/env bash
# Measures blocklist index lookups (benches/blocklist_index.rs) and writes
# the table into BENCHMARKS.md between the index markers. In-process only:
# no database or server is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

table=$(cargo bench --bench blocklist_index 2>/dev/null | grep '^|')
stamp="$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -m), commit $(git rev-parse --short HEAD)"
section=$(printf '%s\n\n%s\n\n%s\n' "<!-- index:start -->" \
    "Measured $stamp with \`bench/blocklist_index.sh\`:" "$table")

python3 - "$section" <<'PY'
import re, sys
section = sys.argv[1] + "\n<!-- index:end -->"
path = "BENCHMARKS.md"
text = open(path).read()
text = re.sub(r"<!-- index:start -->.*?<!-- index:end -->", lambda _: section, text, flags=re.S)
open(path, "w").write(text)
PY
echo "$table"
