"""System-2 encoder: shapes, masks, prompt sensitivity, presets."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recap_jax.models import encoder as enc
from recap_jax.models.tokenizer import PAD_ID, ByteTokenizer

TOK = ByteTokenizer(max_len=56)
HIGH = "advantage: high. bend to pick up the cracker box"
LOW = "advantage: low. bend to pick up the cracker box"
BARE = "bend to pick up the cracker box"


@pytest.fixture(scope="module")
def model():
    return nnx.split(enc.build("tiny", 0))


@jax.jit
def _apply(graphdef, state, images, ids, mask):
    return nnx.merge(graphdef, state)(images, ids, mask)


def _images(b=3, hw=(32, 48), seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (b, *hw, 3)), jnp.uint8)


def test_shapes_and_mask(model):
    ids, mask = TOK.encode([HIGH, LOW, BARE])
    tokens, out_mask = _apply(*model, _images(), ids, mask)
    n_img = (32 // 16) * (48 // 16)
    chex.assert_shape(tokens, (3, n_img + 56, 64))
    chex.assert_shape(out_mask, (3, n_img + 56))
    assert bool(jnp.all(out_mask[:, :n_img]))
    np.testing.assert_array_equal(out_mask[:, n_img:], mask)
    assert enc.get_config("tiny").num_tokens((32, 48), 56) == n_img + 56


def test_prompt_padding_does_not_change_real_tokens(model):
    ids, mask = TOK.encode([HIGH, LOW, BARE])
    base, m = _apply(*model, _images(), ids, mask)
    garbage = np.where(mask, ids, 77).astype(np.int32)  # padded positions hold other ids
    out, _ = _apply(*model, _images(), garbage, mask)
    np.testing.assert_allclose(np.where(m[..., None], out, 0), np.where(m[..., None], base, 0), atol=1e-5)
    # Longer padding (L = 64) leaves the real tokens unchanged as well.
    ids64, mask64 = ByteTokenizer(max_len=64).encode([HIGH, LOW, BARE])
    out64, _ = _apply(*model, _images(), ids64, mask64)
    np.testing.assert_allclose(out64[:, : 6 + 56][m], base[m], atol=1e-5)
    assert PAD_ID == 0


def test_labels_give_different_context(model):
    ids, mask = TOK.encode([HIGH, LOW, BARE])
    images = jnp.broadcast_to(_images(1), (3, 32, 48, 3))
    tokens, m = _apply(*model, images, ids, mask)
    pooled = enc.pool(tokens, m)
    chex.assert_shape(pooled, (3, 64))
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        assert float(jnp.max(jnp.abs(pooled[i] - pooled[j]))) > 1e-4
    # The image matters too.
    other, _ = _apply(*model, _images(3, seed=1), ids, mask)
    assert float(jnp.max(jnp.abs(other[:, :6] - tokens[:, :6]))) > 1e-3


def test_errors_and_presets():
    m = enc.build("tiny", 0)
    ids, mask = TOK.encode([BARE])
    with pytest.raises(ValueError, match="patch"):
        m(_images(1, (30, 48)), ids, mask)
    with pytest.raises(ValueError, match="did you mean 'small'"):
        enc.get_config("smal")
    base = jax.eval_shape(lambda: nnx.state(enc.build("base", 0)))
    assert enc.get_config("base").out_dim == enc.QWEN3VL_HIDDEN == 2048
    assert jax.tree.leaves(base)[0].dtype == jnp.float32
