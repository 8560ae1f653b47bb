"""System-1 speed: chunk latency, sampling throughput and training-step MFU of the action expert.

What is timed (System-2 features are given, as with Ψ0's frozen VLM):

* sampling: one chunk (H = 30) = ``num_steps`` (10) Euler steps of the expert with a context of
  ``--context`` VLM tokens plus the state token (default 60 + 1 = 61 observation tokens); latency at
  batch 1 and throughput at ``--throughput-batch`` (1024 on GPU);
* training: one AdamW step (flow-matching loss, backward, update) at ``--train-batch`` (128) in
  ``--train-dtype`` (bf16 compute, float32 parameters); MFU = analytic model FLOPs (3× the forward
  matmul and attention FLOPs) / step time / ``--peak-tflops`` (H100 SXM bf16 dense: 798).

Anchors: π0's 10 flow steps take 27 ms on an RTX 4090. Goals: ≤ 15 ms per chunk at batch 1 for psi0;
≥ 40% MFU for the psi0 training step.

    python -m benchmarks.policy_speed                      # CPU: tiny/small rows, psi0 rows "pending"
    python -m benchmarks.policy_speed --presets psi0,small --train-presets psi0   # on a GPU

Results go to ``benchmarks/RESULTS.md`` (section ``policy_speed``) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from recap_jax import _platform  # noqa: F401  (XLA flags before JAX is imported)

# isort: split
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from benchmarks._results import machine_description, markdown_table, write_section
from recap_jax import flow
from recap_jax.models import action_expert as ae

SECTION = "policy_speed"
H100_BF16_TFLOPS = 798.0
PI0_4090_MS = 27.0


def expert_forward_flops(cfg: ae.ActionExpertConfig, batch: int, num_context: int) -> float:
    """Matmul + attention FLOPs of one expert forward pass (2 per multiply-add).

    Observation tokens M = num_context + 1 (state); T = H + M joint tokens.
    """
    d, f, a, h, c = cfg.width, cfg.mlp_dim, cfg.action_dim, cfg.chunk, cfg.context_dim
    m = num_context + 1
    t = h + m
    fl = h * (256 * d + d * d)  # per-token time MLP
    fl += h * (a * a + a * d) + a * d + num_context * c * d  # action, state and context projections
    for i in range(cfg.depth):
        if i < cfg.depth - 1:
            fl += h * d * 6 * d + d * 6 * d  # adaLN (per action token; once for observations)
            fl += t * 4 * d * d  # q, k, v and out projections for both streams
            fl += t * 2 * d * f  # both MLPs
            fl += 2 * t * t * d  # q·k and p·v
        else:
            fl += h * d * 6 * d + d * 2 * d
            fl += h * 2 * d * d + t * 2 * d * d  # action q and out; k, v for all tokens
            fl += h * 2 * d * f
            fl += 2 * h * t * d
    fl += h * (d * 2 * d + d * a)  # output head
    return 2.0 * batch * fl


def _time(fn, *args, reps: int) -> tuple[float, float]:
    """(compile+first-run seconds, median seconds of ``reps`` later runs)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def _inputs(cfg: ae.ActionExpertConfig, batch: int, num_context: int, key):
    k1, k2, k3 = jax.random.split(key, 3)
    ctx = jax.random.normal(k1, (batch, num_context, cfg.context_dim), jnp.float32)
    mask = jnp.ones((batch, num_context), bool)
    state = jax.random.normal(k2, (batch, cfg.action_dim), jnp.float32)
    return ctx, mask, state, k3


def bench_sampling(preset: str, batch: int, num_context: int, dtype: str, num_steps: int, reps: int) -> dict:
    cfg = ae.get_config(preset, dtype=dtype)
    graphdef, state = nnx.split(ae.build(cfg, 0))
    ctx, mask, s, key = _inputs(cfg, batch, num_context, jax.random.key(1))

    @jax.jit
    def sample(state, ctx, mask, s, key):
        # As in recap_jax.policy.sample_actions: weights cast to the compute dtype once, outside the loop.
        model = nnx.merge(graphdef, jax.tree.map(lambda x: x.astype(cfg.compute_dtype), state))
        noise = jax.random.normal(key, (batch, cfg.chunk, cfg.action_dim), jnp.float32)
        return flow.euler_sample(lambda x, sigma: model(x, sigma, ctx, mask, s), noise, num_steps)

    first, sec = _time(sample, state, ctx, mask, s, key, reps=reps)
    return {"compile_s": first, "sec": sec, "flops": num_steps * expert_forward_flops(cfg, batch, num_context)}


def bench_train(preset: str, batch: int, num_context: int, dtype: str, reps: int) -> dict:
    cfg = ae.get_config(preset, dtype=dtype)
    graphdef, state = nnx.split(ae.build(cfg, 0))
    tx = optax.adamw(1e-4, b1=0.95, b2=0.999, weight_decay=1e-6)
    opt = tx.init(state)
    ctx, mask, s, key = _inputs(cfg, batch, num_context, jax.random.key(2))
    actions = jax.random.uniform(key, (batch, cfg.chunk, cfg.action_dim), jnp.float32, -1, 1)

    def loss_fn(state, key):
        k1, k2, k3 = jax.random.split(key, 3)
        sigma = flow.sample_sigma(k1, (batch,))
        noise = jax.random.normal(k2, actions.shape, jnp.float32)
        pred = nnx.merge(graphdef, state)(flow.interpolate(actions, noise, sigma), sigma, ctx, mask, s, dropout_key=k3)
        return flow.flow_matching_loss(pred, actions, noise)

    def train_step(state, opt, key):
        loss, grads = jax.value_and_grad(loss_fn)(state, key)
        updates, opt = tx.update(grads, opt, state)
        return optax.apply_updates(state, updates), opt, loss

    step = jax.jit(train_step, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    state, opt, loss = jax.block_until_ready(step(state, opt, key))
    first = time.perf_counter() - t0
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        state, opt, loss = jax.block_until_ready(step(state, opt, jax.random.fold_in(key, i)))
        times.append(time.perf_counter() - t0)
    if not bool(jnp.isfinite(loss)):
        raise FloatingPointError(f"non-finite loss in the {preset} training benchmark")
    return {
        "compile_s": first,
        "sec": statistics.median(times),
        "flops": 3 * expert_forward_flops(cfg, batch, num_context),
    }


def bench_vlm(reps: int, preset: str = "tiny") -> dict:
    """Qwen3-VL forward (`qwen3vl.forward`, one jitted function) for one 180×320 frame through Ψ0's image
    path + a 25-token prompt: "tiny" = tests/data/qwen3vl_tiny's weights (float32); "qwen3vl-2b" = the 2B
    config with random weights (bfloat16; speed does not depend on the values)."""
    from pathlib import Path

    import numpy as np
    from flax import nnx

    from recap_jax.models import qwen3vl

    root = Path(__file__).resolve().parents[1] / "tests" / "data" / "qwen3vl_tiny"
    if preset == "tiny":
        model, cfg = qwen3vl.load_pretrained(root / "model")
    else:
        cfg = qwen3vl.PRESETS[preset]
        model = qwen3vl.Qwen3VL(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    frame = np.load(root / "image_io.npz")["image"]
    pv, grid = qwen3vl.preprocess_image(qwen3vl.psi0_image(frame))
    n = int(np.prod(grid)) // 4
    ids = np.concatenate(
        [[5, 6, cfg["vision_start_token_id"]], [cfg["image_token_id"]] * n, [cfg["vision_end_token_id"]]]
    )
    ids = np.concatenate([ids, np.arange(10, 30), [7, 8]])[None]
    mask = np.ones_like(ids)
    pv = jnp.asarray(pv)

    def run():
        return qwen3vl.forward(model, ids, mask, pv, grid[None])["last_layer"]

    first, sec = _time(run, reps=reps)
    fwd = qwen3vl.make_forward(model, grid[None])
    _, sec_made = _time(lambda: fwd(ids, mask, pv)["last_layer"], reps=reps)
    out = {"sec": sec, "sec_made": sec_made, "compile_s": first, "tokens": ids.shape[1], "dtype": str(model.dtype)}
    return out | {"gflop": _vlm_gflop(model, ids, pv, grid)}


def _vlm_gflop(model, ids, pv, grid) -> float:
    """XLA's flop count of the compiled forward (abstract arguments: nothing allocated for them)."""
    from flax import nnx

    from recap_jax.models import qwen3vl

    graphdef, state = nnx.split(model)
    args = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (state, ids, ids, pv))
    compiled = qwen3vl.jit_apply.lower(graphdef, *args, qwen3vl.static_grid(grid)).compile()
    return compiled.cost_analysis().get("flops", float("nan")) / 1e9


def compile_vlm_2b(tokens: int, grid=(1, 14, 22)) -> dict:
    """qwen3vl-2b forward lowered and compiled on abstract bfloat16 weights (no allocation): compile seconds
    and XLA's flop count, for a prompt of `tokens` tokens with one image of `grid`."""
    from flax import nnx

    from recap_jax.models import qwen3vl

    graphdef, state = nnx.split(qwen3vl.abstract_model(qwen3vl.PRESETS["qwen3vl-2b"], jnp.bfloat16))
    ids = jax.ShapeDtypeStruct((1, tokens), jnp.int32)
    pv = jax.ShapeDtypeStruct((grid[0] * grid[1] * grid[2], 1536), jnp.float32)
    t0 = time.perf_counter()
    compiled = qwen3vl.jit_apply.lower(graphdef, state, ids, ids, pv, (tuple(grid),)).compile()
    return {"compile_s": time.perf_counter() - t0, "gflop": compiled.cost_analysis().get("flops", 0.0) / 1e9}


SECTION_PSI0 = "policy_speed_psi0"


def bench_full_psi0(encoder: str, expert: str, batches: tuple[int, int], train_batch: int, reps: int) -> dict:
    """The whole Ψ0 through the policy API (random weights; speed only): ``sample_actions`` = Ψ0's image
    path on device + the VLM once + 10 expert steps, at batch 1 and a throughput batch; one AdamW train
    step (``train.make_train_step(policy_loss)``, bf16 compute on GPU) from cached features
    (``context`` [B, L, C] of the labelled and bare prompts, indicator dropout 0.3)."""
    import numpy as np

    from recap_jax import policy as P
    from recap_jax import train as T

    on_gpu = jax.default_backend() == "gpu"
    dt = "bfloat16" if on_gpu else "float32"
    cfg = P.PolicyConfig(
        encoder=encoder,
        action_expert=expert,
        image_size=(180, 320),
        prompt_max_len=160,
        dtype=dt,
        indicator_dropout=0.3,
        loss_reduction="psi0",
    )
    params = P.init_policy(cfg, 0)
    ids = jnp.asarray(np.full((1, cfg.prompt_max_len), cfg.pad_id, np.int32))
    n_img = cfg.tokenizer().num_image_tokens if encoder == "qwen3vl-tiny" else None
    if encoder == "qwen3vl-tiny":
        ids = jnp.asarray(cfg.tokenizer().encode("advantage: high. bend to pick up the cracker box")[0])
    else:  # no tokenizer without the checkpoint directory: the template's layout with made-up text ids
        row = np.full(cfg.prompt_max_len, cfg.pad_id, np.int32)
        n_img = 77
        body = [151644, 872, 198, 151652] + [151655] * n_img + [151653] + list(range(1000, 1012)) + [151645, 198]
        body += [151644, 77091, 198]
        row[: len(body)] = body
        ids = jnp.asarray(row[None])
    sample = jax.jit(P.sample_actions)
    out = {"params": sum(int(x.size) for x in jax.tree.leaves(params.model)), "sample": {}}
    rng = np.random.default_rng(0)
    for b in batches:
        obs = {
            "state": jnp.asarray(rng.normal(size=(b, 32)), jnp.float32),
            "image": jnp.asarray(rng.integers(0, 256, (b, 180, 320, 3), dtype=np.uint8)),
        }
        first, sec = _time(sample, params, obs, jnp.repeat(ids, b, 0), jax.random.key(1), reps=reps)
        out["sample"][b] = {"sec": sec, "compile_s": first}
    tx = T.make_optimizer(T.OptimizerConfig.psi0())
    state = T.TrainState.create(params, tx, jax.random.PRNGKey(0), mask=P.trainable_mask)
    step = jax.jit(
        T.make_train_step(P.policy_loss, tx, compute_dtype=jnp.bfloat16 if on_gpu else None), donate_argnums=(0,)
    )
    b, L, C = train_batch, cfg.prompt_max_len, P.vlm.VLM_PRESETS[encoder].hidden
    ctx_dt = jnp.bfloat16 if on_gpu else jnp.float32
    batch = {
        "context": jnp.asarray(rng.normal(size=(b, L, C)), ctx_dt),
        "context_mask": jnp.asarray(np.arange(L)[None] < 100).repeat(b, 0),
        "uncond_context": jnp.asarray(rng.normal(size=(b, L, C)), ctx_dt),
        "uncond_context_mask": jnp.asarray(np.arange(L)[None] < 90).repeat(b, 0),
        "state": jnp.asarray(rng.normal(size=(b, 32)), jnp.float32),
        "actions": jnp.asarray(rng.normal(size=(b, 30, 36)), jnp.float32),
        "action_mask": jnp.ones((b, 30), bool),
    }
    t0 = time.perf_counter()
    state, m = jax.block_until_ready(step(state, batch))
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        state, m = jax.block_until_ready(step(state, batch))
        times.append(time.perf_counter() - t0)
    out["train"] = {
        "sec": statistics.median(times),
        "compile_s": first,
        "flops": 3 * expert_forward_flops(cfg.expert_config(), b, L),
        "loss": float(m["loss"]),
    }
    return out


def main_psi0(args, on_gpu: bool) -> str:
    """Rows of the whole Ψ0 (System-2 + System-1) → section ``policy_speed_psi0``."""
    enc, exp = ("qwen3vl-2b", "psi0") if on_gpu else ("qwen3vl-tiny", "tiny")
    thr = 64 if on_gpu else 8
    tb = 128 if on_gpu else 16
    r = bench_full_psi0(enc, exp, (1, thr), tb, args.reps)
    rows = []
    for b, x in r["sample"].items():
        rows.append(
            [
                f"{enc} + {exp}",
                f"{r['params']:,}",
                b,
                f"{1e3 * x['sec']:.1f}",
                f"{b / x['sec']:.1f}",
                f"{x['compile_s']:.1f}",
            ]
        )
    t = r["train"]
    tflops = t["flops"] / t["sec"] / 1e12
    mfu = f"{100 * tflops / args.peak_tflops:.1f}%" if args.peak_tflops > 0 else "n/a (CPU)"
    train_rows = [
        [f"{enc} + {exp} (expert trained)", tb, f"{1e3 * t['sec']:.1f}", f"{tflops:.3f}", mfu, f"{t['compile_s']:.1f}"]
    ]
    if not on_gpu:
        pending = "pending (no GPU in this session)"
        rows += [["qwen3vl-2b + psi0 (H100/H200)", "2,617,571,160", b, pending, "", ""] for b in (1, 64)]
        train_rows.append(["qwen3vl-2b + psi0 (H100/H200)", 128, pending, "", "", ""])
    body = "\n\n".join(
        [
            f"Machine: {machine_description()}; load average {os.getloadavg()[0]:.1f} (shared machine: CPU numbers "
            "are rough). The whole Ψ0 through the policy API (random weights), frames 180×320 → 77 visual tokens, "
            "prompts of 160 tokens.",
            "### One chunk: image path on device + VLM once + 10 expert steps (`sample_actions`)",
            markdown_table(["policy", "params", "batch", "ms / chunk", "chunks / s", "compile s"], rows),
            "### Training step from cached features (`make_train_step(policy_loss)`, AdamW on the expert only)",
            markdown_table(
                ["policy", "batch", "ms / step", "TFLOP/s (expert model FLOPs)", "MFU", "compile s"], train_rows
            ),
            f"Anchors: π0 {PI0_4090_MS:.0f} ms per chunk on an RTX 4090; H100 bf16 {H100_BF16_TFLOPS:.0f} TFLOP/s. "
            "Goals: ≤ 40 ms per chunk at batch 1 on an H100; ≥ 40% MFU for the expert's training step. "
            "GPU rerun: `python -m benchmarks.policy_speed --psi0-only`.",
        ]
    )
    if not args.no_write:
        write_section(SECTION_PSI0, body)
    return body


def main(argv: list[str] | None = None) -> str:
    on_gpu = jax.default_backend() == "gpu"
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="psi0,small" if on_gpu else "tiny,small", help="sampling presets")
    p.add_argument("--train-presets", default="psi0" if on_gpu else "tiny", help="training-step presets")
    p.add_argument("--throughput-batch", type=int, default=1024 if on_gpu else 8)
    p.add_argument("--train-batch", type=int, default=128 if on_gpu else 16)
    p.add_argument("--context", type=int, default=60, help="VLM context tokens (the state token is added)")
    p.add_argument("--sample-dtype", default="bfloat16" if on_gpu else "float32")
    p.add_argument("--train-dtype", default="bfloat16" if on_gpu else "float32")
    p.add_argument("--num-steps", type=int, default=10)
    p.add_argument("--reps", type=int, default=20 if on_gpu else 3)
    p.add_argument("--peak-tflops", type=float, default=H100_BF16_TFLOPS if on_gpu else 0.0)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--psi0-only", action="store_true", help="only the whole-Ψ0 rows (section policy_speed_psi0)")
    p.add_argument("--skip-psi0", action="store_true", help="skip the whole-Ψ0 rows")
    args = p.parse_args(argv)
    if args.psi0_only:
        return main_psi0(args, on_gpu)
    presets = [x for x in args.presets.split(",") if x]
    train_presets = [x for x in args.train_presets.split(",") if x]

    rows = []
    for preset in presets:
        for batch in (1, args.throughput_batch):
            r = bench_sampling(preset, batch, args.context, args.sample_dtype, args.num_steps, args.reps)
            rows.append(
                [
                    preset,
                    f"{ae.num_params(preset):,}",
                    batch,
                    args.sample_dtype,
                    f"{1e3 * r['sec']:.2f}",
                    f"{batch / r['sec']:.1f}",
                    f"{r['flops'] / r['sec'] / 1e12:.3f}",
                    f"{r['compile_s']:.1f}",
                ]
            )
            print(rows[-1], flush=True)
    train_rows = []
    for preset in train_presets:
        r = bench_train(preset, args.train_batch, args.context, args.train_dtype, args.reps)
        tflops = r["flops"] / r["sec"] / 1e12
        mfu = f"{100 * tflops / args.peak_tflops:.1f}%" if args.peak_tflops > 0 else "n/a (no peak given)"
        train_rows.append(
            [
                preset,
                args.train_batch,
                args.train_dtype,
                f"{1e3 * r['sec']:.1f}",
                f"{tflops:.3f}",
                mfu,
                f"{r['compile_s']:.1f}",
            ]
        )
        print(train_rows[-1], flush=True)
    if not on_gpu:
        pending = "pending (no GPU in this session)"
        for preset, batch in (("psi0", 1), ("psi0", 1024), ("small", 1), ("small", 1024)):
            rows.append([f"{preset} (GPU)", f"{ae.num_params(preset):,}", batch, "bfloat16", pending, "", "", ""])
        train_rows.append(["psi0 (GPU)", 128, "bfloat16", pending, "", "", ""])

    vlm_rows = []
    for name in ("tiny", "qwen3vl-2b") if on_gpu else ("tiny",):
        vlm = bench_vlm(args.reps, name)
        vlm_rows.append(
            [
                f"qwen3vl {name}",
                vlm["tokens"],
                vlm["dtype"],
                f"{vlm['compile_s']:.1f}",
                f"{1e3 * vlm['sec']:.1f}",
                f"{1e3 * vlm['sec_made']:.1f}",
                f"{vlm['gflop']:.2f}",
            ]
        )
        print(vlm_rows[-1], flush=True)
    if not on_gpu:
        c2b = compile_vlm_2b(vlm["tokens"])
        compiled = [f"{c2b['compile_s']:.1f}", "", "", f"{c2b['gflop']:.1f}"]
        vlm_rows.append(["qwen3vl-2b (CPU, compile only)", vlm["tokens"], "bfloat16", *compiled])
        vlm_rows.append(["qwen3vl-2b (GPU)", vlm["tokens"], "bfloat16", "pending (no GPU in this session)", "", "", ""])
    body = "\n\n".join(
        [
            f"Machine: {machine_description()}; load average at the end {os.getloadavg()[0]:.1f} "
            "(other jobs share this machine: treat CPU numbers as rough).",
            f"Action expert only (System-2 features given): context {args.context} VLM tokens + 1 state token, "
            f"H = 30, {args.num_steps} Euler steps per chunk; medians of {args.reps} runs after compilation.",
            "### Sampling (one chunk)",
            markdown_table(
                ["preset", "params", "batch", "dtype", "ms / chunk", "chunks / s", "TFLOP/s", "compile s"], rows
            ),
            "### System-2 VLM forward (one frame through Ψ0's image path + prompt)",
            "One jitted function per image grid and prompt length (positions and rotary tables computed "
            "inside it); compile s = the first call; ms = median of the later calls through `qwen3vl.forward` "
            "(splits the module on every call) and through `qwen3vl.make_forward` (split once); GFLOP = XLA's "
            "count for the compiled forward. The 2B compile-only row lowers the forward on abstract weights "
            "(a stacked-layer lax.scan keeps it to one layer body per tower).",
            markdown_table(
                ["model", "tokens", "dtype", "compile s", "ms / forward", "ms / make_forward call", "GFLOP"], vlm_rows
            ),
            "### Training step (AdamW, flow-matching loss)",
            markdown_table(["preset", "batch", "dtype", "ms / step", "TFLOP/s", "MFU", "compile s"], train_rows),
            f"Anchors: π0, 10 flow steps, {PI0_4090_MS:.0f} ms on an RTX 4090; H100 bf16 peak "
            f"{H100_BF16_TFLOPS:.0f} TFLOP/s. Goals: psi0 ≤ 15 ms per chunk at batch 1; ≥ 40% MFU training.",
            "Rerun on a GPU: `python -m benchmarks.policy_speed` (defaults switch to psi0/small, batch 1024, "
            "bf16, train batch 128).",
        ]
    )
    if not args.no_write:
        write_section(SECTION, body)
    if not args.skip_psi0:
        body += "\n\n" + main_psi0(args, on_gpu)
    return body


if __name__ == "__main__":
    print(main())
