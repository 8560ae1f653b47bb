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


def test_2b_preset_param_count():
    params = qwen3vl.abstract_params(qwen3vl.PRESETS["qwen3vl-2b"])
    assert sum(int(np.prod(v.shape)) for v in params.values()) == 2_127_532_032
    vision = sum(int(np.prod(v.shape)) for k, v in params.items() if k.startswith("model.visual."))
    assert vision == 406_957_056


def test_load_errors_name_keys(tmp_path):
    from safetensors.numpy import load_file, save_file

    t = load_file(str(DIR / "model" / "model.safetensors"))
    t.pop("model.language_model.norm.weight")
    t["extra.weight"] = np.zeros(3, np.float32)
    t["model.visual.pos_embed.weight"] = np.zeros((5, 32), np.float32)
    save_file(t, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((DIR / "model" / "config.json").read_text())
    with pytest.raises(ValueError) as e:
        qwen3vl.load_pretrained(tmp_path)
    msg = str(e.value)
    assert "model.safetensors" in msg and "model.language_model.norm.weight" in msg
    assert "extra.weight" in msg and "model.visual.pos_embed.weight (5, 32)" in msg


def test_4x_rope_config_style(tmp_path):
    import json
    import shutil

    cfg = json.loads((DIR / "model" / "config.json").read_text())
    rope = cfg["text_config"].pop("rope_parameters")
    cfg["text_config"]["rope_theta"] = rope.pop("rope_theta")
    cfg["text_config"]["rope_scaling"] = rope
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    shutil.copy(DIR / "model" / "model.safetensors", tmp_path / "model.safetensors")
    _, config = qwen3vl.load_pretrained(tmp_path)
    assert config["text_config"]["rope_parameters"]["rope_theta"] == 5e6
    assert config["text_config"]["rope_parameters"]["mrope_section"] == [2, 3, 3]


def test_bf16_compute_close(outputs):
    io, _ = outputs
    img = np.load(DIR / "image_io.npz")
    model, _ = qwen3vl.load_pretrained(DIR / "model", dtype="bfloat16")
    pv, grid = qwen3vl.preprocess_image(img["image"])
    out = qwen3vl.forward(
        model, io["input_ids"], io["attention_mask"], np.concatenate([pv, pv]), np.stack([grid, grid])
    )
    assert out["last_layer"].dtype == np.dtype("bfloat16")
    mask = io["attention_mask"].astype(bool)
    want = io["last_layer_pre_norm"]
    err = np.abs(np.asarray(out["last_layer"], np.float32) - want)[mask].max()
    assert err <= 0.05 * np.abs(want[mask]).max()
