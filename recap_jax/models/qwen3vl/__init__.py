"""Qwen3-VL (Ψ0's System-2) in JAX / Flax NNX.

- `load_pretrained(path, dtype="float32") -> (model, config)`: a Hugging Face model directory into the
  NNX module tree (`model.py`; name mapping and export in `weights.py`: `to_hf`, `save_pretrained`).
- `forward(model, input_ids, attention_mask, pixel_values, image_grid_thw) -> {"last_layer",
  "last_hidden_state"}`: one jitted function (`jit_apply`) per (model structure, image grid, input
  shapes); M-RoPE positions, the vision rotary tables and the position-embedding interpolation are
  computed inside it from the static grid and the traced ids / mask. `make_forward(model, grid)` splits
  the module once (the fast path for repeated calls); inside an outer jit call `forward` or the module.
- `Qwen3VL(config, params=None, *, dtype, param_dtype, frozen=True, rngs)`: the NNX module; `params` =
  {Hugging Face key: array} (numpy or traced) or random weights from `rngs`. Frozen by default.
- `preprocess_image(image)` reproduces transformers 5's torchvision-backed (uint8 antialiased bicubic
  resize) `Qwen2VLImageProcessor(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=0.5,
  image_std=0.5, size={shortest_edge: 65536, longest_edge: 16777216})`; `psi0_image(frame)` is Ψ0's
  first stage (nearest 360×640 → 180×320, then qwen_vl_utils' smart resize to multiples of 32 with PIL
  bicubic). `preprocess_image(psi0_image(frame))` is what Ψ0 feeds the VLM.
- `prompt_ids(tokenizer, instruction, num_image_tokens)`: the checkpoint's chat template, tokenised.
- `PRESETS["qwen3vl-2b"]`, `abstract_params(config)` (Hugging Face key → ShapeDtypeStruct).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from .config import PRESETS, QWEN3VL_2B, head_dim, param_shapes, read_config, tied  # noqa: F401
from .image import (  # noqa: F401
    MAX_PIXELS,
    MERGE,
    MIN_PIXELS,
    PATCH,
    QVU_MAX_PIXELS,
    QVU_MIN_PIXELS,
    TEMPORAL_PATCH,
    preprocess_image,
    psi0_image,
    smart_resize,
)
from .model import (  # noqa: F401
    DecoderLayer,
    Grid,
    PatchEmbed,
    PatchMerger,
    Qwen3VL,
    RMSNorm,
    TextAttention,
    TextMLP,
    TextModel,
    VisionAttention,
    VisionBlock,
    VisionMLP,
    VisionModel,
    mrope_positions,
    text_rotary,
    vision_tables,
)
from .prompt import IMAGE_PAD, prompt_ids, prompt_text  # noqa: F401
from .weights import (  # noqa: F401
    abstract_model,
    abstract_params,
    from_hf,
    load_pretrained,
    save_pretrained,
    to_hf,
)


def static_grid(image_grid_thw, merge: int = MERGE) -> Grid:
    """image_grid_thw (array [N, 3] or [3], or nested sequences; concrete) → ((t, h, w), …) of Python ints."""
    if image_grid_thw is None:
        return ()
    if isinstance(image_grid_thw, jax.core.Tracer):
        raise ValueError("image_grid_thw must be static (a tuple of (t, h, w) or a concrete array), not traced")
    grid = np.asarray(image_grid_thw)
    if grid.size == 0:
        return ()
    if grid.ndim == 1:
        grid = grid[None]
    if grid.ndim != 2 or grid.shape[1] != 3 or not np.issubdtype(grid.dtype, np.integer):
        raise ValueError(f"image_grid_thw must be integers [N, 3], got {grid.dtype} {grid.shape}")
    if (grid <= 0).any() or (grid[:, 1:] % merge).any():
        raise ValueError(f"image_grid_thw rows must be positive with h, w multiples of {merge}, got {grid.tolist()}")
    return tuple(tuple(int(v) for v in row) for row in grid)


def apply(graphdef, state, input_ids, attention_mask, pixel_values, image_grid_thw: Grid) -> dict:
    """Pure form of `Qwen3VL.__call__` for jit: nnx.merge(graphdef, state)(…) (graphdef and grid static)."""
    return nnx.merge(graphdef, state)(input_ids, attention_mask, pixel_values, image_grid_thw)


jit_apply = jax.jit(apply, static_argnames=("graphdef", "image_grid_thw"))


def forward(model: Qwen3VL, input_ids, attention_mask, pixel_values, image_grid_thw) -> dict:
    """Text decoder over input ids with the images' tokens placed, as one compiled function.

    input_ids int [B, L], attention_mask [B, L] (1 = token; left or right padding), pixel_values
    float [P, 1536] (Hugging Face layout, all images' patches concatenated), image_grid_thw: one
    (t, h, w) per image in placeholder order, static (tuple or concrete array [N, 3])
    → {"last_layer": [B, L, D] before the final RMSNorm (what Ψ0's expert reads), "last_hidden_state":
    [B, L, D] after it}, in the model's compute dtype.

    Splits the model at the jit boundary and calls `jit_apply`, compiled once per model structure,
    grid and input shapes; new input values do not retrace. Callable inside an outer jit too (then
    input_ids may be traced, the grid may not). On concrete input_ids the image-token count is checked.
    """
    grid = static_grid(image_grid_thw, model.visual.merge)
    n_tokens = sum(t * h * w for t, h, w in grid) // model.visual.merge**2
    if not isinstance(input_ids, jax.core.Tracer):
        ids, mask = np.asarray(input_ids), np.asarray(attention_mask)
        found = int(((ids == model.config["image_token_id"]) & (mask != 0)).sum())
        if found != n_tokens:
            raise ValueError(f"{found} image tokens in input_ids but {n_tokens} visual features for {grid}")
    graphdef, state = nnx.split(model)
    return jit_apply(graphdef, state, input_ids, attention_mask, pixel_values, grid)


def make_forward(model: Qwen3VL, image_grid_thw):
    """→ `f(input_ids, attention_mask, pixel_values) -> dict` (as `forward`), jitted for one static grid,
    with the model split once here: the per-call host work is only the jit dispatch (`forward` splits
    the module graph on every call). The function holds the model's arrays as they are now; build a
    new one after changing the weights. Image-token counts are not checked (see `forward`).
    """
    grid = static_grid(image_grid_thw, model.visual.merge)
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)

    @jax.jit
    def run(leaves, input_ids, attention_mask, pixel_values):
        return apply(graphdef, jax.tree.unflatten(treedef, leaves), input_ids, attention_mask, pixel_values, grid)

    return lambda input_ids, attention_mask, pixel_values: run(leaves, input_ids, attention_mask, pixel_values)
