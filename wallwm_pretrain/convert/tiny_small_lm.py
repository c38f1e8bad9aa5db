"""``make-tiny``'s ``small_lm/``: a tiny random Qwen3 causal LM with its tokenizer, the frozen
small LM that reads Staircase decoding's latents back into a reasoning trace
(``wallwm_pretrain.model.conditioner.small_lm``).

* ``config.json`` + ``model.safetensors``: transformers ``Qwen3ForCausalLM`` (two layers, input
  and output embeddings tied, as Qwen3's small models);
* the tokenizer files: the byte-level BPE tokenizer of ``vlm/`` (Qwen's pre-tokeniser split and
  special tokens, eos ``<|im_end|>``), trained here on the caption corpus plus the words of the
  reasoning traces ``data_tools build-conditioner`` writes, so a trace is a few dozen tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tiny_vlm import train_vlm_tokenizer

# initializer_range 0.5, not Qwen's 0.02: with 0.02 the (tied) output embeddings are so small that
# the logits of the random LM stay near uniform whatever its input, and no soft prefix can make it
# fit a trace (teacher-forced loss stuck near log(vocab)); a trained small LM is confident, and
# 0.5 gives the random one logits of that spread.
SMALL_LM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                tie_word_embeddings=True, initializer_range=0.5)
# the fixed words of a reasoning trace (data_tools.reasoning.reasoning_trace) and common words of
# manipulation captions, so that a trace is mostly whole-word tokens
TRACE_WORDS = """\
Task: Done: Now: Next: Why: to nothing. earlier) (1 (2 (3 (4 (5 (6 (7 (8 (9 ;
red green blue yellow orange pink purple white black cube cubes bowl plate gripper table drawer
lift raise lower carry bring move approach reach grasp grip release let go put place drop take
pick up onto into on in above over top of both and it the its to a from toward towards back
"""
SMALL_LM_VOCAB = 640


def build_tiny_small_lm(corpus: str, seed: int = 0) -> tuple:
    """The tokenizer and the model of ``small_lm/`` (uses the global torch RNG)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = train_vlm_tokenizer(corpus + TRACE_WORDS * 8, SMALL_LM_VOCAB)
    config = Qwen3Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None, **SMALL_LM)
    torch.manual_seed(seed * 1000 + 5)
    return tokenizer, Qwen3ForCausalLM(config).eval()


def save_tiny_small_lm(parts: tuple, folder: Path) -> None:
    """Write :func:`build_tiny_small_lm`'s parts into one folder, each with its ``save_pretrained``."""
    tokenizer, model = parts
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
