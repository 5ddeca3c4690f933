#!/usr/bin/env bash
# The test suite while the CPU is busy: a test that passes only on a quiet or fast machine (a
# wall-clock bound, a race against a subprocess) fails here before it fails someone else's CI.
#   bash scripts/test_under_load.sh [PYTEST ARGS]     # HOGS=N busy loops (default: one per core)
# The busy loops run beside `.venv/bin/python -m pytest -q -n 2 [PYTEST ARGS]` and are stopped
# when it ends, whatever its result; the exit status is pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."
hogs=${HOGS:-$(nproc)}
pids=()
stop_hogs() { if [ ${#pids[@]} -gt 0 ]; then kill "${pids[@]}" 2>/dev/null || true; fi; }
trap stop_hogs EXIT
for _ in $(seq "$hogs"); do
  .venv/bin/python -c "while True: pass" &
  pids+=($!)
done
echo "test_under_load: ${hogs} busy loop(s) beside the suite"
.venv/bin/python -m pytest -q -n 2 "$@"
