"""The text-conditioner parts of the ``model`` section: the conditioner heads on a frozen VLM,
the Staircase branch, and unified mode's text-context sources (read by ``model/conditioner``
and ``model/context.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Union

from wallwm_pretrain.config.base import AUTO, ConfigError


@dataclass
class ConditionerConfig:
    """The text conditioner (``model.kind=conditioner``): a frozen VLM and the heads trained on it.

    The heads read the VLM's last hidden states of (camera views, prompt = task + events done);
    ``L_text = l_align * MSE + l_next * CE + l_time * Huber`` (``model/conditioner``)."""

    vlm: str = ""
    """Folder of the frozen vision-language model (transformers ``Qwen3_5ForConditionalGeneration``
    with its processor, e.g. ``vlm/`` of ``python -m wallwm_pretrain.convert make-tiny``)."""
    vlm_dtype: str = "auto"
    """dtype of the frozen VLM's weights: ``float32``, ``bfloat16``, or ``auto`` (bfloat16 where
    CUDA is available, float32 otherwise). The heads keep float32 master weights either way."""
    hidden_size: int = 128
    """Width of the trained heads."""
    num_heads: int = 4
    decoder_layers: int = 2
    """Layers of the next-event head (a small causal decoder cross-attending to the VLM states)."""
    align_layers: int = 1
    """Layers of the alignment head (learned position queries cross-attending to the VLM states)."""
    caption_tokens: int = 32
    """Longest next-event caption the next-event head writes, in VLM tokens (end token included)."""
    align_tokens: int = 64
    """Most text-encoder positions the alignment head writes (longer targets are cut)."""
    text_dim: Union[int, str] = AUTO
    """Width of the text encoder's states (the alignment target); ``auto`` = index.json's."""
    max_done: int = 8
    """Captions of done events the prompt lists (the most recent ones)."""
    l_align: float = 1.0
    l_next: float = 1.0
    l_time: float = 0.1

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_heads", "decoder_layers", "align_layers", "caption_tokens", "align_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.conditioner.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_done < 0:
            raise ConfigError(f"model.conditioner.max_done must be >= 0, got {self.max_done}")
        if self.vlm_dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"model.conditioner.vlm_dtype must be auto, float32 or bfloat16, got {self.vlm_dtype!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"model.conditioner.hidden_size ({self.hidden_size}) must be divisible by "
                              f"model.conditioner.num_heads ({self.num_heads})")
        if self.text_dim != AUTO and (not isinstance(self.text_dim, int) or self.text_dim < 1):
            raise ConfigError(f"model.conditioner.text_dim must be 'auto' or an int >= 1, got {self.text_dim!r}")
        for name in ("l_align", "l_next", "l_time"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.conditioner.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class StaircaseConfig:
    """Staircase decoding (``model/conditioner/staircase.py``, ``small_lm.py``): K_c reasoning
    latents from a mixture-of-transformers branch beside the frozen VLM (``model.conditioner.vlm``),
    read back into a reasoning trace by a frozen small LM; only the branch and the prefix projector
    train, on ``L_CoT = -sum_m log P(r_m | z, r_<m)``."""

    latents: int = 4
    """K_c: latent positions after the context."""
    relay_depth: int = 1
    """N_r, in branch layers: the lower layers (< N_r) run for latent 1 only; its layer-N_r state
    (the relay) starts latents 2..K_c. 0 <= N_r < branch layers (checked against the VLM)."""
    layer_group: int = 1
    """VLM text layers per branch layer: branch layer j reads the context at VLM layer j * group
    (the VLM's layer count must be a multiple)."""
    num_heads: int = 4
    """Attention heads of the branch (its width is the VLM's hidden size, which they must divide)."""
    ffn_mult: int = 4
    """Branch FFN width = ffn_mult * the VLM's hidden size."""
    small_lm: str = ""
    """Folder of the frozen small LM (a transformers causal LM with its tokenizer, e.g.
    ``small_lm/`` of ``python -m wallwm_pretrain.convert make-tiny``)."""
    prefix_per_latent: int = 1
    """Soft prefix embeddings of the small LM per latent (the prefix has K_c * this many)."""
    trace_tokens: int = 64
    """Longest reasoning trace, in small-LM tokens (end token included; longer traces are cut)."""

    def __post_init__(self) -> None:
        for name in ("latents", "layer_group", "num_heads", "ffn_mult", "prefix_per_latent", "trace_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.staircase.{name} must be >= 1, got {getattr(self, name)}")
        if self.relay_depth < 0:
            raise ConfigError(f"model.staircase.relay_depth must be >= 0, got {self.relay_depth}")


@dataclass
class ContextConfig:
    """Unified mode's text-context sources beyond the atomic instruction (``model/context.py``):
    ``global``, the conditioner's aligned states of the task (its adapter and alignment head, on
    the frozen VLM of ``model.conditioner``), and ``staircase``, Staircase latents (the branch of
    ``model.staircase``) through a learned projection. Both read the frozen VLM. On the Wan
    towers they replace the text encoder's states; on the small towers, the caption encoder's
    output (the aligned states pass a learned projection ``text_dim -> hidden_size`` there)."""

    sources: List[str] = field(default_factory=list)
    """Sources the model builds: any of ``global``, ``staircase`` (``atomic`` needs nothing).
    Empty = none (every row reads the text-encoder states the batch carries)."""
    conditioner_from: str = ""
    """Weights of the trained conditioner (stage 3: a checkpoint step or run folder, or an
    export) whose ``adapter.*`` and ``align.*`` start ``context.adapter`` / ``context.align``;
    empty = their fresh initialisation. Read with ``model.init_from`` (not on resume)."""
    staircase_from: str = ""
    """Weights of the trained Staircase branch (stage 4) whose ``branch.*`` start
    ``context.branch``; empty = fresh initialisation. Read with ``model.init_from``."""

    def __post_init__(self) -> None:
        bad = [s for s in self.sources if s not in ("global", "staircase")]
        if bad or len(set(self.sources)) != len(self.sources):
            raise ConfigError(f"model.context.sources: each of global, staircase at most once, got {list(self.sources)}")
