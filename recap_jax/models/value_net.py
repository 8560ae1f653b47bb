"""The distributional value network of RECAP-Ψ (paper §3.6, Appendix B).

Image features ⊕ 32-d state (⊕ the episode clock, optional) → Linear(F + 32 (+ 1) → 256) + LayerNorm + ReLU →
Linear(256 → 256) + ReLU → Linear(256 → 201): logits over 201 uniformly spaced return bins on [v_min, v_max]
(default [−1, 0]; ``recap_jax.value``; the value stage sets the range from the study's return definition,
``recap_jax.labeling.return_range``).

The episode clock (``clock_steps > 0``, a deviation from the paper, issue 22): the head also reads the
decision point's control step t as the phase 2·min(t / clock_steps, 1) − 1, the input the policy gets
from ``PolicyConfig.phase_steps``. Eq. (1)'s return depends on where in the episode an observation is.

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
    """The paper's 3-layer MLP: (features ⊕ state) → logits float [B, num_bins] (``state_dim`` counts every
    non-image input, the clock's phase included)."""

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
      clock_steps: 0 (the paper: no clock) or > 0: the head also reads the phase of the control step
        (see the module docstring); calls must then pass ``step``.
      v_min, v_max: the return range the bins cover (static).
    """

    def __init__(
        self,
        backbone: str = "features",
        feature_dim: int | None = None,
        *,
        state_dim: int = STATE_DIM,
        num_bins: int = NUM_BINS,
        cnn_channels: Sequence[int] = (32, 64, 128, 128),
        clock_steps: int = 0,
        v_min: float = value_math.V_MIN,
        v_max: float = value_math.V_MAX,
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
        if int(clock_steps) < 0:
            raise ValueError(f"clock_steps must be >= 0, got {clock_steps}")
        if not v_min < v_max:
            raise ValueError(f"need v_min < v_max, got {v_min}, {v_max}")
        self.backbone = backbone
        self.clock_steps = int(clock_steps)
        self.num_bins = int(num_bins)
        self.v_min, self.v_max = float(v_min), float(v_max)
        self.head = ValueHead(feature_dim, state_dim + (1 if self.clock_steps else 0), num_bins=num_bins, rngs=rngs)

    def __call__(self, inputs: jax.Array, state: jax.Array, step: jax.Array | None = None) -> jax.Array:
        """inputs: float [B, F] features or uint8 [B, H, W, 3] images; state: float [B, 32]; step: int [B]
        control step of each row (required iff ``clock_steps > 0``) → logits float [B, bins]."""
        if self.encoder is None:
            if inputs.ndim != 2:
                raise ValueError(f"backbone 'features' expects features [B, F], got {inputs.shape}")
            feats = inputs
        else:
            feats = self.encoder(inputs)
        if state.ndim != 2 or state.shape[0] != feats.shape[0]:
            raise ValueError(f"state {state.shape} does not match inputs {inputs.shape}")
        if self.clock_steps:
            if step is None or jnp.shape(step) != (feats.shape[0],):
                raise ValueError(
                    f"clock_steps={self.clock_steps} needs the control step of every row (int [B]), got "
                    f"{None if step is None else jnp.shape(step)}"
                )
            phase = 2.0 * jnp.minimum(jnp.asarray(step, jnp.float32) / self.clock_steps, 1.0) - 1.0
            state = jnp.concatenate([state.astype(jnp.float32), phase[:, None]], axis=-1)
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


def value_logits(params: ValueParams, inputs: jax.Array, state: jax.Array, step: jax.Array | None = None) -> jax.Array:
    """Logits float32 [B, bins] for features float [B, F] (or images uint8 [B, H, W, 3]), state float [B, 32]
    and (networks with the clock) the control step int [B]."""
    return nnx.merge(params.graphdef, params.state)(inputs, state, step)


def support(params: ValueParams) -> tuple[int, float, float]:
    """(num_bins, v_min, v_max) of a value network (static)."""
    net = nnx.merge(params.graphdef, params.state)
    return net.num_bins, net.v_min, net.v_max


def predict_value(params: ValueParams, inputs: jax.Array, state: jax.Array, step: jax.Array | None = None) -> jax.Array:
    """V̂ = E[Z] = Σ_k softmax(logits)_k · b_k (paper Eq. 2): float32 [B] in [v_min, v_max]."""
    net = nnx.merge(params.graphdef, params.state)
    return value_math.expected_value(net(inputs, state, step), net.num_bins, net.v_min, net.v_max)
