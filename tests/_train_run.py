"""A complete small training script (the shape a stage script takes), run as a subprocess by the tests.

    python tests/_train_run.py STORE RUN_DIR --steps 12 --save-every 3 [--kill-at 7] [--fsdp 2]

Writes every step's loss to RUN_DIR/log-<pid>/metrics.jsonl. ``--kill-at S`` sends SIGKILL to itself
right after step S, while the asynchronous save of an earlier step may still be in flight.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
from _helpers_train import init_tiny, tiny_policy_loss

from recap_jax.data import EpisodeStore, LoaderConfig, WindowLoader, norm_stats
from recap_jax.train import (
    Checkpointer,
    LoopConfig,
    MetricWriter,
    OptimizerConfig,
    TrainState,
    init_or_restore,
    initialize,
    jit_train_step,
    learning_rate_schedule,
    make_assets,
    make_mesh,
    make_optimizer,
    make_train_step,
    train,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("run")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--save-every", type=int, default=3)
    ap.add_argument("--kill-at", type=int, default=0)
    ap.add_argument("--fsdp", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()

    initialize()  # no-op for one process; joins a job when RECAP_COORDINATOR_ADDRESS etc. are set
    store = EpisodeStore(args.store)
    mesh = make_mesh(fsdp=args.fsdp)
    ocfg = OptimizerConfig.psi0(total_steps=args.steps, warmup_steps=2, lr=3e-3)
    tx = make_optimizer(ocfg)

    def init(key):
        k_params, k_rng = jax.random.split(key)
        return TrainState.create(init_tiny(k_params, 36), tx, k_rng)

    ckpt = Checkpointer(args.run, max_to_keep=2)
    state, shardings, position = init_or_restore(init, mesh, jax.random.PRNGKey(0), ckpt, min_size_bytes=1024)
    loader = WindowLoader(store, LoaderConfig(batch_size=args.batch, seed=11), mesh=mesh, prefetch=2)
    if position:
        loader.load_state_dict(position)
    print(f"start step {int(state.step)} loader {loader.state_dict()}", flush=True)
    step_fn = jit_train_step(
        make_train_step(tiny_policy_loss, tx, lr_schedule=learning_rate_schedule(ocfg)), shardings, mesh
    )

    def maybe_kill(step, _metrics):
        if step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    assets = make_assets(norm_stats(store), config=ocfg, preset="test", seed=0)
    with MetricWriter(os.path.join(args.run, f"log-{os.getpid()}"), tensorboard=False) as writer, loader:
        train(
            state,
            step_fn,
            loader,
            LoopConfig(num_steps=args.steps, log_every=1, save_every=args.save_every, progress=False),
            checkpointer=ckpt,
            writer=writer,
            assets=assets,
            callbacks=(maybe_kill,),
        )
    ckpt.close()


if __name__ == "__main__":
    main()
