"""Memory plan of the whole Ψ0 (frozen bf16 Qwen3-VL-2B + float32 expert + AdamW) on one 80 GB GPU, and
the FSDP rule over the existing ("data", "fsdp") mesh, checked without allocating anything:

* parameter / optimiser / gradient bytes from ``jax.eval_shape`` of ``init_policy`` and
  ``TrainState.create`` (``policy.trainable_mask``: only the expert is trained, the VLM has no moments);
* XLA's compiled memory analysis (arguments, outputs, temporaries) of
  - the training step from cached features (``policy_loss`` on ``context`` [B, L, 2048] bf16), batch 128;
  - ``sample_actions`` with the VLM on the fly (one chunk: VLM once + 10 expert steps), batch 1 and 64;
  - the same training step sharded by ``train.state_shardings`` over 8 host devices (fsdp = 8), per device.

CPU compilation stands in for the GPU's: XLA:CPU fuses and schedules differently, so the temporaries are
indicative (the GPU rerun is ``python -m benchmarks.psi0_memory`` on the device). Results go to
``benchmarks/RESULTS.md`` (section ``psi0_memory``).

    python -m benchmarks.psi0_memory            # 8 host devices are forced on CPU
"""

from __future__ import annotations

import argparse
import os
import time

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", "") and os.environ.get(
    "JAX_PLATFORMS", ""
) in ("", "cpu"):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

from recap_jax import _platform  # noqa: F401  (XLA flags before JAX is imported)

# isort: split
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._results import machine_description, markdown_table, write_section
from recap_jax import policy as P
from recap_jax import train as T

SECTION = "psi0_memory"
GB = 1e9


def _bytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _fmt(b: float) -> str:
    return f"{b / GB:.2f}"


def _analysis(compiled) -> dict:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    return {
        "args": m.argument_size_in_bytes,
        "out": m.output_size_in_bytes,
        "temp": m.temp_size_in_bytes,
        "alias": m.alias_size_in_bytes,
        "peak": m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes,
    }


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--sample-batches", default="1,64")
    p.add_argument("--prompt-len", type=int, default=160)
    p.add_argument("--fsdp", type=int, default=8)
    p.add_argument("--skip-compile", action="store_true", help="only the eval_shape sizes")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)

    cfg = P.PolicyConfig(
        encoder="qwen3vl-2b",
        action_expert="psi0",
        image_size=(180, 320),
        prompt_max_len=args.prompt_len,
        dtype="bfloat16",
        indicator_dropout=0.3,
        loss_reduction="psi0",
        rtc_max_delay=8,
    )
    params = P.abstract_policy(cfg)
    tx = T.make_optimizer(T.OptimizerConfig.psi0())
    state = jax.eval_shape(
        lambda: T.TrainState.create(P.init_policy(cfg, 0), tx, jax.random.PRNGKey(0), mask=P.trainable_mask)
    )
    n_vlm = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params.model["encoder"]))
    n_exp = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params.model["expert"]))
    vlm_b, exp_b = _bytes(params.model["encoder"]), _bytes(params.model["expert"])
    opt_b = _bytes(state.opt_state)
    b, L, C = args.batch, args.prompt_len, 2048
    batch = {
        "context": jax.ShapeDtypeStruct((b, L, C), jnp.bfloat16),
        "context_mask": jax.ShapeDtypeStruct((b, L), bool),
        "uncond_context": jax.ShapeDtypeStruct((b, L, C), jnp.bfloat16),
        "uncond_context_mask": jax.ShapeDtypeStruct((b, L), bool),
        "state": jax.ShapeDtypeStruct((b, 32), jnp.float32),
        "actions": jax.ShapeDtypeStruct((b, 30, 36), jnp.float32),
        "action_mask": jax.ShapeDtypeStruct((b, 30), bool),
    }
    batch_b = _bytes(batch)
    static_rows = [
        ["Qwen3-VL-2B weights (frozen, bf16)", f"{n_vlm:,}", _fmt(vlm_b)],
        ["expert weights (float32 master)", f"{n_exp:,}", _fmt(exp_b)],
        ["AdamW moments + count (expert only)", "", _fmt(opt_b)],
        ["expert gradients (float32)", "", _fmt(exp_b)],
        [f"cached-feature batch {b} (2 × [{b}, {L}, {C}] bf16 + state/actions)", "", _fmt(batch_b)],
        ["total before activations", "", _fmt(vlm_b + 2 * exp_b + opt_b + batch_b)],
    ]
    print(static_rows, flush=True)

    compiled_rows, fsdp_rows = [], []
    if not args.skip_compile:
        step = T.make_train_step(P.policy_loss, tx, compute_dtype=jnp.bfloat16)
        t0 = time.perf_counter()
        c = jax.jit(step, donate_argnums=(0,)).lower(state, batch).compile()
        m = _analysis(c)
        compiled_rows.append(
            [
                f"train step from cached features, batch {b}",
                *(_fmt(m[k]) for k in ("args", "temp", "peak")),
                f"{time.perf_counter() - t0:.0f}",
            ]
        )
        print(compiled_rows[-1], flush=True)
        for sb in [int(x) for x in args.sample_batches.split(",") if x]:
            obs = {
                "state": jax.ShapeDtypeStruct((sb, 32), jnp.float32),
                "image": jax.ShapeDtypeStruct((sb, 180, 320, 3), jnp.uint8),
            }
            ids = jax.ShapeDtypeStruct((sb, L), jnp.int32)
            t0 = time.perf_counter()
            c = jax.jit(P.sample_actions).lower(params, obs, ids, jax.random.key(0)).compile()
            m = _analysis(c)
            compiled_rows.append(
                [
                    f"sample_actions (VLM + 10 expert steps), batch {sb}",
                    *(_fmt(m[k]) for k in ("args", "temp", "peak")),
                    f"{time.perf_counter() - t0:.0f}",
                ]
            )
            print(compiled_rows[-1], flush=True)

        n_dev = len(jax.devices())
        if n_dev >= args.fsdp:
            mesh = T.make_mesh(fsdp=args.fsdp, devices=jax.devices()[: args.fsdp])
            shard = T.state_shardings(state, mesh)

            def per_device(tree, shardings):
                tot = 0
                for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
                    tot += int(np.prod(s.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
                return tot

            fsdp_rows.append(
                ["VLM weights", _fmt(per_device(state.params.model["encoder"], shard.params.model["encoder"]))]
            )
            fsdp_rows.append(
                ["expert weights", _fmt(per_device(state.params.model["expert"], shard.params.model["expert"]))]
            )
            fsdp_rows.append(["AdamW moments", _fmt(per_device(state.opt_state, shard.opt_state))])
            t0 = time.perf_counter()
            c = T.jit_train_step(step, shard, mesh).lower(state, batch).compile()
            m = _analysis(c)
            fsdp_rows.append(
                [f"compiled train step (per device; batch {b} split {args.fsdp} ways): args", _fmt(m["args"])]
            )
            fsdp_rows.append(["… temporaries", _fmt(m["temp"])])
            fsdp_rows.append(["… peak (args + out + temp − aliased)", _fmt(m["peak"])])
            fsdp_rows.append(["compile s", f"{time.perf_counter() - t0:.0f}"])
            print(fsdp_rows, flush=True)

    body = "\n\n".join(
        x
        for x in [
            f"Machine: {machine_description()}; load average {os.getloadavg()[0]:.1f}. Nothing allocated: sizes from "
            "`jax.eval_shape`, the rest from XLA's compiled `memory_analysis()`.",
            f"Policy: `PolicyConfig(encoder='qwen3vl-2b', action_expert='psi0', prompt_max_len={L}, dtype='bfloat16')` "
            "(bf16 compute, float32 expert master weights, AdamW as Ψ0: `OptimizerConfig.psi0`).",
            "### Static memory (GB)",
            markdown_table(["what", "parameters", "GB"], static_rows),
            "### Compiled, one device (GB; XLA:CPU's analysis, indicative for the GPU)" if compiled_rows else "",
            markdown_table(["program", "arguments", "temporaries", "peak", "compile s"], compiled_rows)
            if compiled_rows
            else "",
            f"### FSDP over {args.fsdp} host devices (`train.state_shardings`, mesh data=1 × fsdp={args.fsdp}), "
            "GB per device"
            if fsdp_rows
            else "",
            markdown_table(["what", "GB / device"], fsdp_rows) if fsdp_rows else "",
            "Plan: on one 80 GB GPU nothing needs sharding — the frozen VLM (bf16), the float32 expert, its AdamW "
            "moments and gradients take the static total above, and the training step reads cached features, so "
            "no VLM activations exist during training. The VLM runs only to build the cache (batched, inference) "
            "and inside `sample_actions`. Over several devices the existing shape rule (`fsdp_spec`: the largest "
            "dimension divisible by the fsdp size, arrays ≥ 4 MiB) also shards the VLM's stacked layer weights "
            "(e.g. [28, 2048, 6144] on its 6144 axis) and the 151,936-row embedding; it holds no optimiser state.",
        ]
        if x
    )
    if not args.no_write:
        write_section(SECTION, body)
    return body


if __name__ == "__main__":
    print(main())
