#!/usr/bin/env bash
# Solver sweep of G1BendPick-v0's MJX physics on one GPU (benchmarks/env_throughput.py --solvers), run twice:
# without and with --xla_gpu_triton_gemm_any=True (MJX's tutorial recommends it on NVIDIA GPUs). Each run has
# its own --budget-s (from process start, compiles included) and an outer timeout a little above it; each
# writes its section (env_solver_sweep_gpu, env_solver_sweep_gpu_triton) to
# ${RECAP_BENCH_RESULTS:-benchmarks/RESULTS_gpu.md} after every measured row (merge into RESULTS.md by
# section name). Usage: bash benchmarks/gpu_solver_sweep.sh [LOGDIR]
# Knobs: PY (python3), SOLVERS, BATCHES, BUDGET_S (per run), DEADLINE_S, STEPS, WORKERS, TRITON ("0 1", "0" or "1").
set -u
LOG=${1:-runs/gpu_solver_sweep}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1
export RECAP_BENCH_RESULTS=${RECAP_BENCH_RESULTS:-benchmarks/RESULTS_gpu.md}
# The default physics first (Newton 1/4, eulerdamp off), then the old default and two more that pass
# env_solver_validation: the floor is read from the first row.
SOLVERS=${SOLVERS:-newton:1:4:noeulerdamp,newton:4:8:eulerdamp,newton:2:4:noeulerdamp,cg:4:8:noeulerdamp}
BATCHES=${BATCHES:-4096}
BUDGET_S=${BUDGET_S:-170}
STEPS=${STEPS:-24}
WORKERS=${WORKERS:-6}
DEADLINE_S=${DEADLINE_S:-110}  # stop waiting for compiles here (from process start); the rest measures
BASE_FLAGS=${XLA_FLAGS:-}
for triton in ${TRITON:-0 1}; do
  flags=$BASE_FLAGS
  [ "$triton" = 1 ] && flags="$flags --xla_gpu_triton_gemm_any=True"
  name=sweep_triton$triton
  echo "=== $name (budget ${BUDGET_S}s) $(date -u +%T)"
  XLA_FLAGS="${flags# }" timeout -k 10 $((BUDGET_S + 40)) ${PY:-python3} -m benchmarks.env_throughput --gpu \
    --batch-sizes "$BATCHES" --steps "$STEPS" --budget-s "$BUDGET_S" --compile-deadline-s "$DEADLINE_S" --compile-workers "$WORKERS" \
    --solvers "$SOLVERS" >"$LOG/$name.log" 2>&1
  echo "=== $name rc=$? $(date -u +%T)"
  tail -n 25 "$LOG/$name.log"
done
