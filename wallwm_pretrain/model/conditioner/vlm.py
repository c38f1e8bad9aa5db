"""The conditioner's frozen vision-language model: camera views + a prompt -> per-token states.

:class:`FrozenVLM` loads a transformers Qwen3.5 VLM (``Qwen3_5ForConditionalGeneration``; also
Qwen3-VL and Qwen2.5-VL, see :data:`SUPPORTED`) from a local folder, frozen (``eval()``,
``requires_grad_(False)``, run under ``torch.no_grad()``), and turns a batch of observations (V
camera views each) and prompts (the task and the captions of the events already done) into the
language model's last hidden states over the image and text tokens. The trained heads of the
conditioner read these states; the VLM is a plain object, not an
``nn.Module``, so its weights never enter the owner's ``state_dict`` or optimizer.

Prompt layout (one user turn, no system turn, no generation prompt), rendered by the folder's chat
template when its tokenizer has one, else by :func:`qwen_turn`, which writes the same text::

    <|im_start|>user\\n
    <|vision_start|><|image_pad|> x n<|vision_end|>      (once per view, views in order)
    {prompt}<|im_end|>\\n

where n = the view's patch grid / merge_size**2 (4 for a 32x32 view of ``make-tiny``'s ``vlm/``).

The processor: a Qwen3.5 folder names ``Qwen3VLProcessor`` (Qwen2.5-VL ``Qwen2_5_VLProcessor``),
which cannot be built without a video processor, and Qwen's video processors need torchvision,
which this project does not depend on.
So the image processor (``AutoImageProcessor``, the PIL backend without torchvision) and the
tokenizer (``AutoTokenizer``) are loaded separately and :meth:`FrozenVLM.inputs` expands each
``<|image_pad|>`` into its n tokens and marks them in ``mm_token_type_ids`` itself: the two steps
the processor's ``__call__`` adds to them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .errors import ConditionerError

# config.json "architectures" entries this code serves (transformers class names); the tests run
# each on a tiny random model. They share the Qwen image processor, the special tokens, M-RoPE from
# mm_token_type_ids and the `.model(...)` forward; Qwen3.5 mixes in linear-attention layers.
SUPPORTED = ("Qwen3_5ForConditionalGeneration", "Qwen3VLForConditionalGeneration",
             "Qwen2_5_VLForConditionalGeneration")
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
# A fast tokenizer's file, or the vocab + merges a byte-level BPE tokenizer is built from.
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
# The token that ends a caption: Qwen's end of a chat turn, in every Qwen VL tokenizer.
CAPTION_END = "<|im_end|>"
PAD = "<|endoftext|>"
IMAGE_PAD, VISION_START, VISION_END = "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"


def check_config(folder: str | Path) -> dict:
    """The parsed ``config.json`` of a supported VLM folder, read alone (no weights needed: the
    memory planner sizes a model from it). Raises :class:`ConditionerError` naming the folder
    or file: no such folder, no or unreadable ``config.json``, an architecture other than
    :data:`SUPPORTED` (e.g. a UMT5 text encoder)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConditionerError(f"{folder}: no such VLM folder")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ConditionerError(f"{cfg_path}: missing; a VLM folder written by save_pretrained "
                               f"has its config.json")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as err:
        raise ConditionerError(f"{cfg_path}: not readable JSON ({err})") from err
    archs = config.get("architectures") or []
    if not any(a in SUPPORTED for a in archs):
        raise ConditionerError(f"{cfg_path}: architectures {archs} (model_type "
                               f"{config.get('model_type')!r}) is not a supported VLM; expected "
                               f"one of {list(SUPPORTED)}")
    return config


def check_vlm_folder(folder: str | Path) -> dict:
    """Check that ``folder`` holds a supported VLM with its tokenizer and image processor.

    Returns the parsed ``config.json``. Raises :class:`ConditionerError` naming the folder or file:
    what :func:`check_config` checks, then no weights, no image processor config or no
    tokenizer files.
    """
    folder = Path(folder)
    config = check_config(folder)
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise ConditionerError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES)})")
    if not (folder / IMAGE_PROCESSOR_FILE).is_file():
        raise ConditionerError(f"{folder / IMAGE_PROCESSOR_FILE}: missing; the VLM's image "
                               f"processor config")
    if not any(all((folder / f).is_file() for f in files) for files in TOKENIZER_FILES):
        raise ConditionerError(f"{folder}: no tokenizer files (tokenizer.json, or vocab.json + "
                               f"merges.txt)")
    return config


def _model_class(config: dict):
    import transformers

    archs = config.get("architectures") or []
    names = [a for a in archs if a in SUPPORTED]
    if not names:
        raise ConditionerError(f"config architectures {archs} name no supported VLM; expected one "
                               f"of {list(SUPPORTED)}")
    return getattr(transformers, names[0])


def vlm_memory_bytes(config: dict, dtype_bytes: int) -> int:
    """Bytes of the frozen VLM's parameters at ``dtype_bytes`` per element, from its config.json.

    The model is built on the meta device (no memory, no weights read), so the count is the
    architecture's own, shared (tied) parameters counted once. Buffers (rotary tables) and
    activations are not included. This is the whole model, as one rank holds it when the frozen
    backbone is replicated. ``config`` is the dict :func:`check_vlm_folder` returns.
    """
    cls = _model_class(config)
    cfg = cls.config_class.from_dict(config)
    with torch.device("meta"):
        model = cls(cfg)
    return sum(p.numel() for p in model.parameters()) * int(dtype_bytes)


def qwen_turn(views: int, prompt: str) -> str:
    """The user turn of the module docstring, for tokenizers without a chat template."""
    images = f"{VISION_START}{IMAGE_PAD}{VISION_END}" * views
    return f"<|im_start|>user\n{images}{prompt}<|im_end|>\n"


class FrozenVLM:
    """A frozen Qwen3.5 VLM with its tokenizer and image processor; see the module docstring.

    Build it with :meth:`load`. Nothing here trains: the parameters have ``requires_grad`` False,
    the model is in eval mode, and :meth:`encode` runs under ``torch.no_grad()``.
    """

    def __init__(self, folder: Path, model, tokenizer, image_processor):
        self._folder = folder
        self._model = model
        self._tokenizer = tokenizer
        self._image_processor = image_processor
        self._image_token_id = model.config.image_token_id
        self._eos_id = tokenizer.convert_tokens_to_ids(CAPTION_END)
        if self._eos_id is None or self._eos_id == tokenizer.unk_token_id:
            raise ConditionerError(f"{folder}: the tokenizer has no {CAPTION_END} token")
        pad = tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else tokenizer.convert_tokens_to_ids(PAD)

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> FrozenVLM:
        """Load the model, tokenizer and image processor from ``folder`` (local files only).

        Args:
            folder: a folder :func:`check_vlm_folder` accepts (e.g. ``make-tiny``'s ``vlm/``).
            device: where the model runs; :meth:`encode` moves its inputs there.
            dtype: the weights' dtype (the states come back as float32 whatever it is).
        """
        from transformers import AutoImageProcessor, AutoTokenizer

        folder = Path(folder)
        config = check_vlm_folder(folder)
        model = _model_class(config).from_pretrained(folder, dtype=dtype, local_files_only=True)
        model = model.to(device).eval().requires_grad_(False)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        return cls(folder, model, tokenizer, image_processor)

    @property
    def folder(self) -> Path:
        """The folder the VLM was loaded from."""
        return self._folder

    @property
    def hidden_size(self) -> int:
        """D: the language model's hidden size, the last dim of :meth:`encode`'s states."""
        return self._model.config.text_config.hidden_size

    @property
    def vocab_size(self) -> int:
        """Rows of the token embedding and LM head (Qwen pads them beyond the tokenizer)."""
        return self._model.config.text_config.vocab_size

    @property
    def tokenizer(self):
        """The transformers tokenizer of the folder."""
        return self._tokenizer

    @property
    def pad_token_id(self) -> int:
        """The padding id of :meth:`tokenize`: the pad token, Qwen's ``<|endoftext|>``."""
        return self._pad_id

    @property
    def eos_token_id(self) -> int:
        """The id that ends a caption in :meth:`tokenize`: ``<|im_end|>``, Qwen's end of a turn.

        It is fixed to ``<|im_end|>`` rather than the tokenizer's ``eos_token`` (which is
        ``<|endoftext|>`` in Qwen's base tokenizers), so a caption ends the same way whichever
        Qwen tokenizer the folder has: as the model's own answer turn would.
        """
        return self._eos_id

    @property
    def device(self) -> torch.device:
        """The model's device: where :meth:`encode` runs and returns its tensors."""
        return self._model.device

    def to(self, device: str | torch.device) -> FrozenVLM:
        """Move the frozen model to ``device`` (in place; a no-op where it already is)."""
        if torch.device(device) != self._model.device:
            self._model.to(device)
        return self

    def num_parameters(self) -> int:
        """Elements of the frozen weights (shared tensors counted once)."""
        return sum(p.numel() for p in self._model.parameters())

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Captions from rows of token ids: each row up to its first :attr:`eos_token_id`."""
        out = []
        for row in ids.tolist():
            if self._eos_id in row:
                row = row[:row.index(self._eos_id)]
            out.append(self._tokenizer.decode(row, skip_special_tokens=True).strip())
        return out

    def input_embeddings(self) -> torch.Tensor:
        """The frozen input token embedding weight, float [vocab_size, D], no grad."""
        return self._model.get_input_embeddings().weight.detach()

    def output_embeddings(self) -> torch.Tensor:
        """The frozen LM head weight, float [vocab_size, D], no grad (logits = states @ it.T)."""
        return self._model.get_output_embeddings().weight.detach()

    def tokenize(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions as plain text tokens (no chat template) followed by :attr:`eos_token_id`.

        A caption longer than ``max_length - 1`` tokens is cut there, so every row ends with the
        eos token. Rows are right-padded with :attr:`pad_token_id` to ``max_length`` (a fixed
        length, so batches have one shape).

        Returns:
            ids: int64 [B, max_length]; mask: bool [B, max_length], True on the caption's tokens
            and its eos.
        """
        if max_length < 1:
            raise ConditionerError(f"tokenize: max_length must be >= 1, got {max_length}")
        texts = list(texts)
        rows = self._tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        ids = torch.full((len(rows), max_length), self._pad_id, dtype=torch.int64)
        mask = torch.zeros((len(rows), max_length), dtype=torch.bool)
        for i, row in enumerate(rows):
            row = list(row[:max_length - 1]) + [self._eos_id]
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.int64)
            mask[i, :len(row)] = True
        return ids, mask

    def prompt_text(self, views: int, prompt: str) -> str:
        """One sample's turn before the image tokens are expanded (see the module docstring)."""
        if self._tokenizer.chat_template:
            content = [{"type": "image"}] * views + [{"type": "text", "text": prompt}]
            return self._tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                       tokenize=False, add_generation_prompt=False)
        return qwen_turn(views, prompt)

    def inputs(self, images, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The model inputs of :meth:`encode` (on the CPU): what ``Qwen3VLProcessor`` would return.

        ``input_ids``/``attention_mask`` [B, L] (right-padded), ``mm_token_type_ids`` [B, L] (1 on
        image tokens, 0 on text), ``pixel_values`` [patches, C * T * p * p] and
        ``image_grid_thw`` [B * V, 3], views sample-major. Arguments as in :meth:`encode`.
        """
        images = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if images.ndim != 5 or images.dtype != np.uint8 or images.shape[-1] != 3:
            raise ConditionerError(f"encode: images must be uint8 [B, V, H, W, 3], got "
                                   f"{images.dtype} {list(images.shape)}")
        b, v = images.shape[:2]
        if len(prompts) != b or b < 1 or v < 1:
            raise ConditionerError(f"encode: {b} samples of {v} views but {len(prompts)} prompts")
        pixels = self._image_processor(images=[images[i, j] for i in range(b) for j in range(v)],
                                       return_tensors="pt", input_data_format="channels_last")
        grid = pixels["image_grid_thw"]
        per_view = [int(n) for n in grid.prod(-1) // self._image_processor.merge_size ** 2]
        texts = []
        for i, prompt in enumerate(prompts):
            parts = self.prompt_text(v, prompt).split(IMAGE_PAD)
            if len(parts) != v + 1:
                raise ConditionerError(f"{self._folder}: the chat template rendered "
                                       f"{len(parts) - 1} {IMAGE_PAD} for {v} views")
            counts = per_view[i * v:(i + 1) * v]
            texts.append(parts[0] + "".join(IMAGE_PAD * n + p for n, p in zip(counts, parts[1:])))
        enc = self._tokenizer(texts, padding=True, padding_side="right", return_tensors="pt",
                              add_special_tokens=False)
        ids = enc["input_ids"]
        # text 0, image 1: the processor's mm_token_type_ids, from which M-RoPE positions come
        return {"input_ids": ids, "attention_mask": enc["attention_mask"],
                "mm_token_type_ids": (ids == self._image_token_id).to(torch.int32),
                "pixel_values": pixels["pixel_values"], "image_grid_thw": grid}

    @property
    def num_layers(self) -> int:
        """N: the language model's decoder layers (linear- and full-attention layers alike)."""
        return self._model.config.text_config.num_hidden_layers

    def layer_states(self, images, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The input of every decoder layer of the language model, for a branch that reads the
        frozen context layer by layer (Staircase decoding, ``staircase.py``).

        Arguments as in :meth:`encode`. Returns ``states`` float32 [N, B, L, D]: ``states[l]`` is
        what decoder layer l reads (``states[0]`` the input embeddings with the image features
        in place); zero at padding. ``valid`` bool [B, L] as in :meth:`encode`. Taken from
        transformers' ``output_hidden_states``, whose N + 1 entries are these N inputs and then
        the final (normed) output, which is dropped here.
        """
        inputs = self.inputs(images, prompts)
        dev = self.device
        inputs = {k: t.to(dev) for k, t in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
        with torch.no_grad():
            out = self._model.model(**inputs, use_cache=False, output_hidden_states=True)
        valid = inputs["attention_mask"].to(torch.bool)
        states = torch.stack(out.hidden_states[:self.num_layers]).float() * valid[None, ..., None]
        return states, valid

    def encode(self, images, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The language model's last hidden states over each sample's image and text tokens.

        Args:
            images: uint8 [B, V, H, W, C] (torch tensor or numpy array, C = 3): V camera views per
                sample, all of one size.
            prompts: B strings (the task and the captions of the events done so far).

        Returns:
            states: float32 [B, L, D]: the text model's final hidden states (after its final
            RMSNorm: the states its LM head reads) at every token of the turn laid out in the
            module docstring, image tokens included; L = the longest turn of the batch.
            valid: bool [B, L], False on padding. Padded positions of ``states`` are zero. Both
            are on the model's device.

        Right padding: the language model is causal (causal full attention; the linear-attention
        layers are a causal convolution and a recurrence), so pad tokens after a sample's last
        real token cannot reach its real states, and its tokens keep the positions they have when
        the sample runs alone. A sample's states therefore do not depend on what else is in the
        batch (up to float rounding).
        """
        inputs = self.inputs(images, prompts)
        dev = self.device
        inputs = {k: t.to(dev) for k, t in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
        with torch.no_grad():
            out = self._model.model(**inputs, use_cache=False)
        valid = inputs["attention_mask"].to(torch.bool)
        states = out.last_hidden_state.float() * valid[..., None]
        return states, valid
