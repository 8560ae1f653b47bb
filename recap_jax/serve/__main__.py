"""``python -m recap_jax.serve``: serve a study run's policy (or ``--random-init``) over SIMPLE's protocol."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

POLICY_CONDITIONS = {"recap": "recap_high", "bc_all": "bc_all", "sft": "sft_final"}


def load_params(args):
    """PolicyParams for the CLI: a study run's trained policy (``--run-dir``, ``--policy``, ``--step``), or the
    smoke preset's untrained one (``--random-init``). The run directory is only read: a missing
    ``config.json``, policy run or checkpoint step is a ``ValueError`` naming the path."""
    import jax

    from experiments import common, glue
    from experiments.evaluate import condition_spec
    from recap_jax import policy

    if args.random_init:
        from experiments.presets import get_preset

        return policy.init_policy(glue.policy_config(get_preset("smoke")), jax.random.key(args.seed))
    if args.run_dir is None:
        raise ValueError("need --run-dir RUN or --random-init")
    out = Path(args.run_dir)
    cfg = common.read_config(out)
    spec = condition_spec(cfg, out, POLICY_CONDITIONS[args.policy])
    ckpts = out / spec["dir"] / "checkpoints"
    steps = sorted(int(d.name) for d in ckpts.iterdir() if d.name.isdigit()) if ckpts.is_dir() else []
    if not steps:
        raise ValueError(f"{ckpts}: no checkpoints (has the {args.policy!r} policy of this run been trained?)")
    step = args.step if args.step is not None else (spec["step"] if spec["step"] is not None else steps[-1])
    if step not in steps:
        raise ValueError(f"{ckpts}: no step {step} (have {steps})")
    return glue.load_policy(out / spec["dir"], glue.policy_config(cfg, spec["dropout"]), step)


def build_server(args):
    """The ``SimpleServer`` the CLI serves (``--rtc psi0`` sets the policy's ``rtc`` to Ψ0's sampler)."""
    from recap_jax import policy
    from recap_jax.serve.server import SimpleServer

    params = load_params(args)
    if args.rtc == "psi0" and params.config.rtc != "psi0":
        params = policy.replace_config(params, rtc="psi0")
    adv = args.advantage or ("high" if (args.policy == "recap" and not args.random_init) else "none")
    return SimpleServer(
        params,
        advantage=None if adv == "none" else adv,
        rtc=args.rtc == "psi0",
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        seed=args.seed,
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m recap_jax.serve", description=__doc__)
    p.add_argument("--run-dir")
    p.add_argument("--policy", choices=("recap", "bc_all", "sft"), default="recap")
    p.add_argument("--step", type=int)
    p.add_argument("--random-init", action="store_true")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=22085)
    p.add_argument("--advantage", choices=("high", "low", "none"))
    p.add_argument("--rtc", choices=("psi0", "off"), default="psi0")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-warmup", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    import uvicorn

    from recap_jax.serve.server import build_app

    try:
        server = build_server(args)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from e
    if not args.no_warmup:
        server.warmup()
    uvicorn.run(build_app(server), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
