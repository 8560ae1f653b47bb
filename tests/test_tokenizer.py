import numpy as np
import pytest

from recap_jax.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, ByteTokenizer


def test_round_trip_and_mask():
    tok = ByteTokenizer(max_len=64)
    texts = ["advantage: high. bend to pick up the cracker box", "bend to pick up the cracker box"]
    ids, mask = tok.encode(texts)
    assert ids.shape == (2, 64) and ids.dtype == np.int32 and mask.dtype == bool
    assert tok.decode(ids) == texts
    assert ids[0, 0] == BOS_ID and ids[1, mask[1].sum() - 1] == EOS_ID
    assert (ids[~mask] == PAD_ID).all()


def test_high_low_bare_differ():
    tok = ByteTokenizer(max_len=64)
    ids, _ = tok.encode(["advantage: high. x", "advantage: low. x", "x"])
    assert not np.array_equal(ids[0], ids[1]) and not np.array_equal(ids[0], ids[2])


def test_too_long_prompt_is_an_error():
    with pytest.raises(ValueError, match="max_len"):
        ByteTokenizer(max_len=8).encode("bend to pick up the cracker box")
