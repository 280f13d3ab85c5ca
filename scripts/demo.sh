#!/usr/bin/env bash
# The README's demo: set up .venv, make phantom data, check it, and run the tool end to end.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
OUT="${DEMO_OUT:-demo_out}"
mkdir -p "$OUT"
echo "== radmtl phantom: 8 synthetic pelvis cases"
radmtl phantom "$OUT/data" --cases 8 --seed 0 --shape 64 64 40
echo "== radmtl check"
radmtl check "$OUT/data"
