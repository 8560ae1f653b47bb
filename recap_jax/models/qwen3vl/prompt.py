"""Qwen3-VL prompt: one user turn [image, instruction] through the checkpoint's own chat template."""

from __future__ import annotations

import numpy as np

IMAGE_PAD = "<|image_pad|>"


def prompt_text(tokenizer, instruction: str, num_image_tokens: int) -> str:
    """The chat template of one user turn [image, instruction] + generation prompt, as the tokenizer's own
    template renders it, with the one `<|image_pad|>` expanded to `num_image_tokens` (as the processor does)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("tokenizer has no chat_template (load it from the checkpoint's directory)")
    if num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if text.count(IMAGE_PAD) != 1:
        raise ValueError(f"chat template rendered {text.count(IMAGE_PAD)} {IMAGE_PAD} tokens, expected 1")
    return text.replace(IMAGE_PAD, IMAGE_PAD * num_image_tokens)


def prompt_ids(tokenizer, instruction: str, num_image_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """→ (input_ids int32 [1, L], attention_mask int32 [1, L]) of `prompt_text` (no added special tokens).

    `tokenizer` is transformers' tokenizer loaded from local files (AutoTokenizer.from_pretrained(dir)).
    """
    ids = np.asarray(
        tokenizer(prompt_text(tokenizer, instruction, num_image_tokens), add_special_tokens=False)["input_ids"]
    )
    ids = ids.astype(np.int32)[None]
    return ids, np.ones_like(ids)
