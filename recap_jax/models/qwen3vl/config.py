"""Qwen3-VL configuration: config.json in either style, the Hugging Face weight shapes, the 2B preset."""

from __future__ import annotations

import json
from pathlib import Path


def read_config(path) -> dict:
    """`path`/config.json → dict, `text_config.rope_parameters` filled from either style.

    transformers 5 writes `rope_parameters` (with `rope_theta`); 4.x checkpoints (the released
    Qwen3-VL-2B-Instruct) carry `rope_scaling` (mrope_section, mrope_interleaved) + `rope_theta`.
    """
    path = Path(path)
    file = path / "config.json"
    if not file.exists():
        raise ValueError(f"{file}: config file not found")
    cfg = json.loads(file.read_text())
    for key in ("text_config", "vision_config", "image_token_id"):
        if key not in cfg:
            raise ValueError(f"{file}: missing field {key}")
    text = cfg["text_config"]
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    if "rope_theta" not in rope:
        if "rope_theta" not in text:
            raise ValueError(f"{file}: text_config has neither rope_parameters nor rope_theta")
        rope["rope_theta"] = text["rope_theta"]
    text["rope_parameters"] = rope
    return cfg


def head_dim(text_config: dict) -> int:
    """The text attention head width (`head_dim`, else hidden_size / num_attention_heads)."""
    return text_config.get("head_dim") or text_config["hidden_size"] // text_config["num_attention_heads"]


def tied(config: dict) -> bool:
    """Whether lm_head shares the token embedding (then it is not stored)."""
    return bool(config.get("tie_word_embeddings", config["text_config"].get("tie_word_embeddings", False)))


def param_shapes(config: dict, vocab_size: int | None = None) -> dict:
    """Hugging Face key → shape for a Qwen3-VL config (tied lm_head omitted; `vocab_size` overrides).

    Written from the Hugging Face layout independently of the NNX module tree; the tests check that the
    module tree maps onto exactly these keys and shapes.
    """
    tc, vc = config["text_config"], config["vision_config"]
    d, hd = tc["hidden_size"], head_dim(tc)
    nh, nkv, mlp = tc["num_attention_heads"], tc["num_key_value_heads"], tc["intermediate_size"]
    shapes = {"model.language_model.embed_tokens.weight": (vocab_size or tc["vocab_size"], d)}
    for i in range(tc["num_hidden_layers"]):
        b = f"model.language_model.layers.{i}."
        shapes |= {
            b + "input_layernorm.weight": (d,),
            b + "post_attention_layernorm.weight": (d,),
            b + "self_attn.q_proj.weight": (nh * hd, d),
            b + "self_attn.k_proj.weight": (nkv * hd, d),
            b + "self_attn.v_proj.weight": (nkv * hd, d),
            b + "self_attn.o_proj.weight": (d, nh * hd),
            b + "self_attn.q_norm.weight": (hd,),
            b + "self_attn.k_norm.weight": (hd,),
            b + "mlp.gate_proj.weight": (mlp, d),
            b + "mlp.up_proj.weight": (mlp, d),
            b + "mlp.down_proj.weight": (d, mlp),
        }
    shapes["model.language_model.norm.weight"] = (d,)
    vd, vm, p, tp = vc["hidden_size"], vc["intermediate_size"], vc["patch_size"], vc["temporal_patch_size"]
    pre = "model.visual."
    shapes[pre + "patch_embed.proj.weight"] = (vd, vc.get("in_channels", 3), tp, p, p)
    shapes[pre + "patch_embed.proj.bias"] = (vd,)
    shapes[pre + "pos_embed.weight"] = (vc["num_position_embeddings"], vd)
    for i in range(vc["depth"]):
        b = f"{pre}blocks.{i}."
        for n, shp in (("norm1", (vd,)), ("norm2", (vd,))):
            shapes[f"{b}{n}.weight"], shapes[f"{b}{n}.bias"] = shp, shp
        for n, o, k in (
            ("attn.qkv", 3 * vd, vd),
            ("attn.proj", vd, vd),
            ("mlp.linear_fc1", vm, vd),
            ("mlp.linear_fc2", vd, vm),
        ):
            shapes[f"{b}{n}.weight"], shapes[f"{b}{n}.bias"] = (o, k), (o,)
    merged = vd * vc["spatial_merge_size"] ** 2
    out = vc["out_hidden_size"]
    mergers = [("merger.", vd)] + [
        (f"deepstack_merger_list.{j}.", merged) for j in range(len(vc["deepstack_visual_indexes"]))
    ]
    for m, norm in mergers:
        shapes[f"{pre}{m}norm.weight"], shapes[f"{pre}{m}norm.bias"] = (norm,), (norm,)
        shapes[f"{pre}{m}linear_fc1.weight"], shapes[f"{pre}{m}linear_fc1.bias"] = (merged, merged), (merged,)
        shapes[f"{pre}{m}linear_fc2.weight"], shapes[f"{pre}{m}linear_fc2.bias"] = (out, merged), (out,)
    if not tied(config):
        shapes["lm_head.weight"] = (vocab_size or tc["vocab_size"], d)
    return shapes


QWEN3VL_2B = {
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": True,
    "text_config": {
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5e6,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    },
    "vision_config": {
        "depth": 24,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_heads": 16,
        "patch_size": 16,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "in_channels": 3,
        "num_position_embeddings": 2304,
        "out_hidden_size": 2048,
        "deepstack_visual_indexes": [5, 11, 17],
    },
}
PRESETS = {"qwen3vl-2b": QWEN3VL_2B}
