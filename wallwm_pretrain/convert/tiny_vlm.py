"""``make-tiny``'s ``vlm/``: a tiny random Qwen3.5 VLM with its tokenizer and image processor.

The folder has the files of a Qwen3.5 hub folder that the frozen conditioner reads
(``wallwm_pretrain.model.conditioner.vlm``), each written by its own library's ``save_pretrained``:

* ``config.json`` + ``model.safetensors``: transformers ``Qwen3_5ForConditionalGeneration``; the
  text model has one ``linear_attention`` (gated delta net) and one ``full_attention`` layer, as
  the real model interleaves them; the vision tower has one block, 8x8 patches, 2x2 merging and
  ``out_hidden_size`` = the text hidden size;
* ``preprocessor_config.json``: ``Qwen2VLImageProcessorPil`` (the PIL backend, since torchvision
  is not a dependency) with patch/merge/temporal sizes matching the vision tower and a pixel range
  that keeps a 32x32 camera frame at 32x32: 4x4 patches, merged to 2x2 = 4 tokens per view;
* ``tokenizer.json``/``tokenizer_config.json``/``chat_template.jinja``: a byte-level BPE
  ``Qwen3_5Tokenizer`` trained here with the ``tokenizers`` library (Qwen's pre-tokeniser split)
  on the caption corpus of ``make-tiny``, with Qwen's special tokens, whose ids the model
  config's ``image_token_id``/``video_token_id``/``vision_start_token_id``/``vision_end_token_id``
  name, and a chat template that renders a turn the way Qwen's does (one
  ``<|vision_start|><|image_pad|><|vision_end|>`` per image), so that the tiny and the real model
  take the same path through the conditioner.

A ``Qwen3VLProcessor`` (``processor_config.json``) is not written: it cannot be built without a
video processor, and every Qwen video processor needs torchvision. The conditioner therefore reads
the image processor and the tokenizer separately.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

VLM_VOCAB = 320
# Qwen's special tokens, ids 0.. in this order; the pad token is <|endoftext|>, as in Qwen.
VLM_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                      "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
VLM_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                layer_types=["linear_attention", "full_attention"], num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, linear_num_key_heads=2,
                linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
                linear_conv_kernel_dim=4, max_position_embeddings=512,
                # 16 * 0.5 = 8 rotary dims = 4 frequencies, split 2/1/1 over time/height/width
                rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                     partial_rotary_factor=0.5, mrope_section=[2, 1, 1],
                                     mrope_interleaved=True))
VLM_VISION = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=8,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16)
# Pixel range of the image processor: at least one merged token (16x16), at most 64x64; a 32x32
# frame is a multiple of patch * merge = 16 and inside the range, so it is not resized.
VLM_MIN_PIXELS = 16 * 16
VLM_MAX_PIXELS = 64 * 64

# One turn per message; images as Qwen renders them, text as given; no default system turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_vlm_tokenizer(corpus: str, vocab_size: int = VLM_VOCAB):
    """A byte-level BPE ``Qwen3_5Tokenizer`` trained on ``corpus``, Qwen's special tokens first.

    ``eos_token`` is ``<|im_end|>`` (the end of a chat turn) and ``pad_token`` ``<|endoftext|>``,
    as in Qwen's instruction-tuned tokenizers.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX, Qwen3_5Tokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(VLM_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus.splitlines(), trainer)
    trained = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tokenizer = Qwen3_5Tokenizer(vocab=trained["vocab"], merges=merges, unk_token=None,
                                 eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": list(VLM_SPECIAL_TOKENS[1:])})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_image_processor():
    """The PIL-backend Qwen image processor matching :data:`VLM_VISION` (32x32 -> 4 tokens)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(patch_size=VLM_VISION["patch_size"],
                                    merge_size=VLM_VISION["spatial_merge_size"],
                                    temporal_patch_size=VLM_VISION["temporal_patch_size"],
                                    size={"shortest_edge": VLM_MIN_PIXELS,
                                          "longest_edge": VLM_MAX_PIXELS})


def tiny_vlm(tokenizer, seed: int = 0):
    """A tiny random ``Qwen3_5ForConditionalGeneration`` whose token ids match ``tokenizer``."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in VLM_SPECIAL_TOKENS}
    text = dict(VLM_TEXT, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id)
    vision = dict(VLM_VISION, out_hidden_size=VLM_TEXT["hidden_size"])
    config = Qwen3_5Config(text_config=text, vision_config=vision,
                           image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"],
                           vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed * 1000 + 4)
    return Qwen3_5ForConditionalGeneration(config).eval()


def build_tiny_vlm(corpus: str, seed: int = 0) -> tuple:
    """The tokenizer, the image processor and the model of ``vlm/`` (uses the global torch RNG)."""
    tokenizer = train_vlm_tokenizer(corpus)
    return tokenizer, tiny_image_processor(), tiny_vlm(tokenizer, seed)


def save_tiny_vlm(parts: tuple, folder: Path) -> None:
    """Write :func:`build_tiny_vlm`'s parts into one folder, each with its ``save_pretrained``."""
    tokenizer, image_processor, model = parts
    model.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
