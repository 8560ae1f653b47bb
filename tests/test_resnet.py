"""ResNet-50 structure (torchvision key set via eval_shape), converter round trip, and a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from recap_jax.models import resnet

TINY = dict(stage_sizes=(1, 2, 1, 1), width=4, num_classes=7)


def _np_conv(x, w, stride, pad):
    """x [B, H, W, C], torch weight w [O, I, kh, kw] → [B, H', W', O] (cross-correlation, zero padding)."""
    o, _, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    hout = (x.shape[1] - kh) // stride + 1
    wout = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], hout, wout, o), np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i : i + stride * hout : stride, j : j + stride * wout : stride, :]
            out += patch @ w[:, :, i, j].T
    return out


def _np_bn(x, t, prefix):
    g, b = t[f"{prefix}.weight"], t[f"{prefix}.bias"]
    m, v = t[f"{prefix}.running_mean"], t[f"{prefix}.running_var"]
    return (x - m) / np.sqrt(v + 1e-5) * g + b


def _np_resnet(x, t, stage_sizes):
    relu = lambda a: np.maximum(a, 0)
    y = relu(_np_bn(_np_conv(x, t["conv1.weight"], 2, 3), t, "bn1"))
    y = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    h, w = (y.shape[1] - 3) // 2 + 1, (y.shape[2] - 3) // 2 + 1
    y = np.max([y[:, i : i + 2 * h : 2, j : j + 2 * w : 2] for i in range(3) for j in range(3)], axis=0)
    for s, n in enumerate(stage_sizes):
        for b in range(n):
            p = f"layer{s + 1}.{b}"
            stride = 2 if (b == 0 and s > 0) else 1
            z = relu(_np_bn(_np_conv(y, t[f"{p}.conv1.weight"], 1, 0), t, f"{p}.bn1"))
            z = relu(_np_bn(_np_conv(z, t[f"{p}.conv2.weight"], stride, 1), t, f"{p}.bn2"))
            z = _np_bn(_np_conv(z, t[f"{p}.conv3.weight"], 1, 0), t, f"{p}.bn3")
            if f"{p}.downsample.0.weight" in t:
                y = _np_bn(_np_conv(y, t[f"{p}.downsample.0.weight"], stride, 0), t, f"{p}.downsample.1")
            y = relu(z + y)
    f = y.mean(axis=(1, 2))
    return f @ t["fc.weight"].T + t["fc.bias"]


def _random_torchvision(model, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for k, shape in resnet.torchvision_state_shapes(model).items():
        if k.endswith("num_batches_tracked"):
            out[k] = np.array(3, np.int64)
        elif k.endswith("running_var"):
            out[k] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        elif k.endswith("running_mean") or k.endswith("bias"):
            out[k] = rng.normal(0, 0.1, shape).astype(np.float32)
        elif k.endswith(".weight") and len(shape) == 1:
            out[k] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            out[k] = (rng.normal(0, 1, shape) / np.sqrt(fan_in)).astype(np.float32)
    return out


def test_resnet50_torchvision_keys_and_shapes():
    model = nnx.eval_shape(lambda: resnet.ResNet(rngs=nnx.Rngs(0)))
    shapes = resnet.torchvision_state_shapes(model)
    # torchvision resnet50().state_dict(): 320 entries, 25,557,032 trainable parameters.
    assert len(shapes) == 320
    n_params = sum(int(np.prod(s)) for k, s in shapes.items() if "running" not in k and "num_batches" not in k)
    assert n_params == 25_557_032
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer2.0.conv2.weight"] == (128, 128, 3, 3)
    assert shapes["layer3.5.bn3.running_var"] == (1024,)
    assert shapes["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert shapes["fc.weight"] == (1000, 2048) and shapes["fc.bias"] == (1000,)
    assert "layer1.1.downsample.0.weight" not in shapes
    assert model.feature_dim == 2048


def test_tiny_resnet_matches_numpy_reference_from_safetensors(tmp_path):
    template = resnet.ResNet(**TINY, rngs=nnx.Rngs(1))
    tensors = _random_torchvision(template)
    path = str(tmp_path / "tiny.safetensors")
    save_file(tensors, path)
    model = resnet.load_resnet_safetensors(path, **TINY)
    x = np.random.default_rng(1).normal(size=(2, 33, 29, 3)).astype(np.float32)
    got = np.asarray(model(jnp.asarray(x)))
    want = _np_resnet(x.astype(np.float64), {k: v.astype(np.float64) for k, v in tensors.items()}, TINY["stage_sizes"])
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    back = resnet.to_torchvision(model)
    assert set(back) == set(tensors)
    for k in tensors:
        if not k.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[k], tensors[k])


def test_converter_rejects_wrong_keys_and_shapes():
    model = resnet.ResNet(**TINY, rngs=nnx.Rngs(0))
    tensors = resnet.to_torchvision(model)
    with pytest.raises(ValueError, match="missing"):
        resnet.load_torchvision(model, {k: v for k, v in tensors.items() if k != "layer1.0.conv2.weight"})
    bad = dict(tensors)
    bad["fc.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match=r"fc\.weight"):
        resnet.load_torchvision(model, bad)
    headless = resnet.ResNet(**{**TINY, "num_classes": None}, rngs=nnx.Rngs(0))
    resnet.load_torchvision(headless, tensors)  # the classifier is skipped for a feature extractor
    assert headless(jnp.zeros((1, 32, 32, 3))).shape == (1, headless.feature_dim)


def test_batchnorm_is_in_inference_mode():
    model = resnet.ResNet(**TINY, rngs=nnx.Rngs(0))
    before = resnet.to_torchvision(model)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    y1 = model.features(x)
    y2 = model.features(x[:1])
    np.testing.assert_allclose(np.asarray(y1[:1]), np.asarray(y2), rtol=1e-5, atol=1e-6)  # no batch statistics
    after = resnet.to_torchvision(model)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_imagenet_preprocess_shape_and_normalisation():
    img = jnp.full((2, 36, 64, 3), 255, jnp.uint8)
    x = resnet.imagenet_preprocess(img)
    assert x.shape == (2, 224, 224, 3) and x.dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(x[0, 100, 100]), (1 - np.array(resnet.IMAGENET_MEAN)) / resnet.IMAGENET_STD, rtol=1e-5
    )
    with pytest.raises(ValueError):
        resnet.imagenet_preprocess(jnp.zeros((36, 64, 3), jnp.uint8))
