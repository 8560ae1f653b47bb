"""``python -m recap_jax.serve``: serve a study run's policy (or ``--random-init``) over SIMPLE's protocol."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def load_params(args):
    """PolicyParams for the CLI: a study run's trained policy, or the smoke preset's untrained one."""
    import jax

    from experiments import common, glue
    from experiments.evaluate import condition_spec
    from recap_jax import policy

    if args.random_init:
        from experiments.presets import get_preset

        return policy.init_policy(glue.policy_config(get_preset("smoke")), jax.random.key(args.seed))
    if args.run_dir is None:
        raise SystemExit("need --run-dir RUN or --random-init")
    out = Path(args.run_dir)
    cfg = common.load_or_init_config(out, None)
    cond = {"recap": "recap_high", "bc_all": "bc_all", "sft": "sft_final"}[args.policy]
    spec = condition_spec(cfg, out, cond)
    step = args.step if args.step is not None else spec["step"]
    return glue.load_policy(out / spec["dir"], glue.policy_config(cfg, spec["dropout"]), step)


def main(argv=None) -> None:
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
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    import uvicorn

    from recap_jax.serve.server import SimpleServer, build_app

    params = load_params(args)
    adv = args.advantage or ("high" if (args.policy == "recap" and not args.random_init) else "none")
    server = SimpleServer(
        params,
        advantage=None if adv == "none" else adv,
        rtc=args.rtc == "psi0",
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        seed=args.seed,
    )
    if not args.no_warmup:
        server.warmup()
    uvicorn.run(build_app(server), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
