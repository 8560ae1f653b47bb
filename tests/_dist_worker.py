"""One process of the two-process ``jax.distributed`` test (run by tests/test_distributed.py).

python tests/_dist_worker.py PORT PROCESS_ID OUT_JSON
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from recap_jax.train import distributed


def main() -> None:
    port, pid, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid, initialization_timeout=60)

    import jax
    import jax.numpy as jnp
    from _helpers_train import init_tiny, make_episode, tiny_policy_loss

    from recap_jax.data import LoaderConfig, WindowLoader
    from recap_jax.train import (
        Checkpointer,
        OptimizerConfig,
        TrainState,
        init_or_restore,
        jit_train_step,
        make_mesh,
        make_optimizer,
        make_train_step,
        replicated,
    )

    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    mesh = make_mesh(fsdp=2)
    tx = make_optimizer(OptimizerConfig.psi0(total_steps=10, warmup_steps=0, lr=1e-2))

    def init(key):
        return TrainState.create(init_tiny(key, 36), tx, jax.random.PRNGKey(1))

    state, shardings, _ = init_or_restore(init, mesh, jax.random.PRNGKey(0), min_size_bytes=1024)
    episodes = [make_episode(i, n_steps=40) for i in range(4)]
    loader = WindowLoader(episodes, LoaderConfig(batch_size=8, seed=2), mesh=mesh, prefetch=0)
    batch = next(loader)  # this process's 4 rows, assembled into the global 8-row batch
    assert batch["state"].shape == (8, 32) and loader.local_batch_size == 4
    state, metrics = jit_train_step(make_train_step(tiny_policy_loss, tx), shardings, mesh)(state, batch)
    sq = jax.jit(lambda p: sum(jnp.sum(x**2) for x in jax.tree.leaves(p)), out_shardings=replicated(mesh))
    result = {
        "process": jax.process_index(),
        "loss": float(metrics["loss"]),
        "grad_norm": float(metrics["grad_norm"]),
        "param_sq": float(sq(state.params.state)),
        "sharded": "fsdp" in state.params.state["l2"]["kernel"][...].sharding.spec,
    }
    # Both processes save their shards of one checkpoint together and restore it (orbax, multi-host).
    ckpt = Checkpointer(os.path.join(os.path.dirname(out), "ckpt"), async_save=True)
    ckpt.save(state, loader_state=loader.state_dict(), assets={"note": "two-process"})
    ckpt.wait()
    restored, position = ckpt.restore(state)
    ckpt.close()
    result["restored_param_sq"] = float(sq(restored.params.state))
    result["restored_position"] = position
    with open(out, "w") as f:
        json.dump(result, f)
    distributed.shutdown()


if __name__ == "__main__":
    main()
