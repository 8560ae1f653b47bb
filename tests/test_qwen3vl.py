"""Qwen3-VL forward vs transformers' PyTorch Qwen3VLForConditionalGeneration (tests/data/qwen3vl_tiny)."""

from pathlib import Path

import numpy as np
import pytest

from recap_jax.models import qwen3vl

DIR = Path(__file__).parent / "data" / "qwen3vl_tiny"


@pytest.fixture(scope="module")
def outputs():
    io = np.load(DIR / "text_io.npz")
    img = np.load(DIR / "image_io.npz")
    model, _ = qwen3vl.load_pretrained(DIR / "model")
    pv, grid = qwen3vl.preprocess_image(img["image"])
    out = qwen3vl.forward(
        model, io["input_ids"], io["attention_mask"], np.concatenate([pv, pv]), np.stack([grid, grid])
    )
    return io, out


@pytest.mark.parametrize(
    "ours,theirs", [("last_layer", "last_layer_pre_norm"), ("last_hidden_state", "hidden_states_last")]
)
def test_forward_parity(outputs, ours, theirs):
    io, out = outputs
    mask = io["attention_mask"].astype(bool)
    got, want = np.asarray(out[ours]), io[theirs]
    assert got.shape == want.shape == (2, 85, 64)
    scale = max(1.0, float(np.abs(want[mask]).max()))
    assert np.abs(got - want)[mask].max() <= 2e-4 * scale
