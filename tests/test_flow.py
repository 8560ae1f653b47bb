"""Tests for recap_jax.flow: convention, masked loss, σ sampling, Euler sampler, CFG."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recap_jax import flow

B, H, D = 3, 5, 4


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(size=(B, H, D)).astype(np.float32) for _ in range(3))


def test_interpolate_endpoints_and_target_is_derivative():
    x, eps, _ = _data()
    np.testing.assert_allclose(flow.interpolate(x, eps, 0.0), x, atol=1e-6)
    np.testing.assert_allclose(flow.interpolate(x, eps, 1.0), eps, atol=1e-6)
    sig = np.array([0.1, 0.5, 0.9], np.float32)
    xs = flow.interpolate(x, eps, sig)
    chex.assert_shape(xs, (B, H, D))
    chex.assert_type(xs, jnp.float32)
    np.testing.assert_allclose(xs[1], 0.5 * x[1] + 0.5 * eps[1], atol=1e-6)
    # d x_σ / dσ equals the velocity target (the stated convention: σ = 1 is noise).
    d = jax.jacfwd(lambda s: flow.interpolate(x, eps, s))(0.3)
    np.testing.assert_allclose(d, flow.velocity_target(x, eps), atol=1e-6)


def test_masked_loss_hand_computed_with_huge_padding():
    x = np.zeros((2, 3, 2), np.float32)
    eps = np.zeros((2, 3, 2), np.float32)
    pred = np.array(
        [
            [[1.0, 2.0], [3.0, 1e6], [1e6, 1e6]],
            [[0.5, 1e6], [1e6, 1e6], [1e6, 1e6]],
        ],
        np.float32,
    )
    chunk_mask = np.array([[True, True, False], [True, False, False]])
    dim_mask = np.array([True, False])
    # Valid entries: (0,0,0)=1, (0,1,0)=3, (1,0,0)=0.5 → squared 1, 9, 0.25 over 3 entries.
    loss = flow.flow_matching_loss(pred, x, eps, chunk_mask, dim_mask=dim_mask)
    chex.assert_shape(loss, ())
    chex.assert_type(loss, jnp.float32)
    np.testing.assert_allclose(loss, (1.0 + 9.0 + 0.25) / 3.0, rtol=1e-6)
    per = flow.flow_matching_loss(pred, x, eps, chunk_mask, dim_mask=dim_mask, reduction="per_example")
    chex.assert_shape(per, (2,))
    np.testing.assert_allclose(per, [(1.0 + 9.0) / 2.0, 0.25], rtol=1e-6)
    # Full-rank mask (numpy broadcasting) gives the same, and the padding never reaches the gradient.
    full = chunk_mask[..., None] & dim_mask
    np.testing.assert_allclose(flow.flow_matching_loss(pred, x, eps, full), loss, rtol=1e-6)
    pred_inf = np.where(full, pred, np.inf).astype(np.float32)
    g = np.asarray(jax.grad(lambda p: flow.flow_matching_loss(p, x, eps, full))(pred_inf))
    assert np.all(np.isfinite(g)) and np.all(g[~full] == 0)
    np.testing.assert_allclose(g[full], 2.0 * pred[full] / 3.0, rtol=1e-6)


def test_unmasked_loss_is_plain_mse_and_jit_matches():
    x, eps, pred = _data(1)
    ref = np.mean((pred - (eps - x)) ** 2)
    np.testing.assert_allclose(flow.flow_matching_loss(pred, x, eps), ref, rtol=1e-5)
    mask = np.ones((B, H), bool)
    mask[0, 3:] = False

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(p, a, n, m):
        return flow.flow_matching_loss(p, a, n, m)

    out = f(pred, x, eps, mask)
    np.testing.assert_allclose(out, flow.flow_matching_loss(pred, x, eps, mask), rtol=1e-6)
    f(pred + 1.0, x, eps, ~mask)  # same shapes: no retrace


def test_loss_rejects_bad_shapes():
    x, eps, pred = _data()
    with pytest.raises(ValueError, match="shape mismatch"):
        flow.flow_matching_loss(pred[:, :2], x, eps)
    with pytest.raises(ValueError, match="mask"):
        flow.flow_matching_loss(pred, x, eps, np.ones((B, H + 1), bool))
    with pytest.raises(ValueError, match="mask"):
        flow.flow_matching_loss(pred, x, eps, np.ones((B, H, D, 1), bool))
    with pytest.raises(ValueError, match="dim_mask"):
        flow.flow_matching_loss(pred, x, eps, dim_mask=np.ones((D + 1,), bool))
    with pytest.raises(ValueError, match="sigma shape"):
        flow.interpolate(x, eps, np.ones((B + 1,)))
    with pytest.raises(ValueError, match="reduction"):
        flow.flow_matching_loss(pred, x, eps, reduction="sum")


def test_sample_sigma_kinds_and_ranges():
    key = jax.random.key(0)
    u = flow.sample_sigma(key, 20000, "uniform")
    b = flow.sample_sigma(key, (20000,), kind="beta")
    for s in (u, b):
        chex.assert_shape(s, (20000,))
        chex.assert_type(s, jnp.float32)
    u, b = np.asarray(u), np.asarray(b)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert b.min() >= flow.BETA_SIGMA_MIN and b.max() <= 1.0
    # Beta(1.5, 1): mean 0.6 and CDF b^1.5 → σ mean 0.001 + 0.999·0.6, P[σ < 0.5] ≈ 0.5^1.5; uniform mean 0.5.
    np.testing.assert_allclose(u.mean(), 0.5, atol=0.01)
    np.testing.assert_allclose(b.mean(), 0.001 + 0.999 * 0.6, atol=0.01)
    np.testing.assert_allclose(np.mean(b < 0.5), ((0.5 - 0.001) / 0.999) ** 1.5, atol=0.015)
    with pytest.raises(ValueError, match="unknown sigma kind 'logit'"):
        flow.sample_sigma(key, (3,), "logit")


@pytest.mark.parametrize("num_steps", [1, 3, 10])
def test_euler_constant_field_recovers_data_exactly(num_steps):
    x0, eps, _ = _data(2)
    out = flow.euler_sample(lambda x, s: flow.velocity_target(x0, eps), eps, num_steps)
    chex.assert_shape(out, (B, H, D))
    np.testing.assert_allclose(out, x0, atol=1e-5)


def test_euler_first_order_convergence_and_sigma_grid():
    eps = np.array([1.0, -2.0, 0.5], np.float32)
    exact = eps * np.e  # dx/dσ = −x from σ = 1 to 0 ⇒ x(0) = e·x(1)
    errs = [np.max(np.abs(np.asarray(flow.euler_sample(lambda x, s: -x, eps, n)) - exact)) for n in (20, 40, 80)]
    assert errs[0] > errs[1] > errs[2]
    np.testing.assert_allclose(errs[0] / errs[1], 2.0, rtol=0.05)
    np.testing.assert_allclose(errs[1] / errs[2], 2.0, rtol=0.05)

    # Uniform grid (explicit option): σ passed to the field 1, 0.75, 0.5, 0.25 for 4 steps (a scalar).
    def field(x, s):
        return jnp.broadcast_to(-jnp.reshape(s, ()), x.shape)

    seen = flow.euler_sample(field, jnp.zeros(()), 4, grid="uniform")
    np.testing.assert_allclose(seen, 0.25 * (1.0 + 0.75 + 0.5 + 0.25), rtol=1e-6)
    # Ψ0's grid (default): 1, 0.667, 0.334, 0.001, then 0.
    grid = np.array([1.0, 1 - 0.999 / 3, 1 - 2 * 0.999 / 3, 0.001, 0.0])
    np.testing.assert_allclose(flow.sigma_grid(4), grid, atol=1e-7)
    want = float(np.sum(grid[:-1] * (grid[:-1] - grid[1:])))
    np.testing.assert_allclose(flow.euler_sample(field, jnp.zeros(()), 4), want, rtol=1e-6)
    with pytest.raises(ValueError, match="grid"):
        flow.sigma_grid(4, "cosine")
    with pytest.raises(ValueError, match="num_steps"):
        flow.euler_sample(lambda x, s: x, eps, 0)


def test_euler_jit_vmap_no_retrace():
    x0, eps, _ = _data(3)

    def field(x, s):
        return x - s * x0[0]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def sample(e):
        return flow.euler_sample(field, e, 10)

    out = sample(eps)
    np.testing.assert_allclose(out, flow.euler_sample(field, eps, 10), atol=1e-5)
    sample(eps + 1.0)
    batched = jax.vmap(lambda e: flow.euler_sample(field, e, 10))(eps)
    np.testing.assert_allclose(batched, np.stack([flow.euler_sample(field, e, 10) for e in eps]), atol=1e-5)
    bf16 = flow.euler_sample(field, eps.astype(jnp.bfloat16), 10)
    chex.assert_type(bf16, jnp.bfloat16)


def test_cfg_velocity():
    x, eps, _ = _data(4)
    np.testing.assert_allclose(flow.cfg_velocity(x, eps, 1.0), x, atol=1e-6)
    np.testing.assert_allclose(flow.cfg_velocity(x, eps, 0.0), eps, atol=1e-6)
    beta = np.array([0.0, 1.0, 2.0], np.float32)
    out = flow.cfg_velocity(x, eps, beta)
    chex.assert_shape(out, (B, H, D))
    np.testing.assert_allclose(out[2], eps[2] + 2.0 * (x[2] - eps[2]), atol=1e-5)
    with pytest.raises(ValueError, match="shape mismatch"):
        flow.cfg_velocity(x, eps[:1], 1.0)


# ---------------------------------------------------------------- Ψ0's own sampler / RTC / loss
# tests/data/psi0_expert: outputs of Ψ0's PyTorch expert and diffusers' scheduler (see its README).


@pytest.fixture(scope="module")
def psi0():
    import pathlib

    from flax import nnx

    from recap_jax.models import action_expert as ae
    from recap_jax.models import convert

    data = pathlib.Path(__file__).parent / "data" / "psi0_expert"
    io = dict(np.load(data / "io.npz"))
    cfg = ae.ActionExpertConfig(width=64, depth=3, num_heads=4, mlp_dim=256, context_dim=48)
    model = ae.build(cfg, 0)
    nnx.update(model, convert.load_expert_state(data / "expert.safetensors", nnx.state(model, nnx.Param), cfg))
    c, m, st = io["context"], io["context_mask"] > 0.5, io["state"][:, 0]
    return io, model, (lambda x, sig: model(x, sig, c, m, st))


def _tol(ref):
    return 1e-5 * max(1.0, float(np.max(np.abs(ref))))


def test_psi0_grid_and_sample(psi0):
    io, _, vf = psi0
    np.testing.assert_allclose(flow.sigma_grid(10), io["scheduler_sigmas"], atol=1e-7)
    np.testing.assert_allclose(1000 * flow.sigma_grid(10)[:-1], io["scheduler_timesteps"], atol=1e-3)
    out = flow.euler_sample(vf, jnp.asarray(io["x"]), 10)
    np.testing.assert_allclose(out, io["sample_10"], atol=_tol(io["sample_10"]))
    # The old uniform grid gives another sample (the default is Ψ0's).
    assert float(np.max(np.abs(flow.euler_sample(vf, jnp.asarray(io["x"]), 10, grid="uniform") - out))) > 1e-3


def test_psi0_rtc_sample(psi0):
    io, _, vf = psi0
    seen = []

    def spy(x, sig):
        seen.append(sig.shape)
        return vf(x, sig)

    out = flow.euler_sample(spy, jnp.asarray(io["x"]), 10, prefix=io["rtc_prefix"])
    np.testing.assert_allclose(out, io["sample_rtc_10"], atol=_tol(io["sample_rtc_10"]))
    assert seen[0] == (3, 30)
    with pytest.raises(ValueError, match="prefix"):
        flow.euler_sample(vf, jnp.asarray(io["x"]), 10, prefix=io["rtc_prefix"][..., :5])


def test_psi0_loss(psi0):
    io, model, _ = psi0
    a, n, sig, am = io["loss_actions"], io["loss_noise"], io["loss_sigma"], io["loss_action_mask"]
    pred = model(flow.interpolate(a, n, sig), sig, io["context"], io["context_mask"] > 0.5, io["state"][:, 0])
    loss = flow.flow_matching_loss(pred, a, n, am, reduction="psi0")
    np.testing.assert_allclose(loss, io["loss"], rtol=1e-5)
    per = flow.flow_matching_loss(pred, a, n, am, reduction="psi0_per_example")
    np.testing.assert_allclose(jnp.mean(per), io["loss"], rtol=1e-5)
    assert abs(float(flow.flow_matching_loss(pred, a, n, am)) - float(io["loss"])) > 1.0  # "mean" differs
