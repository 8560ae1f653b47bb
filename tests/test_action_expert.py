"""Action expert: sizes, shapes, masks, per-token time, dropout, dtype and gradients."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recap_jax.models import action_expert as ae
from recap_jax.models import layers

CFG = ae.get_config("tiny")
B, N = 2, 5


def _perturbed(cfg=CFG, seed=0):
    """An expert moved off its adaLN-Zero / zero-head init (every weight + N(0, 0.05)), built in one jit."""
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: ae.ActionExpert(cfg, nnx.Rngs(params=0))))

    @jax.jit
    def init(key):
        leaves, tree = jax.tree.flatten(nnx.state(ae.ActionExpert(cfg, nnx.Rngs(params=key))))
        noise = [0.05 * jax.random.normal(jax.random.fold_in(key, i), x.shape) for i, x in enumerate(leaves)]
        return jax.tree.unflatten(tree, [x + n for x, n in zip(leaves, noise)])

    return graphdef, init(jax.random.key(seed))


@pytest.fixture(scope="module")
def model():
    return _perturbed()


def _inputs(seed=0, n=N):
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.standard_normal((B, CFG.chunk, CFG.action_dim)), jnp.float32),
        jnp.asarray(rng.uniform(size=(B,)), jnp.float32),
        jnp.asarray(rng.standard_normal((B, n, CFG.context_dim)), jnp.float32),
        jnp.ones((B, n), bool),
        jnp.asarray(rng.standard_normal((B, CFG.action_dim)), jnp.float32),
    )


@jax.jit
def _apply(graphdef, state, x, sigma, ctx, cmask, s, dim_mask=None, act_mask=None):
    return nnx.merge(graphdef, state)(x, sigma, ctx, cmask, s, action_dim_mask=dim_mask, action_mask=act_mask)


def test_psi0_parameter_count_exact():
    state = ae.abstract_params("psi0")
    assert all(isinstance(x, jax.ShapeDtypeStruct) and x.dtype == jnp.float32 for x in jax.tree.leaves(state))
    assert layers.count_params(state) == 490_039_128
    last = nnx.to_pure_dict(state)["blocks"][5]
    assert "to_add_out" not in last and "ff_obs" not in last
    discarded = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(last["add_q_proj"]))
    assert 490_039_128 - discarded == 487_678_296
    assert ae.num_params("small") == 35_652_440 and ae.num_params("tiny") == 238_744
    with pytest.raises(ValueError, match="did you mean 'psi0'"):
        ae.get_config("psi")


def test_shapes_jit_equals_eager(model):
    graphdef, state = model
    args = _inputs()
    eager = nnx.merge(graphdef, state)(*args)
    chex.assert_shape(eager, (B, CFG.chunk, CFG.action_dim))
    assert eager.dtype == jnp.float32
    np.testing.assert_allclose(_apply(graphdef, state, *args), eager, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="actions must be"):
        nnx.merge(graphdef, state)(args[0][:, :10], *args[1:])


def test_padding_never_changes_unpadded_outputs(model):
    graphdef, state = model
    x, sigma, ctx, cmask, s = _inputs()
    base = _apply(graphdef, state, x, sigma, ctx, cmask, s)
    # Padded context tokens holding garbage do not matter (Ψ0 appends the state token after all N
    # context tokens, padded ones included, so the number of tokens N fixes the state token's position).
    mask_pad = cmask.at[:, -3:].set(False)
    ref_pad = _apply(graphdef, state, x, sigma, ctx, mask_pad, s)
    ctx_pad = ctx.at[:, -3:].set(50.0)
    np.testing.assert_allclose(_apply(graphdef, state, x, sigma, ctx_pad, mask_pad, s), ref_pad, atol=1e-5)
    # Masking real context does change the output (the mask is used).
    assert float(jnp.max(jnp.abs(_apply(graphdef, state, x, sigma, ctx, cmask.at[:, 2:].set(False), s) - base))) > 1e-4
    # Padded action dims: garbage in, zeros out, other dims unaffected.
    dim_mask = jnp.ones(CFG.action_dim, bool).at[-4:].set(False)
    ref = _apply(graphdef, state, x, sigma, ctx, cmask, s, dim_mask)
    out = _apply(graphdef, state, x.at[..., -4:].set(1e3), sigma, ctx, cmask, s, dim_mask)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_array_equal(out[..., -4:], 0.0)
    # Action tokens past the episode end: garbage there does not reach the valid ones.
    act_mask = jnp.ones((B, CFG.chunk), bool).at[:, 20:].set(False)
    ref = _apply(graphdef, state, x, sigma, ctx, cmask, s, None, act_mask)
    out = _apply(graphdef, state, x.at[:, 20:].set(1e3), sigma, ctx, cmask, s, None, act_mask)
    np.testing.assert_allclose(out[:, :20], ref[:, :20], atol=1e-5)


def test_per_token_time(model):
    graphdef, state = model
    x, sigma, ctx, cmask, s = _inputs()
    shared = _apply(graphdef, state, x, sigma, ctx, cmask, s)
    per_token = jnp.broadcast_to(sigma[:, None], (B, CFG.chunk))
    np.testing.assert_allclose(_apply(graphdef, state, x, per_token, ctx, cmask, s), shared, atol=1e-6)
    varied = _apply(graphdef, state, x, per_token.at[:, :6].set(0.0), ctx, cmask, s)
    assert float(jnp.max(jnp.abs(varied - shared))) > 1e-4


def test_dropout_only_with_key(model):
    graphdef, state = model
    m = nnx.merge(graphdef, state)
    args = _inputs()
    a = m(*args)
    np.testing.assert_array_equal(m(*args), a)
    b = m(*args, dropout_key=jax.random.key(0))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4


def test_bf16_compute_close_to_f32(model):
    graphdef, state = model
    cfg16 = ae.get_config("tiny", dtype="bfloat16")
    graphdef16, state16 = nnx.split(nnx.eval_shape(lambda: ae.ActionExpert(cfg16, nnx.Rngs(params=0))))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state16))  # float32 parameters
    args = _inputs()
    f32 = _apply(graphdef, state, *args)
    bf16 = _apply(graphdef16, state, *args)
    assert bf16.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(bf16 - f32))) < 0.05 * float(jnp.max(jnp.abs(f32))) + 1e-3


def test_every_parameter_but_discarded_projection_gets_gradient(model):
    graphdef, state = model
    x, sigma, ctx, cmask, s = _inputs()
    cmask = cmask.at[0, -1].set(False)

    def loss(st):
        return jnp.mean(jnp.square(nnx.merge(graphdef, st)(x, sigma, ctx, cmask, s) - 0.3))

    grads = nnx.to_pure_dict(jax.jit(jax.grad(loss))(state))
    flat = {"/".join(str(k.key) for k in path): g for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
    last = f"blocks/{CFG.depth - 1}/add_q_proj/"
    zero = sorted(k for k, g in flat.items() if not bool(jnp.any(g != 0)))
    assert zero == [last + "bias", last + "kernel"], zero
    assert len(flat) == sum(1 for _ in jax.tree.leaves(state))
