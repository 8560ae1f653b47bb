"""The distributional value network of RECAP-Ψ (paper §3.6, Appendix B).

Image features ⊕ 32-d state → Linear(F + 32 → 256) + LayerNorm + ReLU → Linear(256 → 256) + ReLU →
Linear(256 → 201): logits over 201 uniformly spaced return bins on [−1, 0] (``recap_jax.value``).

Image features come from one of three backbones:

* ``"features"`` — precomputed by a *frozen* encoder outside this module: the SFT policy's System-2
  encoder (``recap_jax.value_training.system2_features``) or an ImageNet ResNet-50
  (``recap_jax.models.resnet``, 2048-d, the paper's choice). The network's input is then the feature
  vector float [B, F], computed once per dataset.
* ``"cnn"`` — a small convolutional encoder trained end to end from the raw uint8 image [B, H, W, 3].

``ValueParams`` bundles the NNX graph definition (static) with the NNX state (the trainable leaves),
so ``value_logits(params, inputs, state)`` is a pure function that jits, and swapping checkpoints never
recompiles.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx, struct

from recap_jax import value as value_math

NUM_BINS = 201
STATE_DIM = 32
HIDDEN = 256
BACKBONES = ("features", "cnn")


class ValueHead(nnx.Module):
    """The paper's 3-layer MLP: (features ⊕ state) → logits float [B, num_bins]."""

    def __init__(
        self, feature_dim: int, state_dim: int = STATE_DIM, hidden: int = HIDDEN, num_bins: int = NUM_BINS, *, rngs
    ):
        self.fc1 = nnx.Linear(feature_dim + state_dim, hidden, rngs=rngs)
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, num_bins, rngs=rngs)

    def __call__(self, features: jax.Array, state: jax.Array) -> jax.Array:
        x = jnp.concatenate([features.astype(jnp.float32), state.astype(jnp.float32)], axis=-1)
        x = jax.nn.relu(self.norm(self.fc1(x)))
        x = jax.nn.relu(self.fc2(x))
        return self.out(x)


class SmallCNN(nnx.Module):
    """Four stride-2 conv layers (GroupNorm + ReLU), then mean- and max-pooling: uint8 [B, H, W, 3] → float [B, 2·C]."""

    def __init__(self, channels: Sequence[int] = (32, 64, 128, 128), *, rngs: nnx.Rngs):
        convs, norms, cin = [], [], 3
        for i, c in enumerate(channels):
            k = 5 if i == 0 else 3
            convs.append(nnx.Conv(cin, c, (k, k), strides=(2, 2), padding="SAME", rngs=rngs))
            norms.append(nnx.GroupNorm(c, num_groups=min(8, c), rngs=rngs))
            cin = c
        self.convs, self.norms = nnx.List(convs), nnx.List(norms)
        self.feature_dim = 2 * cin

    def __call__(self, images: jax.Array) -> jax.Array:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images [B, H, W, 3], got {images.shape}")
        x = images.astype(jnp.float32) / 127.5 - 1.0
        for conv, norm in zip(self.convs, self.norms):
            x = jax.nn.relu(norm(conv(x)))
        return jnp.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=-1)


class ValueNet(nnx.Module):
    """Backbone (identity on precomputed features, or ``SmallCNN``) + ``ValueHead``.

    Args:
      backbone: ``"features"`` (inputs are float [B, feature_dim]) or ``"cnn"`` (inputs are uint8 images).
      feature_dim: size of the precomputed features (``"features"`` only).
      cnn_channels: channels of the ``SmallCNN`` (``"cnn"`` only).
    """

    def __init__(
        self,
        backbone: str = "features",
        feature_dim: int | None = None,
        *,
        state_dim: int = STATE_DIM,
        num_bins: int = NUM_BINS,
        cnn_channels: Sequence[int] = (32, 64, 128, 128),
        rngs: nnx.Rngs,
    ):
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        if backbone == "features":
            if not feature_dim or feature_dim < 1:
                raise ValueError("backbone='features' needs a positive feature_dim")
            self.encoder = None
        else:
            self.encoder = SmallCNN(cnn_channels, rngs=rngs)
            feature_dim = self.encoder.feature_dim
        self.backbone = backbone
        self.head = ValueHead(feature_dim, state_dim, num_bins=num_bins, rngs=rngs)

    def __call__(self, inputs: jax.Array, state: jax.Array) -> jax.Array:
        """inputs: float [B, F] features or uint8 [B, H, W, 3] images; state: float [B, 32] → logits float [B, bins]."""
        if self.encoder is None:
            if inputs.ndim != 2:
                raise ValueError(f"backbone 'features' expects features [B, F], got {inputs.shape}")
            feats = inputs
        else:
            feats = self.encoder(inputs)
        if state.ndim != 2 or state.shape[0] != feats.shape[0]:
            raise ValueError(f"state {state.shape} does not match inputs {inputs.shape}")
        return self.head(feats, state)


@struct.dataclass
class ValueParams:
    """A value network as a pytree: the NNX graph definition (static) and its state (the leaves)."""

    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    state: nnx.State


def init_value_params(
    key: jax.Array,
    backbone: str = "features",
    feature_dim: int | None = None,
    **kwargs,
) -> ValueParams:
    """Initialises a ``ValueNet`` (kwargs as its constructor) and splits it into ``ValueParams``."""
    net = ValueNet(backbone, feature_dim, rngs=nnx.Rngs(params=key), **kwargs)
    graphdef, state = nnx.split(net)
    return ValueParams(graphdef=graphdef, state=state)


def value_logits(params: ValueParams, inputs: jax.Array, state: jax.Array) -> jax.Array:
    """Logits float32 [B, bins] for features float [B, F] (or images uint8 [B, H, W, 3]) and state float [B, 32]."""
    return nnx.merge(params.graphdef, params.state)(inputs, state)


def predict_value(params: ValueParams, inputs: jax.Array, state: jax.Array) -> jax.Array:
    """V̂ = E[Z] = Σ_k softmax(logits)_k · b_k (paper Eq. 2): float32 [B] in [−1, 0]."""
    return value_math.expected_value(value_logits(params, inputs, state))
