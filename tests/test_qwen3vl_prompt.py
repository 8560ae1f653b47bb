"""qwen3vl.prompt_ids on a tiny local tokenizer with Qwen's special tokens and Qwen3-VL's chat template."""

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

pytest.importorskip("jinja2", reason="transformers renders chat templates with jinja2")

from recap_jax.models import qwen3vl

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
# Qwen3-VL-Instruct's template, user-turn part (image / text content items, generation prompt).
TEMPLATE = (
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n"
    "{% if message.content is string %}{{ message.content }}{%- else %}{%- for c in message.content %}"
    "{%- if c.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif c.type == 'text' %}{{ c.text }}{%- endif %}{%- endfor %}{%- endif %}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    words = ["user", "assistant", "\n", "advantage:", "high.", "bend", "to", "pick", "up", "the", "box", "[UNK]"]
    vocab = {w: i for i, w in enumerate(words)} | {s: 900 + i for i, s in enumerate(SPECIAL)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit()])
    tok.add_special_tokens(SPECIAL)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<|im_end|>")
    fast.chat_template = TEMPLATE
    d = tmp_path_factory.mktemp("tok")
    fast.save_pretrained(d)
    return AutoTokenizer.from_pretrained(d)


def test_prompt_string_and_ids(tokenizer):
    text = qwen3vl.prompt_text(tokenizer, "advantage: high. bend to pick up the box", 3)
    want = (
        "<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * 3 + "<|vision_end|>advantage: high. bend to pick up"
        " the box<|im_end|>\n<|im_start|>assistant\n"
    )
    assert text == want
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "advantage: high. bend to pick up the box"}],
        }
    ]
    ref = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == ref.replace("<|image_pad|>", "<|image_pad|>" * 3)
    ids, mask = qwen3vl.prompt_ids(tokenizer, "advantage: high. bend to pick up the box", 3)
    assert ids.shape == mask.shape == (1, len(tokenizer(want, add_special_tokens=False)["input_ids"]))
    np.testing.assert_array_equal(ids[0], tokenizer(want, add_special_tokens=False)["input_ids"])
    assert (ids[0] == 905).sum() == 3 and ids[0, 0] == 901 and mask.all()
