#!/usr/bin/env bash
# What a newcomer sees (issue #24): `make demo` and `make test` from a fresh clone with an empty JAX
# compilation cache, timed.
#
#   bash benchmarks/cold_start.sh [demo|test|both]      (default: both; run from the repository root)
#
# Clones HEAD (committed work only) into a new temporary directory, installs it (`make install`: its own
# .venv), then runs each target with JAX_COMPILATION_CACHE_DIR pointed at a new empty directory, under
# /usr/bin/time. Prints wall time, CPU time and the load average before and after (a loaded machine
# inflates the wall time; say so when reporting), and for the demo the per-stage compile / CPU breakdown
# (`stage_timing` in results.json). Logs: $WORK/{install,demo,test}.log. Keep the clone with KEEP=1.
set -euo pipefail
what="${1:-both}"
repo="$(git rev-parse --show-toplevel)"
WORK="$(mktemp -d /tmp/cold_start.XXXXXX)"
echo "commit $(git -C "$repo" rev-parse --short HEAD), work dir $WORK, $(nproc) cores"
git clone -q "$repo" "$WORK/clone"
cd "$WORK/clone"
/usr/bin/time -f "install: %e s wall" make install >"$WORK/install.log" 2>&1 || { tail -20 "$WORK/install.log"; exit 1; }
tail -1 "$WORK/install.log"

run() {  # name, make target
    local cache
    cache="$(mktemp -d "$WORK/jax_cache_$1.XXXX")"
    echo "== make $2 (empty compile cache $cache); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    JAX_COMPILATION_CACHE_DIR="$cache" /usr/bin/time -f "$1: %e s wall, %U s user + %S s system CPU, max RSS %M KB" \
        make "$2" >"$WORK/$1.log" 2>&1 || { tail -40 "$WORK/$1.log"; echo "make $2 FAILED"; }
    tail -1 "$WORK/$1.log"
    echo "   load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
}

if [[ "$what" == demo || "$what" == both ]]; then
    run demo demo
    grep -E "^\| |^Value function|^stage time" "$WORK/demo.log" || true
    .venv/bin/python - <<'PY'
import json
r = json.load(open("runs/demo/results.json"))
for stage, t in r["stage_timing"].items():
    print(f"  {stage:24s} wall {r['seconds'].get(stage, 0):7.1f} s  {t}")
PY
fi
if [[ "$what" == test || "$what" == both ]]; then
    run test test
    grep -E "passed|failed" "$WORK/test.log" | tail -3 || true
fi
[[ "${KEEP:-0}" == 1 ]] || { cd /; rm -rf "$WORK/clone"; }
