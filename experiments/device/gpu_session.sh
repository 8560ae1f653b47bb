#!/usr/bin/env bash
# One device call that runs the `gpu` study (resumable) and then, with the time left, a physics sweep.
# Sized for a session's 15 device-minutes: one call of at most ~580 s after the machine starts.
#
# Here, first:   bash experiments/device/fetch_wheels.sh          (cp312 wheels into .whl/, ~34 MB)
# Device call:   run(command="bash experiments/device/gpu_session.sh", carry=[".whl"], timeout_s=600)
# A second call on the still-warm machine (within its 30 s idle window) resumes the study where it stopped
# (runs/ is kept on a warm machine); a fresh machine starts over.
#
# Knobs (environment): MODE (study: the study, then one pass of benchmarks/gpu_solver_sweep.sh without the
# triton flag if >= 150 s are left; sweep: only that script, without and with the triton GEMM flag, ~6 min),
# PRESET (gpu), PHYSICS (the study's --physics, e.g. newton:4:8:noeulerdamp; default: the env's),
# STUDY_S (study limit, 480), TOTAL_S (whole call, 570), SWEEP (0: no sweep after the study),
# RUN_DIR (runs/$PRESET). What is worth keeping is copied to $OUT (at most 8 files come back): study.log,
# <preset>_results.tar.gz (everything but checkpoints and episode stores), results.json, table1.md,
# sweep.log, sweep_logs.tar.gz, RESULTS_gpu.md (benchmark sections to merge into RESULTS.md).
set -u
cd "$(dirname "$0")/../.."
T0=$(date +%s)
PRESET=${PRESET:-gpu}
STUDY_S=${STUDY_S:-480}
TOTAL_S=${TOTAL_S:-570}
RUN_DIR=${RUN_DIR:-runs/$PRESET}
OUT=${OUT:-runs/device_out}
mkdir -p "$OUT" "$RUN_DIR"
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/recap_jax_cache}
if [ -d .whl ] && [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 3; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
PY=${PY:-python3}
{
  echo "== $(date -u +%FT%TZ) preset=$PRESET commit=$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  $PY -c "import jax, flax, mujoco; from mujoco import mjx; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'mujoco', mujoco.__version__)"
} 2>&1 | tee -a "$OUT/study.log"

sweep() {  # [env assignments for benchmarks/gpu_solver_sweep.sh...]: its sections and logs go to $OUT
  env "$@" RECAP_BENCH_RESULTS="$OUT/RESULTS_gpu.md" PY="$PY" bash benchmarks/gpu_solver_sweep.sh "$OUT/sweep_logs" 2>&1 \
    | tee -a "$OUT/sweep.log"
  tar -czf "$OUT/sweep_logs.tar.gz" -C "$OUT" sweep_logs && rm -rf "$OUT/sweep_logs"
}
if [ "${MODE:-study}" = sweep ]; then
  sweep
  exit 0
fi

# The study: stages already done in RUN_DIR are skipped; progress bars are dropped from the log.
timeout -k 15 "$STUDY_S" $PY -m experiments.recap_bendpick --preset "$PRESET" --out "$RUN_DIR" \
  ${PHYSICS:+--physics "$PHYSICS"} 2>&1 \
  | tr '\r' '\n' | grep -v -E '(ep/s|it/s|s/it|s/ep|s/step|step/s)' | tee -a "$OUT/study.log"
RC=${PIPESTATUS[0]}
echo "== study rc=$RC after $(( $(date +%s) - T0 )) s" | tee -a "$OUT/study.log"

# Results (small files only: no checkpoints or episode stores) in one archive.
# (evaluate/*.npz, the paired per-episode outcomes, and value/values.npz are kept.)
tar -czf "$OUT/${PRESET}_results.tar.gz" --exclude='checkpoints' --exclude='store' --exclude='raw' \
  --exclude='rollouts' --exclude='tb' -C "$(dirname "$RUN_DIR")" "$(basename "$RUN_DIR")" 2>/dev/null
for f in results.json table1.md; do [ -f "$RUN_DIR/$f" ] && cp "$RUN_DIR/$f" "$OUT/"; done

# The physics sweep with whatever time is left (issue #9), only after a finished study.
LEFT=$(( TOTAL_S - ($(date +%s) - T0) ))
if [ "$RC" = 0 ] && [ "${SWEEP:-1}" != 0 ] && [ "$LEFT" -ge 150 ]; then
  # gpu_solver_sweep.sh adds 40 s of timeout slack to its budget; its compile deadline is 0.6 x the budget.
  BUDGET=$(( LEFT - 55 ))
  echo "== sweep with ${LEFT} s left (budget ${BUDGET} s)" | tee -a "$OUT/sweep.log"
  sweep TRITON=0 BUDGET_S="$BUDGET" DEADLINE_S=$(( BUDGET * 6 / 10 ))
fi
echo "== done after $(( $(date +%s) - T0 )) s"
exit "$RC"
