"""Training throughput: policy train-step samples/s and MFU per preset, and the loader's samples/s.

    python -m benchmarks.train_throughput                    # CPU: tiny + small presets, the loader
    python -m benchmarks.train_throughput --gpu --presets tiny small psi0 --batch 32   # on a GPU host

The step is the project's real ``make_train_step(policy_loss, AdamW)`` jitted with the FSDP shardings
over all local devices (``fsdp=1``, i.e. data parallel). FLOPs per step come from XLA's cost analysis of
the compiled step; MFU = achieved FLOP/s / peak. The CPU "peak" is the FLOP/s of a large float32
matmul measured on this host just before (so CPU MFU is relative to what XLA's matmul reaches here);
on GPU the peak is the dense bf16 number of the card (H100/H200 SXM: 989 TFLOP/s), or ``--peak-tflops``.

Results go to benchmarks/RESULTS.md: section ``train_throughput_cpu`` or ``train_throughput_gpu``; a CPU
run also writes a GPU section of "pending" rows if none exists yet.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._results import RESULTS, machine_description, markdown_table, write_section
from recap_jax import _platform  # noqa: F401  (XLA flags before JAX)
from recap_jax import policy as pol
from recap_jax.data import Episode, EpisodeStore, LoaderConfig, WindowLoader
from recap_jax.train import (
    OptimizerConfig,
    TrainState,
    count_params,
    init_sharded,
    jit_train_step,
    make_mesh,
    make_optimizer,
    make_train_step,
    put_batch,
)

PAIRS = {"tiny": ("tiny", "tiny"), "small": ("small", "small"), "psi0": ("psi0", "base")}
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
HEADERS = ["preset", "params (M)", "batch", "dtype", "compile s", "step ms", "samples/s", "GFLOP/step", "MFU"]


def cpu_peak_flops(n: int = 1024, reps: int = 10) -> float:
    """FLOP/s of a jitted float32 [n, n] matmul on device 0 (best of a few runs)."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            out = f(a)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n**3 / best


def synthetic_batch(cfg: pol.PolicyConfig, b: int, rng: np.random.Generator) -> dict:
    h, w = cfg.image_size
    ids, mask = cfg.tokenizer().encode(["advantage: high. bend to pick up the cracker box"] * b)
    return {
        "image": rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8),
        "state": rng.normal(size=(b, 32)).astype(np.float32),
        "prompt_ids": ids,
        "prompt_mask": mask,
        "actions": rng.normal(size=(b, cfg.chunk, 36)).astype(np.float32),
        "action_mask": np.ones((b, cfg.chunk), bool),
    }


def bench_policy(preset: str, batch: int, steps: int, dtype: str, peak: float) -> list:
    expert, encoder = PAIRS[preset]
    cfg = pol.PolicyConfig(action_expert=expert, encoder=encoder, dtype=dtype)
    tx = make_optimizer(OptimizerConfig.psi0())
    mesh = make_mesh(fsdp=1, devices=jax.local_devices())

    def init(key):
        return TrainState.create(pol.init_policy(cfg, key), tx, jax.random.PRNGKey(1), mask=pol.trainable_mask)

    state, shardings = init_sharded(init, mesh, jax.random.PRNGKey(0))
    step = jit_train_step(make_train_step(pol.policy_loss, tx), shardings, mesh)
    host = synthetic_batch(cfg, batch, np.random.default_rng(0))
    dev_batch = put_batch(host, mesh)
    t = time.perf_counter()
    compiled = step.lower(state, dev_batch).compile()
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    state, m = compiled(state, dev_batch)  # warm-up
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
        state, m = compiled(state, dev_batch)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t) / steps
    mfu = flops / dt / peak if np.isfinite(flops) else float("nan")
    n_params = count_params(state.params, state.mask) / 1e6
    return [
        preset,
        f"{n_params:.2f}",
        batch,
        dtype,
        f"{compile_s:.1f}",
        f"{dt * 1e3:.1f}",
        f"{batch / dt:.1f}",
        f"{flops / 1e9:.2f}",
        f"{100 * mfu:.1f}%",
    ]


def bench_loader(batch: int, seconds: float, image_size: tuple[int, int]) -> list[list]:
    """Loader samples/s: host batches only, and with the prefetch thread + device_put."""
    rng = np.random.default_rng(0)
    h, w = image_size
    rows = []
    with tempfile.TemporaryDirectory() as root:
        store = EpisodeStore(root, create=True)
        for shard in range(4):
            eps = []
            for i in range(5):
                t = 600
                steps = np.arange(0, t, 24, dtype=np.int32)
                eps.append(
                    Episode(
                        shard * 5 + i,
                        rng.normal(size=(t, 32)).astype(np.float32),
                        rng.normal(size=(t, 36)).astype(np.float32),
                        steps,
                        rng.integers(0, 256, (steps.size, h, w, 3), dtype=np.uint8),
                        "bend to pick up the cracker box",
                        True,
                        t,
                        {"kind": "rollout"},
                    )
                )
            store.append(eps)
        mesh = make_mesh(fsdp=1, devices=jax.local_devices())
        for name, kwargs in [
            ("host numpy", dict(prefetch=0)),
            ("prefetch=2 + device_put", dict(prefetch=2, mesh=mesh)),
        ]:
            loader = WindowLoader(store, LoaderConfig(batch_size=batch), **kwargs)
            next(loader)
            n, t = 0, time.perf_counter()
            while time.perf_counter() - t < seconds:
                b = next(loader)
                n += batch
            jax.block_until_ready(b)
            rate = n / (time.perf_counter() - t)
            loader.close()
            rows.append([name, batch, f"{h}x{w}", loader.num_windows, f"{rate:.0f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=sorted(PAIRS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--gpu", action="store_true", help="measure on the GPU and write the GPU section")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    platform = jax.devices()[0].platform
    if args.gpu and platform != "gpu":
        raise SystemExit(f"--gpu given but JAX runs on {platform}: install the [cuda] extra on a GPU host")
    if args.peak_tflops:
        peak, peak_note = args.peak_tflops * 1e12, f"{args.peak_tflops} TFLOP/s (given)"
    elif platform == "gpu":
        kind = jax.devices()[0].device_kind
        tf = next((v for k, v in GPU_PEAK_TFLOPS.items() if k in kind), None)
        if tf is None:
            raise SystemExit(f"unknown GPU {kind!r}: pass --peak-tflops")
        peak, peak_note = tf * 1e12, f"{tf} TFLOP/s dense bf16 ({kind})"
    else:
        peak = cpu_peak_flops()
        peak_note = f"{peak / 1e9:.1f} GFLOP/s (measured f32 1024² matmul on this host)"

    rows = []
    for preset in args.presets:
        row = bench_policy(preset, args.batch, args.steps, args.dtype, peak)
        print(dict(zip(HEADERS, row)), flush=True)
        rows.append(row)
    loader_rows = bench_loader(max(args.batch, 32), 3.0, (96, 160))
    print(loader_rows, flush=True)
    body = (
        f"Machine: {machine_description()}; 1-min load average at the end {os.getloadavg()[0]:.1f} "
        "(the CPU is shared with other jobs, so CPU numbers are noisy). "
        f"Peak for MFU: {peak_note}. Image 96x160, prompt length 64, "
        f"AdamW, {args.steps} timed steps after a warm-up; FLOPs from XLA cost analysis of the compiled step.\n\n"
        + markdown_table(HEADERS, rows)
        + "\n\nLoader (synthetic store: 20 episodes x 600 steps, an image every 24 steps):\n\n"
        + markdown_table(["mode", "batch", "image", "windows", "samples/s"], loader_rows)
    )
    if args.no_write:
        print(body)
        return
    write_section("train_throughput_gpu" if platform == "gpu" else "train_throughput_cpu", body)
    if platform != "gpu" and "BEGIN train_throughput_gpu" not in RESULTS.read_text():
        pending = [
            [p, *["pending (no GPU in this session)"] + [""] * (len(HEADERS) - 2)] for p in ("tiny", "small", "psi0")
        ]
        write_section(
            "train_throughput_gpu",
            "Run `python -m benchmarks.train_throughput --gpu --presets tiny small psi0 --batch 32` on a GPU host.\n\n"
            + markdown_table(HEADERS, pending),
        )


if __name__ == "__main__":
    main()
