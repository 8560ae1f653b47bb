"""A byte-level tokenizer that needs no download.

Prompts such as ``"advantage: high. bend to pick up the cracker box"`` become UTF-8 bytes shifted by
the number of special ids, framed by BOS/EOS and right-padded with PAD. Tokenisation runs on the
host, outside jit; only the int32 ids and the bool mask enter compiled code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
NUM_SPECIAL = 3
VOCAB_SIZE = 256 + NUM_SPECIAL


@dataclass(frozen=True)
class ByteTokenizer:
    """Byte-level tokenizer with a fixed padded length.

    Attributes:
      max_len: length L of every encoded row (BOS + bytes + EOS + padding). Prompts that do not fit
        raise ``ValueError`` rather than being truncated silently (a cut advantage prefix would
        change the conditioning).
    """

    max_len: int = 64

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def encode(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encodes prompts.

        Args:
          texts: one string or a sequence of B strings.

        Returns:
          ids: int32 [B, L] token ids (PAD_ID past the end).
          mask: bool [B, L], True on real tokens (BOS, bytes, EOS).
        """
        if isinstance(texts, str):
            texts = [texts]
        ids = np.full((len(texts), self.max_len), PAD_ID, dtype=np.int32)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"prompt {row} is {type(text).__name__}, expected str")
            body = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32) + NUM_SPECIAL
            n = body.shape[0] + 2
            if n > self.max_len:
                raise ValueError(f"prompt {row} needs {n} tokens but max_len is {self.max_len}: {text[:60]!r}...")
            ids[row, 0] = BOS_ID
            ids[row, 1 : n - 1] = body
            ids[row, n - 1] = EOS_ID
        return ids, ids != PAD_ID

    def decode(self, ids: np.ndarray) -> list[str]:
        """Inverse of ``encode`` for int [B, L] (or [L]) ids; special ids are dropped."""
        ids = np.atleast_2d(np.asarray(ids))
        out = []
        for row in ids:
            body = row[row >= NUM_SPECIAL] - NUM_SPECIAL
            out.append(bytes(body.astype(np.uint8).tolist()).decode("utf-8", errors="replace"))
        return out
