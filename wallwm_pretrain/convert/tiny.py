"""``make-tiny``: tiny random Wan-architecture models and a VLM, in their own libraries' formats.

Writes the folder layout of a diffusers Wan pipeline (``Wan-AI/Wan2.2-TI2V-5B-Diffusers`` has
the same sub-folders), each with its own library's ``save_pretrained``:

* ``transformer/``: diffusers ``WanTransformer3DModel`` (text-to-video, no image embedder),
  ``in_channels = out_channels`` = the VAE's ``z_dim``, ``text_dim`` = the text encoder's
  ``d_model``;
* ``vae/``: diffusers ``AutoencoderKLWan``, 3-D causal, temporal compression 4 (1 + 4k frames ->
  1 + k latents), spatial compression 4, with a ``latents_mean``/``latents_std`` of length
  ``z_dim`` that are not 0/1, so that normalisation is exercised;
* ``text_encoder/``: transformers ``UMT5EncoderModel``;
* ``tokenizer/``: a T5-style Unigram tokenizer (``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, an
  end-of-sequence token appended), trained here with the ``tokenizers`` library on a small
  built-in corpus and saved as a transformers fast tokenizer. It sits beside the encoder, as in
  the diffusers Wan layout, and ``data_tools embed-captions`` finds it there;
* ``vlm/``: transformers ``Qwen3_5ForConditionalGeneration`` with its PIL image processor and a
  byte-level BPE tokenizer trained here on the same corpus, for the frozen conditioner (see
  ``tiny_vlm``);
* ``small_lm/``: transformers ``Qwen3ForCausalLM`` with a byte-level BPE tokenizer, the frozen small
  LM of Staircase decoding (see ``tiny_small_lm``).

Everything is deterministic given the seed (same bytes), and takes seconds on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from .errors import ConvertError
from .tiny_small_lm import build_tiny_small_lm, save_tiny_small_lm
from .tiny_vlm import build_tiny_vlm, save_tiny_vlm

FOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "vlm", "small_lm")

# Sizes: as small as the architectures allow while keeping every part (3-D rotary split over
# frame/height/width, several heads, two blocks, two VAE down-sampling stages) non-degenerate.
VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1,
           temperal_downsample=[True, True], scale_factor_temporal=4, scale_factor_spatial=4)
TEXT = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=16,
            dropout_rate=0.0, feed_forward_proj="gated-gelu")
TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                   freq_dim=16, ffn_dim=48, num_layers=2, rope_max_seq_len=64)
TOKENIZER_VOCAB = 256
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5/UMT5

# Built-in training text of the tokenizer: robot captions of the kind the shards carry.
CORPUS = """\
pick up the red block and place it in the bowl
reach towards the handle of the drawer
open the drawer and pull it out
close the drawer by pushing it in
grasp the green cube with the gripper
lift the blue cube above the table
transport the object to the goal
place the mug on the plate
push the puck to the target
press the button from the top
descend to the block and close the gripper
release the cube and move the arm back
open the door by its handle
pick up the yellow ball again after it slipped
move the cup to the left of the box
stack the small block on the large block
put the spoon into the drawer
rotate the knob to the right
wipe the table with the sponge
pour the water into the glass
"""


def _seeded(seed: int, offset: int) -> None:
    torch.manual_seed(seed * 1000 + offset)


def train_tokenizer(vocab_size: int = TOKENIZER_VOCAB, corpus: str = CORPUS):
    """A T5-style Unigram tokenizer trained on ``corpus``, as a transformers ``T5TokenizerFast``.

    The ``tokenizers`` library trains the Unigram model; its pieces and scores then build a
    ``T5TokenizerFast``, which adds T5's normaliser, metaspace pre-tokeniser and the
    ``</s>`` post-processor, so the result behaves like UMT5's own tokenizer class.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(corpus.splitlines(), trainer)
    # The trainer's scores vary in the last digits from run to run and equal scores come out in
    # varying order; rounding and a fixed order (special tokens first, then by score and piece)
    # give the same tokenizer every time.
    trained = json.loads(tok.to_str())["model"]["vocab"]
    scores = {p: round(float(s), 6) for p, s in trained if p not in SPECIAL_TOKENS}
    pieces = [(p, 0.0) for p in SPECIAL_TOKENS]
    pieces += sorted(scores.items(), key=lambda ps: (-ps[1], ps[0]))
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def tiny_vae(seed: int = 0):
    """A tiny random ``AutoencoderKLWan`` (z_dim 4, 4x temporal, 4x spatial compression)."""
    from diffusers import AutoencoderKLWan

    rng = np.random.default_rng(seed)
    z = VAE["z_dim"]
    mean = [round(float(v), 4) for v in rng.normal(0.0, 0.5, z)]
    std = [round(float(v), 4) for v in rng.uniform(0.5, 2.0, z)]
    _seeded(seed, 1)
    return AutoencoderKLWan(**VAE, latents_mean=mean, latents_std=std).eval()


def tiny_text_encoder(vocab_size: int, seed: int = 0):
    """A tiny random ``UMT5EncoderModel`` over ``vocab_size`` tokens."""
    from transformers import UMT5Config, UMT5EncoderModel

    _seeded(seed, 2)
    config = UMT5Config(vocab_size=vocab_size, is_encoder_decoder=False, use_cache=False, **TEXT)
    return UMT5EncoderModel(config).eval()


def tiny_transformer(z_dim: int, text_dim: int, seed: int = 0):
    """A tiny random text-to-video ``WanTransformer3DModel`` (no image embedder)."""
    from diffusers import WanTransformer3DModel

    _seeded(seed, 3)
    return WanTransformer3DModel(in_channels=z_dim, out_channels=z_dim, text_dim=text_dim,
                                 image_dim=None, **TRANSFORMER).eval()


def make_tiny(out: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``vlm/``, ``small_lm/``
    under ``out``.

    The folder is written beside ``out`` and renamed over it at the end; an existing ``out`` is
    replaced only when it holds nothing but these sub-folders. Returns sub-folder name -> path.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or not set(os.listdir(out)) <= set(FOLDERS)):
        raise ConvertError(f"{out} exists and is not a make-tiny output folder (it may hold only "
                           f"{', '.join(FOLDERS)}); refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.random.fork_rng(devices=[]):
        tokenizer = train_tokenizer()
        vae = tiny_vae(seed)
        text_encoder = tiny_text_encoder(len(tokenizer), seed)
        transformer = tiny_transformer(vae.config.z_dim, text_encoder.config.d_model, seed)
        vlm = build_tiny_vlm(CORPUS, seed)
        small_lm = build_tiny_small_lm(CORPUS, seed)
    try:
        tokenizer.save_pretrained(tmp / "tokenizer")
        vae.save_pretrained(tmp / "vae")
        text_encoder.save_pretrained(tmp / "text_encoder")
        transformer.save_pretrained(tmp / "transformer")
        save_tiny_vlm(vlm, tmp / "vlm")
        save_tiny_small_lm(small_lm, tmp / "small_lm")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {name: out / name for name in FOLDERS}


HELP = """\
Write tiny random Wan-architecture models (a diffusers Wan pipeline's folder layout), a tiny
Qwen3.5 vision-language model and a tiny Qwen3 causal LM for tests and laptop runs;
deterministic given --seed, seconds on a CPU, nothing is downloaded.

folders written under --out:
  transformer/   diffusers WanTransformer3DModel (the video tower's DiT; text-to-video, no
                 image embedder; in/out channels = the VAE's z_dim, text_dim = the encoder's
                 d_model); convert it like a real Wan2.2 transformer folder
  vae/           diffusers AutoencoderKLWan (3-D causal video VAE, z_dim 4, 1 + 4k frames ->
                 1 + k latents, 4x spatial, latents_mean/latents_std in config.json);
                 for `python -m data_tools encode-latents --vae`
  text_encoder/  transformers UMT5EncoderModel; for `python -m data_tools embed-captions
                 --text-encoder` (which finds the tokenizer beside it)
  tokenizer/     T5-style Unigram tokenizer trained on a built-in caption corpus with the
                 `tokenizers` library, saved as a transformers fast tokenizer
  vlm/           transformers Qwen3_5ForConditionalGeneration (a frozen vision-language model
                 for the conditioner: one linear-attention and one full-attention layer, a
                 one-block vision tower; a 32x32 camera view becomes 4 image tokens) with its
                 PIL image processor and a byte-level BPE tokenizer with Qwen's special tokens
                 and a chat template, all in one folder
  small_lm/      transformers Qwen3ForCausalLM with a byte-level BPE tokenizer (the frozen
                 small LM that reads Staircase decoding's latents back into a reasoning trace;
                 model.staircase.small_lm)

example:
  python -m wallwm_pretrain.convert make-tiny --out /tmp/tiny-wan --seed 0
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("make-tiny", help="tiny random Wan transformer, VAE, UMT5 encoder, "
                              "tokenizer, Qwen3.5 VLM and Qwen3 small LM for tests and laptops", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder (created or replaced)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    paths = make_tiny(args.out, args.seed)
    for name, path in paths.items():
        print(f"{name:13s} {path}")
    return 0
