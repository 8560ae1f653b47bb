"""Two processes on localhost run one jax.distributed training step together and agree (with a 1-process run)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from _helpers_train import init_tiny, make_episode, tiny_policy_loss

from recap_jax.data import LoaderConfig, WindowLoader
from recap_jax.train import OptimizerConfig, TrainState, make_optimizer, make_train_step

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_step_agrees(tmp_path):
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2 --xla_cpu_enable_concurrency_optimized_scheduler=false"
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "_dist_worker.py"), str(port), str(i), str(tmp_path / f"out{i}.json")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        logs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    r0, r1 = (json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2))
    assert (r0["process"], r1["process"]) == (0, 1) and r0["sharded"] and r1["sharded"]
    for k in ("loss", "grad_norm", "param_sq", "restored_param_sq", "restored_position"):
        assert r0[k] == r1[k], k
    assert r0["restored_param_sq"] == r0["param_sq"]
    assert r0["restored_position"] == {"epoch": 0, "step": 1, "seed": 2, "num_windows": 20}

    # The same global batch and init on one process give the same step.
    tx = make_optimizer(OptimizerConfig.psi0(total_steps=10, warmup_steps=0, lr=1e-2))
    state = TrainState.create(init_tiny(jax.random.PRNGKey(0), 36), tx, jax.random.PRNGKey(1))
    episodes = [make_episode(i, n_steps=40) for i in range(4)]
    batch = WindowLoader(episodes, LoaderConfig(batch_size=8, seed=2), process_index=0, process_count=1).host_batch(
        0, 0
    )
    state, m = jax.jit(make_train_step(tiny_policy_loss, tx))(state, batch)
    assert r0["loss"] == pytest.approx(float(m["loss"]), rel=1e-5)
    assert r0["grad_norm"] == pytest.approx(float(m["grad_norm"]), rel=1e-4)
    ref_sq = float(sum(jnp.sum(x**2) for x in jax.tree.leaves(state.params.state)))
    assert r0["param_sq"] == pytest.approx(ref_sq, rel=1e-5)
