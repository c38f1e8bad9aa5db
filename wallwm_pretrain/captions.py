"""The caption vocabulary: UTF-8 bytes as tokens, shared by the data and the model.

Token ids: ``0`` pad, ``1`` begin, ``2 + byte`` for each byte of the UTF-8 text (so 258 ids).
No tokenizer is downloaded; the price is that captions are several times longer in tokens
than with a subword vocabulary, which is cheap at the smoke model's caption lengths. Every
caption starts with the begin token, so a dropped caption is that one token and
cross-attention always has a key.

This module is the one place the vocabulary is defined: ``wallwm_pretrain.data`` encodes with
it, ``wallwm_pretrain.model`` sizes its embedding and masks padding with it.
"""

from __future__ import annotations

import numpy as np

CAPTION_PAD = 0
CAPTION_BEGIN = 1
BYTE_OFFSET = 2
CAPTION_VOCAB = BYTE_OFFSET + 256


def encode_caption(text: str, max_bytes: int) -> np.ndarray:
    """UTF-8 bytes -> int64 tokens ``[BEGIN, 2 + b0, 2 + b1, ...]`` (at most ``max_bytes`` bytes)."""
    data = np.frombuffer(text.encode("utf-8")[:max_bytes], dtype=np.uint8).astype(np.int64) + BYTE_OFFSET
    return np.concatenate([[CAPTION_BEGIN], data]).astype(np.int64)


def decode_caption(tokens: np.ndarray) -> str:
    """The text of a token sequence (pad and begin tokens skipped; bad UTF-8 replaced)."""
    data = [int(t) - BYTE_OFFSET for t in tokens if int(t) >= BYTE_OFFSET]
    return bytes(data).decode("utf-8", errors="replace")
