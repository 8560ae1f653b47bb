"""G1BendPick-v0 throughput: MJX (jit(vmap(env.step))) at several batch sizes beside C MuJoCo on the same model.

    python -m benchmarks.env_throughput                       # CPU rows, writes benchmarks/RESULTS.md
    python -m benchmarks.env_throughput --gpu --batch-sizes 1024,4096
    python -m benchmarks.env_throughput --gpu --batch-sizes 4096 --steps 24 --budget-s 170 \
        --solvers newton:4:8,newton:4:4,newton:3:6,newton:3:4   # solver sweep: env_solver_sweep_gpu

Rows: MJX control steps/s and physics steps/s (= control x substeps) per batch size; C MuJoCo single env
(``mj_step``); MuJoCo 4's multi-threaded ``mujoco.batch.Batch`` on all cores at the same batch sizes. The
study's config (``envs.make("G1BendPick-v0")``); the action is the scripted expert's when
``envs.g1.expert`` provides ``expert_act``, otherwise the 'hold' action (default arm/hand targets and
the nominal stand command), as the table says. Compile time is reported separately, not counted.

Solver sweep (``--solvers solver:iterations:ls_iterations,...``): the same MJX measurement (expert acting)
for each physics config (``envs.g1.bendpick.parse_physics``: the env overrides ``solver``,
``solver_iterations``, ``ls_iterations`` and ``eulerdamp``, from an optional ``:eulerdamp``/``:noeulerdamp``) at each
batch size, and nothing else. One single-env reset (the default config) and one expert compile per batch
size serve every config; each config's ``jit(vmap(env.step))`` is compiled ahead of time (``--compile-workers``
> 1 compiles them concurrently in threads). ``--budget-s`` bounds the whole run: configs go in order and
the sweep stops before one whose estimated compile + measurement would not fit. The section
(``env_solver_sweep_<backend>``, ``_triton`` appended when ``XLA_FLAGS`` has
``--xla_gpu_triton_gemm_any=True``) is rewritten after every measured row, so a run killed from outside
keeps its rows. Which configs keep the task working is measured by ``benchmarks.solver_validation``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import os
import sys
import time

T_PROCESS = time.perf_counter()  # the solver sweep's --budget-s counts from here (imports included)

from recap_jax import _platform  # noqa: E402  (first: XLA flags before JAX)

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
    p.add_argument(
        "--solvers",
        default="",
        help="solver sweep mode: comma-separated solver:iterations:ls_iterations[:eulerdamp|:noeulerdamp], "
        "e.g. newton:4:8,cg:2:4:noeulerdamp",
    )
    p.add_argument("--budget-s", type=float, default=0.0, help="solver sweep: total time budget (0 = none)")
    p.add_argument("--compile-workers", type=int, default=4, help="solver sweep: concurrent compile threads")
    p.add_argument(
        "--compile-deadline-s",
        type=float,
        default=0.0,
        help="solver sweep: stop waiting for compiles at this time from process start (default 0.6 x budget)",
    )
    p.add_argument("--section", default="", help="solver sweep: RESULTS.md section (default by backend/flags)")
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


TRITON_FLAG = "--xla_gpu_triton_gemm_any=True"


def parse_solvers(text: str) -> list:
    """``"newton:4:8,cg:2:4,newton:4:8:noeulerdamp"`` -> ``envs.g1.bendpick.Physics`` list (one parser)."""
    from benchmarks.solver_validation import parse_configs

    try:
        return parse_configs(text)
    except ValueError as e:
        raise SystemExit(f"--solvers: {e}") from None


def _solver_sweep_expert(args: argparse.Namespace) -> None:
    """``--solvers`` mode: MJX physics steps/s with the expert acting, per solver config and batch size.

    Phase 1 traces every program in this thread (reset, the expert per batch size, each config's step per
    batch size) and hands each to a pool of ``--compile-workers`` threads to compile as soon as it is traced.
    Phase 2 waits for the compiles until ``--compile-deadline-s`` (a compile still running then is left
    behind and its config not measured; GPU autotuning would disturb the timings, so nothing is measured
    while compiles run unless the deadline passed). Phase 3 measures the compiled configs in order, each
    only if the largest measurement so far still fits in ``--budget-s``.
    """
    import jax
    import jax.numpy as jnp

    import envs
    from benchmarks._results import write_section
    from recap_jax.models.tokenizer import ByteTokenizer

    t_start = T_PROCESS
    budget = float(args.budget_s) or float("inf")
    deadline = float(args.compile_deadline_s) or (0.6 * budget if budget < float("inf") else float("inf"))
    configs = parse_solvers(args.solvers)
    batches = [int(b) for b in args.batch_sizes.split(",") if b]
    triton = TRITON_FLAG in os.environ.get("XLA_FLAGS", "")
    backend = jax.default_backend().upper()
    section = args.section or f"env_solver_sweep_{backend.lower()}" + ("_triton" if triton else "")
    envs_by_config = {
        c: envs.make("G1BendPick-v0", **c.overrides()) for c in configs
    }  # a bad config fails here, before any compile
    base = envs.make("G1BendPick-v0")  # stands come from the default config's reset (one compile for all)
    expert = _expert_policy()
    if expert is None:
        raise SystemExit("--solvers needs envs.g1.expert.expert_act (the sweep measures the expert acting)")
    act, params = expert

    def elapsed() -> float:
        return time.perf_counter() - t_start

    pool = concurrent.futures.ThreadPoolExecutor(max(1, args.compile_workers))
    timings: dict[str, float] = {}

    def submit(name, lowered):
        def work():
            t0 = time.perf_counter()
            out = lowered.compile()
            timings[name] = time.perf_counter() - t0
            return out

        return pool.submit(work)

    # Phase 1: trace here, compile in the pool.
    key0 = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    reset_j = jax.jit(base.reset)
    reset_fut = submit("reset", reset_j.lower(key0))
    abstract = {b: jax.eval_shape(lambda b=b: _batched_states(reset_j, b)) for b in batches}
    timings["trace reset"] = time.perf_counter() - t0
    prompts, expert_futs = {}, {}
    for b in batches:
        ids, _ = ByteTokenizer().encode(["bend to pick up the cracker box"] * b)
        prompts[b] = jnp.asarray(ids, jnp.int32)
        fn = jax.jit(lambda obs, key, prompt_ids: act(params, obs, prompt_ids, key))
        expert_futs[b] = submit(f"expert {b}", fn.lower(abstract[b].obs, key0, prompts[b]))
    items = [(c, b) for c in configs for b in batches]
    step_futs, trace_s = {}, {}
    for item in items:
        c, b = item
        t0 = time.perf_counter()
        actions = jax.ShapeDtypeStruct((b, base.action_size), jnp.float32)
        lowered = jax.jit(jax.vmap(envs_by_config[c].step)).lower(abstract[b], actions)
        trace_s[item] = time.perf_counter() - t0
        step_futs[item] = submit(item, lowered)
    traced_at = elapsed()
    print(f"traced everything at {traced_at:.0f} s", flush=True)

    # Phase 2: wait for the compiles (reset and expert first: nothing runs without them).
    all_futs = [reset_fut, *expert_futs.values(), *step_futs.values()]
    concurrent.futures.wait(all_futs, timeout=None if deadline == float("inf") else max(0.0, deadline - elapsed()))
    compiled_at = elapsed()
    print(
        f"compile phase ended at {compiled_at:.0f} s: {sum(f.done() for f in all_futs)}/{len(all_futs)} done",
        flush=True,
    )

    rows: list[list[object]] = []
    notes: list[str] = []
    if not (reset_fut.done() and all(f.done() for f in expert_futs.values())):
        notes.append(f"the reset/expert compiles did not finish by the compile deadline ({deadline:.0f} s)")
    else:
        reset_c = reset_fut.result()
        singles = [reset_c(jax.random.PRNGKey(i)) for i in range(4)]
        stacked = jax.tree.map(lambda *x: jnp.stack(x), *singles)
        est = None
        for idx, item in enumerate(items):
            config, b = item
            name = f"{config.label()} x{b}"
            if not step_futs[item].done():
                notes.append(f"{name}: compile not finished by the compile deadline ({deadline:.0f} s)")
                continue
            if step_futs[item].exception() is not None:
                notes.append(f"{name}: compile failed: {step_futs[item].exception()!r}"[:300])
                continue
            if est is not None and elapsed() + est > budget:
                notes.append(
                    f"stopped at {elapsed():.0f} s (budget {budget:.0f} s, ~{est:.0f} s per measurement); "
                    "not measured: " + ", ".join(f"{c.label()} x{bb}" for c, bb in items[idx:])
                )
                break
            t_measure = time.perf_counter()
            running = sum(not f.done() for f in all_futs)
            step_c, expert_c = step_futs[item].result(), expert_futs[b].result()
            reps = -(-b // 4)
            state = jax.tree.map(lambda x, b=b, reps=reps: jnp.concatenate([x] * reps)[:b], stacked)
            chunk = expert_c(state.obs, key0, prompts[b])
            state = jax.block_until_ready(step_c(state, chunk[:, 0]))  # warm-up (first run, allocation)
            t0 = time.perf_counter()
            for k in range(args.steps):
                if k % TA == 0:
                    chunk = expert_c(state.obs, jax.random.PRNGKey(k), prompts[b])
                state = step_c(state, chunk[:, k % TA])
            jax.block_until_ready(state)
            ctrl_rate = b * args.steps / (time.perf_counter() - t0)
            est = max(est or 0.0, time.perf_counter() - t_measure)
            finite = bool(jnp.all(jnp.isfinite(state.data.qpos)))
            rows.append(
                [
                    config.label(),
                    b,
                    f"{ctrl_rate:,.0f}",
                    f"{ctrl_rate * envs_by_config[item[0]].config.substeps:,.0f}",
                    f"{trace_s[item]:.0f} + {timings.get(item, float('nan')):.0f}",
                    f"{float(jnp.mean(state.done)):.2f}" + ("" if finite else " (non-finite qpos)"),
                    running,
                ]
            )
            print(rows[-1], f"[{elapsed():.0f} s]", flush=True)
            if not args.no_write:
                write_section(section, _sweep_body(args, rows, notes, triton, timings, traced_at, compiled_at, None))
    total = elapsed()
    body = _sweep_body(args, rows, notes, triton, timings, traced_at, compiled_at, total)
    print(body, flush=True)
    if not args.no_write and rows:
        write_section(section, body)
    pool.shutdown(wait=False, cancel_futures=True)
    if any(not f.done() for f in all_futs):  # a left-behind compile would hold the interpreter's exit
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _sweep_body(args, rows, notes, triton, timings, traced_at, compiled_at, total) -> str:
    from benchmarks._results import machine_description, markdown_table

    flags = os.environ.get("XLA_FLAGS", "").strip() or "(empty)"
    run = f"{total:.0f} s in all" if total is not None else "run in progress (rewritten after each row)"
    setup = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items() if isinstance(k, str))
    return "\n".join(
        [
            f"Machine: {machine_description()}; load average {os.getloadavg()[0]:.1f}.",
            "",
            f"XLA_FLAGS: `{flags}` (`{TRITON_FLAG}`: {'yes' if triton else 'no'}). MJX physics with the scripted "
            f"expert acting (envs.g1.expert.expert_act, queried every {TA} control steps, its time included), "
            f"{args.steps} timed control steps per row after one warm-up step, from stabilised stands (the default "
            f"config's reset). "
            + (f"Budget {args.budget_s:.0f} s from process start, " if args.budget_s else "No time budget, ")
            + f"{run}; every program "
            f"traced by {traced_at:.0f} s and compiled in {args.compile_workers} concurrent threads (compile s "
            f"overlap), compile phase over at {compiled_at:.0f} s ({setup}). 'compiles running' counts compiles "
            "still running (left behind at the deadline) while a row was measured; done = fraction of envs done at "
            "the end (~0: the expert lifts at ~170 steps). Whether a config keeps the task working: "
            "`env_solver_validation`.",
            "",
            markdown_table(
                [
                    "solver iters/line-search",
                    "envs",
                    "env control steps/s (all envs)",
                    "physics steps/s (all envs)",
                    "trace + compile s",
                    "done",
                    "compiles running",
                ],
                rows,
            ),
        ]
        + (["", *notes] if notes else [])
    )


def main() -> None:
    args = _parse()
    if not args.gpu:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import numpy as np

    import envs
    from benchmarks._results import machine_description, markdown_table, write_section
    from envs.g1.bendpick import describe_physics

    _platform.enable_compilation_cache()
    if args.gpu and jax.default_backend() != "gpu":
        raise SystemExit("--gpu given but JAX has no GPU backend here")
    if args.solvers:
        _solver_sweep_expert(args)
        return
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
            f"colliding), {ncand} MJX contact slots, solver {describe_physics(m)}, dt {m.opt.timestep}, "
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


if __name__ == "__main__":
    main()
