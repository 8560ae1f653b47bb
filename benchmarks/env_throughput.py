"""G1BendPick-v0 throughput: MJX (jit(vmap(env.step))) at several batch sizes beside C MuJoCo on the same model.

    python -m benchmarks.env_throughput                       # CPU rows, writes benchmarks/RESULTS.md
    python -m benchmarks.env_throughput --gpu --batch-sizes 1024,4096

Rows: MJX control steps/s and physics steps/s (= control x substeps) per batch size; C MuJoCo single env
(``mj_step``); MuJoCo 4's multi-threaded ``mujoco.batch.Batch`` on all cores at the same batch sizes. The
study's config (``envs.make("G1BendPick-v0")``); the action is the scripted expert's when
``envs.g1.expert`` provides ``expert_act``, otherwise the 'hold' action (default arm/hand targets and
the nominal stand command), as the table says. Compile time is reported separately, not counted.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

from recap_jax import _platform  # first: XLA flags before JAX

TA = 24  # actions executed per expert query, as in the rollouts


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="run the MJX rows on the GPU (default: CPU)")
    p.add_argument("--batch-sizes", default="1,16,64", help="comma-separated env counts")
    p.add_argument("--steps", type=int, default=20, help="timed control steps per MJX batch size")
    p.add_argument("--c-steps", type=int, default=200, help="timed control steps for C MuJoCo")
    p.add_argument("--no-write", action="store_true", help="print only; do not touch RESULTS.md")
    p.add_argument(
        "--solver-sweep",
        action="store_true",
        help="also time bare physics (10 mjx.step in a scan, largest batch) for several solver settings",
    )
    return p.parse_args()


def _batched_states(reset1, batch: int):
    """``batch`` env states from a few single-env resets (one compiled reset serves every batch size)."""
    import jax
    import jax.numpy as jnp

    singles = [reset1(jax.random.PRNGKey(i)) for i in range(min(batch, 4))]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *singles)
    reps = -(-batch // len(singles))
    return jax.tree.map(lambda x: jnp.concatenate([x] * reps)[:batch], stacked)


def _expert_policy():
    """``(act, params)`` of the scripted expert if ``envs.g1.expert`` provides ``expert_act``, else None."""
    if importlib.util.find_spec("envs.g1.expert") is None:
        return None
    from envs.g1 import expert

    act = getattr(expert, "expert_act", None)
    if act is None:
        return None
    make_params = getattr(expert, "default_params", None) or getattr(expert, "default_config", None)
    if make_params is None:
        return None
    # envs.g1.kinematics caches the arm chain on first use; fill that cache outside any jit trace (filled
    # inside one, it would hold tracers that leak into the next compilation).
    if importlib.util.find_spec("envs.g1.kinematics") is not None:
        from envs.g1 import kinematics

        if hasattr(kinematics, "right_arm_chain"):
            kinematics.right_arm_chain()
    return act, make_params()


def _bench_mjx(env, reset1, batch: int, steps: int, action, expert=None) -> tuple[float, float]:
    """Returns (compile seconds, env control steps/s) of jit(vmap(env.step)) on ``batch`` envs.

    With ``expert`` = (act, params), the expert is queried every ``TA`` steps (its time is included)."""
    import jax
    import jax.numpy as jnp

    from recap_jax.models.tokenizer import ByteTokenizer

    state = _batched_states(reset1, batch)
    step = jax.jit(jax.vmap(env.step))
    if expert is None:
        actions = jnp.broadcast_to(action, (batch, action.shape[-1]))
        chunk_fn = None
    else:
        act, params = expert
        ids, _ = ByteTokenizer().encode(["bend to pick up the cracker box"] * batch)
        prompt_ids = jnp.asarray(ids, jnp.int32)
        chunk_fn = jax.jit(lambda obs, key: act(params, obs, prompt_ids, key))
    t0 = time.perf_counter()
    if chunk_fn is not None:
        chunk = jax.block_until_ready(chunk_fn(state.obs, jax.random.PRNGKey(0)))
        actions = chunk[:, 0]
    state = jax.block_until_ready(step(state, actions))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k in range(steps):
        if chunk_fn is not None:
            if k % TA == 0:
                chunk = chunk_fn(state.obs, jax.random.PRNGKey(k))
            actions = chunk[:, k % TA]
        state = step(state, actions)
    jax.block_until_ready(state)
    return compile_s, batch * steps / (time.perf_counter() - t0)


def _bench_c_single(env, state, ctrl, steps: int) -> float:
    """C MuJoCo ``mj_step`` on one env: physics steps/s."""
    import mujoco
    from mujoco import mjx

    d = mjx.get_data(env.mj_model, state.data)
    n = env.config.substeps
    t0 = time.perf_counter()
    for _ in range(steps):
        d.ctrl[:] = ctrl
        for _ in range(n):
            mujoco.mj_step(env.mj_model, d)
    return steps * n / (time.perf_counter() - t0)


def _bench_c_batch(env, state, ctrl, batch: int, steps: int) -> float:
    """MuJoCo 4 ``mujoco.batch.Batch`` (all cores): physics steps/s."""
    import mujoco.batch
    import numpy as np
    from mujoco import mjx

    d = mjx.get_data(env.mj_model, state.data)
    sims = mujoco.batch.Batch(env.mj_model, nsim=batch, nthread=0)
    sims.reset()
    for name in ("qpos", "qvel", "mocap_pos", "mocap_quat"):
        sims.bind(name)[:] = getattr(d, name)
    sims.bind("ctrl")[:] = np.broadcast_to(ctrl, (batch, ctrl.shape[0]))
    sims.forward()
    n = env.config.substeps
    sims.step(nstep=n)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        sims.step(nstep=n)
    rate = batch * steps * n / (time.perf_counter() - t0)
    if not np.all(np.isfinite(sims.bind("qpos"))):
        raise RuntimeError("mujoco.batch.Batch produced non-finite states")
    return rate


SWEEP = (("NEWTON", 4, 8), ("NEWTON", 3, 5), ("NEWTON", 2, 4), ("CG", 4, 8))


def _solver_sweep(env, state0, batch: int, steps: int = 5) -> list[list[object]]:
    """Physics steps/s of MJX (jit(vmap(scan of 10 mjx.step))) and C mj_step for each solver setting."""
    import jax
    import jax.numpy as jnp
    import mujoco
    import numpy as np
    from mujoco import mjx

    d0 = mjx.get_data(env.mj_model, state0.data)
    n = env.config.substeps
    rows = []
    for solver, iters, ls in SWEEP:
        m = env._build_mj_model(env.config)
        m.opt.solver = getattr(mujoco.mjtSolver, f"mjSOL_{solver}")
        m.opt.iterations, m.opt.ls_iterations = iters, ls
        mx = mjx.put_model(m, impl="jax")
        data = jax.tree.map(lambda x: jnp.broadcast_to(x, (batch, *x.shape)), mjx.put_data(m, d0))

        def control_step(d, mx=mx):
            return jax.lax.scan(lambda d, _: (mjx.step(mx, d), None), d, None, length=n)[0]

        fn = jax.jit(jax.vmap(control_step))
        data = jax.block_until_ready(fn(data))
        t0 = time.perf_counter()
        for _ in range(steps):
            data = fn(data)
        jax.block_until_ready(data)
        mjx_rate = batch * steps * n / (time.perf_counter() - t0)
        dc = mujoco.MjData(m)
        for name in ("qpos", "qvel", "ctrl", "mocap_pos", "mocap_quat"):
            getattr(dc, name)[:] = getattr(d0, name)
        t0 = time.perf_counter()
        for _ in range(100 * n):
            mujoco.mj_step(m, dc)
        c_rate = 100 * n / (time.perf_counter() - t0)
        pelvis_z = float(np.asarray(data.qpos)[0, 2])
        rows.append([f"{solver} {iters}/{ls}", batch, f"{mjx_rate:,.0f}", f"{c_rate:,.0f}", f"{pelvis_z:.3f}"])
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    args = _parse()
    if not args.gpu:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import numpy as np

    import envs
    from benchmarks._results import machine_description, markdown_table, write_section

    _platform.enable_compilation_cache()
    if args.gpu and jax.default_backend() != "gpu":
        raise SystemExit("--gpu given but JAX has no GPU backend here")
    batches = [int(b) for b in args.batch_sizes.split(",") if b]
    env = envs.make("G1BendPick-v0")
    substeps = env.config.substeps
    expert = _expert_policy()
    policy = (
        "scripted expert (envs.g1.expert.expert_act, queried every 24 steps)"
        if expert
        else ("hold targets (no envs/g1/expert.py with expert_act yet)")
    )
    action = env.default_action
    reset1 = jax.jit(env.reset)
    t0 = time.perf_counter()
    state0 = jax.block_until_ready(reset1(jax.random.PRNGKey(0)))
    reset_compile = time.perf_counter() - t0
    ctrl = np.asarray(env._ctrl(state0.data, action), np.float64)

    backend = "GPU" if args.gpu else "CPU"
    rows = []
    for b in batches:
        compile_s, ctrl_rate = _bench_mjx(env, reset1, b, args.steps, action, expert)
        rows.append([f"MJX-JAX {backend}", b, f"{ctrl_rate:,.0f}", f"{ctrl_rate * substeps:,.0f}", f"{compile_s:.0f}"])
        print(rows[-1], flush=True)
    if not args.gpu:
        rows.append(["MJX-JAX GPU", "-", "pending (no GPU in this session)", "-", "-"])
    c1 = _bench_c_single(env, state0, ctrl, args.c_steps)
    rows.append(["C MuJoCo mj_step (1 thread)", 1, f"{c1 / substeps:,.0f}", f"{c1:,.0f}", "-"])
    print(rows[-1], flush=True)
    for b in batches:
        if b < 2:
            continue
        steps = max(5, args.c_steps // b)
        cb = _bench_c_batch(env, state0, ctrl, b, steps)
        rows.append([f"C MuJoCo batch.Batch ({os.cpu_count()} threads)", b, f"{cb / substeps:,.0f}", f"{cb:,.0f}", "-"])
        print(rows[-1], flush=True)

    m = env.mj_model
    ncand = int(np.asarray(state0.data._impl.contact.dist).shape[0])
    body = "\n".join(
        [
            f"Machine: {machine_description()}; load average {os.getloadavg()[0]:.1f} at the end of the run "
            "(other jobs share these cores: absolute rates are low, compare rows of one run).",
            "",
            f"Model: G1 + Dex3 BendPick, {m.ngeom} geoms ({int(((m.geom_contype | m.geom_conaffinity) > 0).sum())} "
            f"colliding), {ncand} MJX contact slots, solver {mujoco_solver(m)}, dt {m.opt.timestep}, "
            f"{substeps} substeps per 50 Hz control step. MJX action: {policy}; the C MuJoCo rows hold the "
            "stand controls. Single-env reset compile "
            f"{reset_compile:.0f} s (includes 60 stand steps).",
            "",
            markdown_table(
                ["engine", "envs", "env control steps/s (all envs)", "physics steps/s (all envs)", "compile s"], rows
            ),
        ]
    )
    print(body)
    if not args.no_write:
        write_section("env_throughput", body)
    if args.solver_sweep:
        sweep = _solver_sweep(env, state0, max(batches))
        sweep_body = "\n".join(
            [
                f"Machine: {machine_description()}; load average {os.getloadavg()[0]:.1f} (shared cores: noisy).",
                "",
                "Bare physics (no System-0/obs), hold controls, from a stabilised stand; pelvis z after the MJX run.",
                "",
                markdown_table(
                    [
                        "solver iters/line-search",
                        "envs",
                        "MJX physics steps/s",
                        "C mj_step physics steps/s",
                        "pelvis z",
                    ],
                    sweep,
                ),
            ]
        )
        print(sweep_body)
        if not args.no_write:
            write_section("env_solver_sweep", sweep_body)


def mujoco_solver(m) -> str:
    """A short description of the solver options."""
    import mujoco

    return (
        f"{mujoco.mjtSolver(m.opt.solver).name.removeprefix('mjSOL_')} "
        f"{m.opt.iterations} iterations / {m.opt.ls_iterations} line-search, "
        f"{mujoco.mjtIntegrator(m.opt.integrator).name.removeprefix('mjINT_')}"
    )


if __name__ == "__main__":
    main()
