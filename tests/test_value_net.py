"""Value network: paper architecture, both backbones, pure pytree params."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recap_jax import value as value_math
from recap_jax.models import value_net


def test_head_architecture_matches_appendix_b():
    params = value_net.init_value_params(jax.random.key(0), "features", 2048)
    shapes = {"/".join(map(str, p)): v.get_value().shape for p, v in nnx.to_flat_state(params.state)}
    assert shapes["head/fc1/kernel"] == (2048 + 32, 256)
    assert shapes["head/norm/scale"] == (256,)
    assert shapes["head/fc2/kernel"] == (256, 256)
    assert shapes["head/out/kernel"] == (256, 201)
    assert len(shapes) == 8  # 3 Linear (kernel, bias) + LayerNorm (scale, bias); nothing else trains


@pytest.mark.parametrize("backbone,inputs", [("features", (5, 12)), ("cnn", (5, 24, 40, 3))])
def test_logits_and_values(backbone, inputs):
    params = value_net.init_value_params(jax.random.key(1), backbone, inputs[1] if backbone == "features" else None)
    x = jnp.zeros(inputs, jnp.float32 if backbone == "features" else jnp.uint8)
    x = x + (jnp.arange(inputs[0]).reshape((-1,) + (1,) * (len(inputs) - 1)) * 20).astype(x.dtype)
    s = jax.random.normal(jax.random.key(2), (inputs[0], 32))
    logits = value_net.value_logits(params, x, s)
    chex.assert_shape(logits, (inputs[0], 201))
    chex.assert_tree_all_finite(logits)
    v = value_net.predict_value(params, x, s)
    chex.assert_shape(v, (inputs[0],))
    # V̂ = Σ softmax(logits)·bin centre with 201 centres evenly from −1 to 0, computed here independently.
    z = np.asarray(logits, np.float64)
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(v, probs @ np.linspace(-1.0, 0.0, 201), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v, value_math.expected_value(logits), rtol=1e-6)
    assert np.ptp(np.asarray(v)) > 0  # depends on its inputs


def test_params_are_traced_no_recompile():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(params, x, s):
        return value_net.predict_value(params, x, s)

    x, s = jnp.ones((3, 8)), jnp.ones((3, 32))
    a = f(value_net.init_value_params(jax.random.key(0), "features", 8), x, s)
    b = f(value_net.init_value_params(jax.random.key(1), "features", 8), x, s)
    assert not np.allclose(a, b)


def test_cnn_is_trained_end_to_end():
    params = value_net.init_value_params(jax.random.key(0), "cnn")
    x = jax.random.randint(jax.random.key(1), (2, 16, 16, 3), 0, 255).astype(jnp.uint8)
    s = jnp.zeros((2, 32))

    def loss(state):
        p = value_net.ValueParams(params.graphdef, state)
        return value_net.value_logits(p, x, s)[:, 0].sum()

    grads = jax.grad(loss)(params.state)
    conv_grad = grads["encoder"]["convs"][0]["kernel"].get_value()
    assert float(jnp.abs(conv_grad).sum()) > 0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="backbone"):
        value_net.init_value_params(jax.random.key(0), "resnet")
    with pytest.raises(ValueError, match="feature_dim"):
        value_net.init_value_params(jax.random.key(0), "features")
    params = value_net.init_value_params(jax.random.key(0), "features", 8)
    with pytest.raises(ValueError, match="features"):
        value_net.value_logits(params, jnp.zeros((2, 4, 4, 3)), jnp.zeros((2, 32)))
    with pytest.raises(ValueError, match="state"):
        value_net.value_logits(params, jnp.zeros((2, 8)), jnp.zeros((3, 32)))
