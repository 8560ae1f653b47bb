"""ResNet (v1.5, torchvision layout) in Flax NNX, with a converter from torchvision safetensors.

The value function of the paper (Appendix B) reads a frozen ImageNet ResNet-50: an image resized to
224×224 with ImageNet normalisation becomes the 2048-d global-average-pooled feature. This module
builds that network with BatchNorm in inference mode (running statistics, never updated) and loads
weights saved from ``torchvision.models.resnet50().state_dict()`` with ``safetensors.torch.save_file``.

Layout: the module tree mirrors torchvision's names (``conv1``, ``bn1``, ``layer1..4`` of bottleneck
blocks with ``conv1..3``, ``bn1..3`` and ``downsample.0`` / ``downsample.1``, ``fc``), so a variable
path maps to a torchvision key by joining with ``.`` and renaming the leaf (kernel/scale → weight,
mean → running_mean, var → running_var). Conv kernels are stored HWIO here and OIHW in torch; Linear
kernels [in, out] here and [out, in] in torch. The stride of a down-sampling block sits on its 3×3
conv (v1.5, as torchvision).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

RESNET50_STAGES = (3, 4, 6, 3)
EXPANSION = 4
BN_EPS = 1e-5
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    pad = k // 2
    return nnx.Conv(
        cin, cout, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)), use_bias=False, rngs=rngs
    )


def _bn(c: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(c, use_running_average=True, epsilon=BN_EPS, rngs=rngs)


class Bottleneck(nnx.Module):
    """1×1 → 3×3 (stride) → 1×1 (×4 channels) with a projection shortcut when the shape changes."""

    def __init__(self, cin: int, width: int, stride: int, *, rngs: nnx.Rngs):
        cout = width * EXPANSION
        self.conv1, self.bn1 = _conv(cin, width, 1, 1, rngs), _bn(width, rngs)
        self.conv2, self.bn2 = _conv(width, width, 3, stride, rngs), _bn(width, rngs)
        self.conv3, self.bn3 = _conv(width, cout, 1, 1, rngs), _bn(cout, rngs)
        if stride != 1 or cin != cout:
            self.downsample = nnx.List([_conv(cin, cout, 1, stride, rngs), _bn(cout, rngs)])
        else:
            self.downsample = None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        short = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        return jax.nn.relu(y + short)


class ResNet(nnx.Module):
    """Bottleneck ResNet; ``ResNet()`` is torchvision's ResNet-50.

    Args:
      stage_sizes: blocks per stage (ResNet-50: (3, 4, 6, 3)).
      width: channels of the stem and of stage 1's 3×3 convs (64); stage s uses width·2^s, and the
        feature size is width·8·4 (2048).
      num_classes: size of the ``fc`` classifier (1000), or None for a feature extractor only.
    """

    def __init__(
        self,
        stage_sizes: Sequence[int] = RESNET50_STAGES,
        width: int = 64,
        num_classes: int | None = 1000,
        *,
        rngs: nnx.Rngs,
    ):
        if len(stage_sizes) != 4 or min(stage_sizes) < 1:
            raise ValueError(f"stage_sizes must be 4 positive block counts, got {tuple(stage_sizes)}")
        self.conv1, self.bn1 = _conv(3, width, 7, 2, rngs), _bn(width, rngs)
        cin = width
        for s, n in enumerate(stage_sizes):
            blocks = []
            for b in range(n):
                blocks.append(Bottleneck(cin, width * 2**s, 2 if (b == 0 and s > 0) else 1, rngs=rngs))
                cin = width * 2**s * EXPANSION
            setattr(self, f"layer{s + 1}", nnx.List(blocks))
        self.feature_dim = cin
        self.fc = nnx.Linear(cin, num_classes, rngs=rngs) if num_classes else None

    def features(self, x: jax.Array) -> jax.Array:
        """float [B, H, W, 3] (already normalised) → float [B, feature_dim] global-average-pooled features."""
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected images [B, H, W, 3], got {x.shape}")
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.lax.reduce_window(
            y, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
        )
        for s in range(4):
            for block in getattr(self, f"layer{s + 1}"):
                y = block(y)
        return y.mean(axis=(1, 2))

    def __call__(self, x: jax.Array) -> jax.Array:
        """float [B, H, W, 3] → logits float [B, num_classes] (features if ``num_classes`` is None)."""
        f = self.features(x)
        return f if self.fc is None else self.fc(f)


def imagenet_preprocess(images: jax.Array, size: tuple[int, int] = (224, 224)) -> jax.Array:
    """uint8 [B, H, W, 3] → float32 [B, *size, 3]: bilinear resize to ``size``, then ImageNet normalisation."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images [B, H, W, 3], got {images.shape}")
    x = images.astype(jnp.float32) / 255.0
    x = jax.image.resize(x, (x.shape[0], *size, 3), method="bilinear", antialias=True)
    return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def _torch_key(path: tuple) -> str:
    *head, leaf = path
    if leaf not in _LEAF_TO_TORCH:
        raise ValueError(f"unexpected variable {path}")
    return ".".join(str(p) for p in head) + "." + _LEAF_TO_TORCH[leaf]


def _to_torch(path: tuple, value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":
        return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    return value


def _from_torch(path: tuple, value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":
        return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    return value


def _bn_prefixes(flat: Sequence[tuple[tuple, object]]) -> list[str]:
    return [".".join(str(p) for p in path[:-1]) for path, _ in flat if path[-1] == "mean"]


def torchvision_state_shapes(model: ResNet) -> dict[str, tuple[int, ...]]:
    """The torchvision ``state_dict`` key → shape map that ``model`` corresponds to.

    Includes each BatchNorm's ``num_batches_tracked`` (shape ()), as torchvision's ``state_dict`` does.
    Works on an abstract model from ``nnx.eval_shape``.
    """
    flat = list(nnx.to_flat_state(nnx.state(model)))
    shapes = {}
    for path, var in flat:
        shape = tuple(var.get_value().shape)
        if path[-1] == "kernel":
            shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
        shapes[_torch_key(path)] = shape
    for prefix in _bn_prefixes(flat):
        shapes[f"{prefix}.num_batches_tracked"] = ()
    return shapes


def to_torchvision(model: ResNet) -> dict[str, np.ndarray]:
    """Model weights as a torchvision-layout dict of numpy arrays (float32; num_batches_tracked int64 0)."""
    flat = list(nnx.to_flat_state(nnx.state(model)))
    out = {_torch_key(p): np.ascontiguousarray(_to_torch(p, np.asarray(v.get_value(), np.float32))) for p, v in flat}
    for prefix in _bn_prefixes(flat):
        out[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)
    return out


def load_torchvision(model: ResNet, tensors: Mapping[str, np.ndarray], *, strict: bool = True) -> ResNet:
    """Copies torchvision-layout ``tensors`` into ``model`` (in place) and returns it.

    Raises ``ValueError`` on a shape mismatch, and with ``strict`` on missing or unexpected keys
    (``num_batches_tracked`` is ignored; a missing ``fc`` is allowed when the model has none).
    """
    state = nnx.state(model)
    flat = list(nnx.to_flat_state(state))
    wanted = {_torch_key(p): p for p, _ in flat}
    given = {k for k in tensors if not k.endswith("num_batches_tracked")}
    if model.fc is None:
        given = {k for k in given if not k.startswith("fc.")}
    missing, extra = sorted(set(wanted) - given), sorted(given - set(wanted))
    if strict and (missing or extra):
        raise ValueError(f"torchvision keys do not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
    flat_values = {}
    for path, var in flat:
        key = _torch_key(path)
        if key not in tensors:
            continue
        value = _from_torch(path, np.asarray(tensors[key], np.float32))
        if value.shape != var.get_value().shape:
            raise ValueError(
                f"{key}: torch shape {np.shape(tensors[key])} does not fit parameter {var.get_value().shape}"
            )
        flat_values[path] = jnp.asarray(value, var.get_value().dtype)
    pure = nnx.to_pure_dict(state)
    for path, value in flat_values.items():
        node = pure
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    return model


def load_resnet_safetensors(
    path: str,
    *,
    stage_sizes: Sequence[int] = RESNET50_STAGES,
    width: int = 64,
    num_classes: int | None = 1000,
    strict: bool = True,
) -> ResNet:
    """Builds a ResNet and fills it from a torchvision-layout ``.safetensors`` file."""
    from safetensors.numpy import load_file

    tensors = load_file(path)
    model = ResNet(stage_sizes, width, num_classes, rngs=nnx.Rngs(0))
    return load_torchvision(model, tensors, strict=strict)
