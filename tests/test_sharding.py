"""On 8 CPU devices: the FSDP rule, sharded init, and sharded step == single-device step (policy + value)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers_train import make_episode
from jax.sharding import PartitionSpec as P

from recap_jax import policy as pol
from recap_jax import value as value_math
from recap_jax.data import LoaderConfig, WindowLoader
from recap_jax.models import value_net
from recap_jax.train import (
    OptimizerConfig,
    TrainState,
    fsdp_spec,
    init_sharded,
    jit_train_step,
    make_mesh,
    make_optimizer,
    make_train_step,
    put_batch,
)

MIN_BYTES = 4096


def test_mesh_and_rule():
    mesh = make_mesh(fsdp=4)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
    assert fsdp_spec((1024,), 4, mesh, 0) == P()  # rank 1: replicated
    assert fsdp_spec((8, 8), 4, mesh, MIN_BYTES) == P()  # small: replicated
    assert fsdp_spec((30, 99), 4, mesh, 0) == P()  # nothing divisible by 4
    assert fsdp_spec((64, 256), 4, mesh, 0) == P(None, "fsdp")  # largest divisible dim
    assert fsdp_spec((3, 12, 8), 4, mesh, 0) == P(None, "fsdp", None)
    assert fsdp_spec((64, 256), 4, make_mesh(fsdp=1), 0) == P()
    with pytest.raises(ValueError, match="fsdp=3 must be a positive divisor of the device count 8"):
        make_mesh(fsdp=3)


def _policy_setup():
    cfg = pol.PolicyConfig(image_size=(32, 32), prompt_max_len=64)
    eps = [make_episode(i, n_steps=45, stride=6, image_hw=(32, 32)) for i in range(4)]
    batch = WindowLoader(eps, LoaderConfig(batch_size=16, seed=0), prefetch=0).host_batch(0, 0)
    init_params = lambda key: pol.init_policy(cfg, key)
    return init_params, pol.policy_loss, batch, pol.trainable_mask, OptimizerConfig.psi0(100, warmup_steps=1, eps=1.0)


def _value_setup():
    """The paper's 201-bin value MLP over (here: pixel) features + state, trained with the categorical CE."""
    eps = [make_episode(i, n_steps=45, stride=6, image_hw=(4, 4)) for i in range(4)]
    rets = {e.episode_id: -np.linspace(0.1, 0.9, e.image_steps.size, dtype=np.float32) for e in eps}
    loader = WindowLoader(
        eps, LoaderConfig(batch_size=16, return_annotation="return"), prefetch=0, annotations={"return": rets}
    )
    batch = loader.host_batch(0, 0)

    def init_params(key):
        return value_net.init_value_params(key, "features", feature_dim=48)

    def loss_fn(params, batch, key):
        feats = batch["image"].reshape(batch["image"].shape[0], -1).astype(jnp.float32) / 255.0
        logits = value_net.value_logits(params, feats, batch["state"])
        loss = value_math.categorical_loss(logits, batch["return"], reduction="mean")
        return loss, {"value_mae": jnp.mean(jnp.abs(value_math.expected_value(logits) - batch["return"]))}

    return init_params, loss_fn, batch, None, OptimizerConfig.value(warmup_steps=1, eps=1.0)


@pytest.mark.parametrize("setup", [_policy_setup, _value_setup], ids=["policy", "value"])
def test_sharded_step_matches_single_device(setup):
    init_params, loss_fn, batch, mask, ocfg = setup()
    tx = make_optimizer(ocfg)  # eps = 1: updates ~ lr * grad, so float noise in tiny gradients stays tiny

    def init(key):
        return TrainState.create(init_params(key), tx, jax.random.PRNGKey(7), mask=mask)

    step = make_train_step(loss_fn, tx)
    key = jax.random.PRNGKey(0)
    mesh = make_mesh(fsdp=4)
    state, shardings = init_sharded(init, mesh, key, min_size_bytes=MIN_BYTES)
    sharded_step = jit_train_step(step, shardings, mesh)
    # The single-device reference starts from the same values (copied before the sharded step donates them).
    single = jax.device_put(jax.device_get(state), jax.devices()[0])
    single_step = jax.jit(step)

    # The rule is applied: big matrices (and their Adam moments) are split over fsdp, the rest replicated.
    n_sharded = 0
    for path, x in jax.tree_util.tree_flatten_with_path((state.params, state.opt_state))[0]:
        want = fsdp_spec(x.shape, x.dtype.itemsize, mesh, MIN_BYTES) if x.dtype != jnp.uint32 else P()
        assert x.sharding.spec == want, jax.tree_util.keystr(path)
        if "fsdp" in want:
            axis = list(want).index("fsdp")
            assert x.addressable_shards[0].data.shape[axis] == x.shape[axis] // 4
            n_sharded += 1
    assert n_sharded >= 2

    for i in range(2):
        b = dict(batch, state=batch["state"] + i)
        state, m = sharded_step(state, put_batch(b, mesh))
        single, ms = single_step(single, b)
        np.testing.assert_allclose(float(m["loss"]), float(ms["loss"]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(m["grad_norm"]), float(ms["grad_norm"]), rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(single.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert int(state.step) == 2
