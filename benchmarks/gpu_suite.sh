#!/usr/bin/env bash
# Runs the GPU rows of the benchmarks on one accelerator host, each under its own time limit, and
# writes their sections to ${RECAP_BENCH_RESULTS:-benchmarks/RESULTS_gpu.md} (merge into RESULTS.md
# by hand or with the section names). Usage: bash benchmarks/gpu_suite.sh [LOGDIR]
set -u
LOG=${1:-runs/gpu_bench}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1
export RECAP_BENCH_RESULTS=${RECAP_BENCH_RESULTS:-benchmarks/RESULTS_gpu.md}
run() {  # name seconds command...
  local name=$1 secs=$2
  shift 2
  echo "=== $name (limit ${secs}s) $(date -u +%T)"
  timeout -k 10 "$secs" "$@" >"$LOG/$name.log" 2>&1
  echo "=== $name rc=$? $(date -u +%T)"
  tail -n 25 "$LOG/$name.log"
}
run env_throughput "${ENV_S:-170}" python -m benchmarks.env_throughput --gpu --batch-sizes 1024,4096 --steps 20
run rollout_throughput "${ROLL_S:-230}" python -m benchmarks.rollout_throughput --envs 512 1024 --episode-length 600 --repeats 1
run policy_speed "${POL_S:-120}" python -m benchmarks.policy_speed --train-presets small,psi0
run render_throughput "${REN_S:-60}" python -m benchmarks.render_throughput --gpu --batches 1 --reps 3
