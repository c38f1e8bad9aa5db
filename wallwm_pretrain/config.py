"""The one configuration schema of wallwm-pretrain.

Every run is described by a tree of dataclasses, loaded through ``OmegaConf.structured`` so
that a YAML preset (``configs/*.yaml``) or a ``key=value`` override that names an unknown key
or gives a value of the wrong type fails before any work starts. The error names the bad key
and the nearest valid one. Cross-field checks live in ``__post_init__`` / :func:`validate`.

Each section belongs to the code that reads it: ``data`` to ``wallwm_pretrain.data`` (what a
sample is, how batches are drawn), ``model`` to ``wallwm_pretrain.model`` (including what the
model consumes: control steps per latent frame, caption length), ``optim`` to
``wallwm_pretrain.optim``, ``train`` to the trainer, ``parallel`` to ``wallwm_pretrain.parallel``.
Keys that moved between sections fail naming their new place (:data:`MOVED_KEYS`); configs
stored in checkpoints written before the move are translated (:func:`config_from_stored`).

Trade-off: dataclasses cannot express "one of these sub-schemas", so mode-specific fields
(for example ``data.chunk_horizon``) sit beside the switch that uses them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from wallwm_pretrain.components import resolve_train_parts


class ConfigError(ValueError):
    """A user mistake in a preset or override (unknown key, wrong type, bad combination)."""


@dataclass
class CaptionDropConfig:
    """Length-aware caption drop: rho rises from rho_min to rho_max by a cosine ramp in L_e."""

    rho_min: float = 0.1
    """Drop probability for events of at most ``l_min`` frames."""
    rho_max: float = 0.9
    """Drop probability for events of at least ``l_max`` frames."""
    l_min: int = 129
    """Event length (frames) where the ramp starts (paper: 129)."""
    l_max: int = 220
    """Event length (frames) where the ramp ends (paper: 220)."""

    def __post_init__(self) -> None:
        if not (0.0 <= self.rho_min <= self.rho_max <= 1.0):
            raise ConfigError(
                f"data.caption_drop needs 0 <= rho_min <= rho_max <= 1, got rho_min={self.rho_min}, "
                f"rho_max={self.rho_max}"
            )
        if self.l_min >= self.l_max:
            raise ConfigError(
                f"data.caption_drop needs l_min < l_max, got l_min={self.l_min}, l_max={self.l_max}"
            )


@dataclass
class BalanceConfig:
    """Cluster-balanced mix over the vision-language x action cluster product.

    A sample in VL cluster v and action cluster a is kept with probability proportional to
    n_v^(alpha_vl - 1) * n_a^(alpha_action - 1), so the target mix is
    p(v, a) ~ n_(v,a) * n_v^(alpha_vl - 1) * n_a^(alpha_action - 1): alpha 1 = natural,
    0 = every cluster of that axis equally often (for independent axes).
    """

    alpha_vl: float = 1.0
    """Exponent on vision-language cluster counts (1 natural, 0 balanced)."""
    alpha_action: float = 1.0
    """Exponent on action cluster counts (1 natural, 0 balanced)."""

    def __post_init__(self) -> None:
        for name in ("alpha_vl", "alpha_action"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"data.balance.{name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def active(self) -> bool:
        return self.alpha_vl != 1.0 or self.alpha_action != 1.0


DATA_MODES = ("event", "chunk", "conditioner", "unified")
CONTEXT_SOURCES = ("atomic", "global", "staircase")


@dataclass
class DataConfig:
    """Where training samples come from and how they are batched."""

    shards: str = "data/shards/smoke"
    """Folder holding WebDataset ``*.tar`` shards and their ``index.json`` (from build-shards)."""
    batch_size: int = 8
    """Samples per rank per optimizer step."""
    num_workers: int = 0
    """DataLoader worker processes per rank (0 = read in the training process)."""
    shuffle_buffer: int = 64
    """Sample-level shuffle buffer; 0 disables sample shuffling."""
    mode: str = "event"
    """What a sample is. ``event``: one whole event with its next-event caption. ``chunk``: fixed
    ``chunk_horizon`` windows conditioned on the task instruction (the paper's baseline).
    ``conditioner``: one observation inside an event with the task and the captions already
    done, for the text conditioner (shards from ``data_tools build-conditioner``; batches are
    ``ConditionerBatch``, never length-bucketed, and caption drop does not apply).
    ``unified``: fixed ``chunk_horizon`` windows on an observation-centred window of latent
    frames (``history_latents`` before the anchor), tiled over whole episodes across event
    boundaries (shards from ``data_tools build-episodes``), each with a text-context source
    drawn from ``context_mix``."""
    chunk_horizon: int = 16
    """H_a, control steps per window in chunk and unified mode (N = H_a / K_p future latents)."""
    history_latents: int = 2
    """M, latent frames before the anchor in unified mode (``M * K_p`` control steps; windows
    near an episode's start repeat its first frame)."""
    context_mix: Dict[str, float] = field(default_factory=lambda: {"atomic": 1.0, "global": 0.0, "staircase": 0.0})
    """Unified mode: relative weights of the text-context sources a window is trained with,
    drawn per window: ``atomic`` (the caption of the event the window mostly covers), ``global``
    (the conditioner's aligned states of the task) or ``staircase`` (projected Staircase latents;
    these two need ``model.context``)."""
    max_frames: int = 48
    """Longest event kept whole, in control steps; longer events are cropped at a random start."""
    caption_drop: CaptionDropConfig = field(default_factory=CaptionDropConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    length_buckets: List[int] = field(default_factory=lambda: [8, 16, 32])
    """Upper bounds (control steps) of length buckets; a batch draws from one bucket so that
    short events are not padded to long ones. Empty = plain batching in stream order."""
    max_bad_samples: int = 0
    """Bad samples and unreadable shards that may be skipped over the whole run, each counted
    and logged once (an unreadable shard is not read again); 0 = stop at the first one with an
    error naming shard and key."""
    seed: int = 0
    """Seed for shard order, sample shuffling, crops and caption drop."""
    verify: str = "size"
    """Shards checked against index.json before the first step: ``size`` (bytes and sample
    count from the tar headers), ``sha256`` (also every byte's checksum) or ``none``."""

    def __post_init__(self) -> None:
        if self.verify not in ("size", "sha256", "none"):
            raise ConfigError(f"data.verify must be size, sha256 or none, got {self.verify!r}")
        if self.max_bad_samples < 0:
            raise ConfigError(f"data.max_bad_samples must be >= 0, got {self.max_bad_samples}")
        if self.mode not in DATA_MODES:
            raise ConfigError(f"data.mode must be one of {', '.join(DATA_MODES)}, got {self.mode!r}")
        if self.history_latents < 0:
            raise ConfigError(f"data.history_latents must be >= 0, got {self.history_latents}")
        unknown = sorted(set(self.context_mix) - set(CONTEXT_SOURCES))
        if unknown:
            raise ConfigError(f"data.context_mix: unknown source {unknown[0]!r}; the sources are "
                              f"{', '.join(CONTEXT_SOURCES)}")
        if any(w < 0 for w in self.context_mix.values()) or not sum(self.context_mix.values()) > 0:
            raise ConfigError(f"data.context_mix needs weights >= 0 with a positive sum, got {dict(self.context_mix)}")
        for name in ("batch_size", "max_frames", "chunk_horizon"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if list(self.length_buckets) != sorted(set(self.length_buckets)) or any(b < 1 for b in self.length_buckets):
            raise ConfigError(f"data.length_buckets must be increasing positive ints, got {list(self.length_buckets)}")


AUTO = "auto"
VIDEO_INPUTS = ("pixels", "latents")
# Model fields that describe the data; a run config takes them from the shards' index.json
# (``wallwm_pretrain.data.dims``) unless set.
DATA_DIMS = ("action_dim", "state_dim", "num_views", "image_size")


VIDEO_TOWERS = ("small", "wan")


@dataclass
class WanTowerConfig:
    """The shape of a Wan-architecture video tower (``model.video_tower=wan``): the arguments of
    diffusers' ``WanTransformer3DModel`` (its config.json), less the depth, which is
    ``model.num_layers`` (both towers have it). Defaults: Wan2.2 TI2V-5B's published config."""

    patch_size: List[int] = field(default_factory=lambda: [1, 2, 2])
    num_attention_heads: int = 24
    attention_head_dim: int = 128
    in_channels: int = 48
    out_channels: int = 48
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 14336
    cross_attn_norm: bool = True
    qk_norm: str = "rms_norm_across_heads"
    eps: float = 1e-6
    rope_max_seq_len: int = 1024

    def __post_init__(self) -> None:
        if len(self.patch_size) != 3 or any(p < 1 for p in self.patch_size):
            raise ConfigError(f"model.wan.patch_size must be three ints >= 1 (t, h, w), got {list(self.patch_size)}")
        for name in ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
                     "freq_dim", "ffn_dim", "rope_max_seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.wan.{name} must be >= 1, got {getattr(self, name)}")


MODEL_KINDS = ("towers", "conditioner", "staircase")
ACTION_PRETRAIN_MAPPINGS = ("symmetric", "anchor")


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


@dataclass
class ActionPretrainConfig:
    """How the video tower's noise level is paired with the action tower's in training
    (``model/anchor_noise.py``; the paper's action pretraining, stage 2).

    Flow time t runs from the data (t = 0) to pure noise (t = 1); the sampler integrates from
    t = 1 to t = 0 in ``schedule_steps`` Euler steps, the video tower's times mapped through its
    schedule (``model.video_time_shift``). The anchor is a step of that walk, not a raw time, so
    it keeps its meaning when the shift changes: the video tower sees the flow time the sampler
    feeds it at step ``anchor_step`` (counted from 0 at pure noise), ``t* = shift(1 - anchor_step /
    schedule_steps)``; the paper's step 45 of a 50-step schedule is t* = shift(0.1), a nearly clean
    video."""

    mapping: str = "symmetric"
    """``symmetric``: the video at its own noise level, one action draw per video forward (joint
    training; the default). ``anchor``: the video tower runs once per sample at the anchor time t*
    and ``draws`` action-noise draws reuse that one video forward in the same optimizer step, their
    action losses averaged. The anchor trains the action tower only: it needs
    ``model.video_loss_weight=0``, ``parallel.pp=1`` and a towers model."""
    anchor_step: int = 45
    """The Euler step of the sampler's walk whose video flow time is the anchor (0 = pure noise)."""
    schedule_steps: int = 50
    """Euler steps of the walk ``anchor_step`` counts in."""
    draws: int = 6
    """K: action-noise draws (each its own flow time and noise) per video forward (``anchor`` only)."""

    def __post_init__(self) -> None:
        if self.mapping not in ACTION_PRETRAIN_MAPPINGS:
            raise ConfigError(
                f"model.action_pretrain.mapping must be {' or '.join(ACTION_PRETRAIN_MAPPINGS)}, got {self.mapping!r}"
            )
        if self.schedule_steps < 1:
            raise ConfigError(f"model.action_pretrain.schedule_steps must be >= 1, got {self.schedule_steps}")
        if not 0 <= self.anchor_step < self.schedule_steps:
            raise ConfigError(
                f"model.action_pretrain.anchor_step must be in [0, schedule_steps={self.schedule_steps}) "
                f"(a step of the sampler's walk from noise, 0 = pure noise), got {self.anchor_step}"
            )
        if self.draws < 1:
            raise ConfigError(f"model.action_pretrain.draws must be >= 1, got {self.draws}")


@dataclass
class ModelConfig:
    """The dual-tower, layer-coupled denoiser (video tower + action tower)."""

    frame_stride: int = 4
    """Control steps per latent video frame (= K_p, action tokens per latent frame)."""
    video_input: str = "pixels"
    """What the video tower reads: ``pixels`` (frames, the fixed patchify) or ``latents`` (the
    frozen VAE's latents that ``python -m data_tools encode-latents`` added to the shards; the
    run stops at start, naming the shard folder, when its index.json records none, or records a
    temporal compression other than ``frame_stride``)."""
    caption_max_bytes: int = 64
    """Captions are UTF-8 bytes, truncated to this length (the caption encoder's positions)."""
    hidden_size: int = 128
    num_layers: int = 2
    """Depth of each tower; video block i is coupled to action block i."""
    num_heads: int = 4
    ffn_hidden_size: int = 256
    """Inner width of the gated FFN."""
    text_layers: int = 1
    """Transformer layers of the caption encoder (byte-level tokens)."""
    patch_size: int = 8
    """Square patch (pixels) of the fixed patchify that turns frames into video tokens."""
    image_size: Union[int, str] = 32
    """Frames are expected at this square resolution (build-shards --image-size); ``auto`` (the
    default of a run config) = what the shards' index.json records."""
    num_views: Union[int, str] = 2
    """Camera views per frame; ``auto`` = the views index.json records."""
    action_dim: Union[int, str] = 4
    """Action dimensions; ``auto`` = what index.json records."""
    state_dim: Union[int, str] = 8
    """Proprioceptive state dimensions; ``auto`` = what index.json records."""
    init_std: float = 0.02
    video_loss_weight: float = 1.0
    action_loss_weight: float = 1.0
    time_loss_weight: float = 0.1
    """Weight of the remaining-time head's Huber loss (latent frames from a sample's first step
    to its event's end, predicted from the clean first frame, state and caption); event mode
    uses the head at inference to decide how many denoised steps to execute. 0 = no time loss."""
    video_time_shift: float = 1.0
    """Shift of the video tower's flow-time schedule, ``t <- s t / (1 + (s - 1) t)`` on uniform
    draws: 1 = uniform (the default); Wan's video models train with a shift (e.g. 5), which a
    video tower started from Wan weights keeps. The action tower's schedule stays uniform."""
    video_tower: str = "small"
    """``small``: the laptop analogue (fixed patchify of pixel frames, byte-level captions,
    ``hidden_size`` wide). ``wan``: the Wan-architecture video tower of ``model.wan`` on VAE
    latents and text-encoder states (``model/wan_wallwm.py``); the action tower keeps
    ``hidden_size`` / ``num_heads`` / ``ffn_hidden_size`` and reads the video tower through a
    learned projection."""
    wan: WanTowerConfig = field(default_factory=WanTowerConfig)
    """The Wan video tower's shape (``video_tower=wan`` only)."""
    kind: str = "towers"
    """What the run trains: ``towers`` (the dual-tower denoiser), ``conditioner`` (the text
    conditioner's heads on a frozen VLM, ``model.conditioner``) or ``staircase`` (the Staircase
    branch and prefix projector, ``model.staircase``, on the same frozen VLM, reconstructing the
    reasoning traces through a frozen small LM); the last two need ``data.mode=conditioner``."""
    conditioner: ConditionerConfig = field(default_factory=ConditionerConfig)
    """The text conditioner (``kind=conditioner`` only)."""
    staircase: StaircaseConfig = field(default_factory=StaircaseConfig)
    """Staircase decoding: the reasoning-latent branch and its frozen small LM."""
    context: ContextConfig = field(default_factory=ContextConfig)
    """Unified mode's text-context sources (``kind=towers``, ``video_tower=wan``)."""
    init_from: str = ""
    """Weights to start from (model only: no optimizer, loader or schedule state; step 0): a
    folder written by ``python -m wallwm_pretrain.convert wan``, a previous stage's checkpoint
    step folder, its run folder (the newest complete checkpoint) or an exported ``.safetensors``
    file. Names and shapes are checked and a report of loaded / newly initialised / unused
    tensors per component is logged. Ignored when the run resumes from its own checkpoint."""
    init_from_partial: bool = False
    """Allow ``init_from`` to leave tensors of this model at their fresh initialisation (absent
    from the source) and to skip tensors of the source this model lacks; both are listed in the
    report. False: either fails naming the tensors (a wrong folder must not silently start a
    stage from random weights)."""
    train_parts: List[str] = field(default_factory=lambda: ["all"])
    """The components this run trains (a training stage); every other parameter is frozen:
    ``requires_grad`` False before data-parallel wrapping and optimizer construction, so it is
    in no DDP bucket, in neither Muon nor AdamW, gets no gradient, and a frozen tower's forward
    records no backward when nothing upstream of it trains. Names (``wallwm_pretrain/components.py``):
    towers ``video_tower``, ``action_tower``, ``time_head`` and, with ``video_tower=small``,
    ``caption_encoder``; the conditioner ``adapter``, ``alignment_head``, ``next_event_head``,
    ``time_head``; or ``all``. Switch off the loss terms of frozen-only components with their
    weights (e.g. ``video_loss_weight=0`` when the video tower is frozen)."""
    action_pretrain: ActionPretrainConfig = field(default_factory=ActionPretrainConfig)
    """The pairing of video and action noise levels in training: symmetric or the anchor-noise
    protocol of action pretraining (``model/anchor_noise.py``)."""
    recompute: str = "none"
    """Activation recomputation in backward: ``none``; ``full`` (each coupled layer keeps only
    its input and runs again in backward: least memory, about one extra forward of the towers);
    ``selective`` (only the attention cores are recomputed; the cores are fused and keep no
    score matrix, so this saves little memory now: see ``model/recompute.py``)."""

    def __post_init__(self) -> None:
        for name in ("frame_stride", "caption_max_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.video_input not in VIDEO_INPUTS:
            raise ConfigError(f"model.video_input must be {' or '.join(VIDEO_INPUTS)}, got {self.video_input!r}")
        for name in DATA_DIMS:
            value = getattr(self, name)
            if value != AUTO and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"model.{name} must be 'auto' or an int >= 1, got {value!r}")
        if not self.video_time_shift > 0:
            raise ConfigError(f"model.video_time_shift must be > 0, got {self.video_time_shift}")
        for name in ("video_loss_weight", "action_loss_weight", "time_loss_weight"):
            if getattr(self, name) < 0:  # a negative weight would push that loss up
                raise ConfigError(f"model.{name} must be >= 0, got {getattr(self, name)}")
        if self.recompute not in ("none", "full", "selective"):
            raise ConfigError(f"model.recompute must be none, full or selective, got {self.recompute!r}")
        if self.kind not in MODEL_KINDS:
            raise ConfigError(f"model.kind must be one of {', '.join(MODEL_KINDS)}, got {self.kind!r}")
        if self.video_tower not in VIDEO_TOWERS:
            raise ConfigError(f"model.video_tower must be one of {', '.join(VIDEO_TOWERS)}, got {self.video_tower!r}")
        if self.video_tower == "wan" and self.recompute == "selective":
            raise ConfigError(
                "model.recompute=selective is not available with model.video_tower=wan (its attention cores are "
                "fused and keep no score matrix to drop); use none or full"
            )
        if self.action_pretrain.mapping == "anchor":
            if self.kind != "towers":
                raise ConfigError(f"model.action_pretrain.mapping=anchor pairs the towers' noise levels: it needs "
                                  f"model.kind=towers, got {self.kind!r}")
            if self.video_loss_weight != 0:
                raise ConfigError(
                    f"model.action_pretrain.mapping=anchor trains the action tower on a video tower held at one "
                    f"flow time: set model.video_loss_weight=0 (got {self.video_loss_weight}), or use mapping=symmetric"
                )
            if self.action_loss_weight <= 0:
                raise ConfigError(f"model.action_pretrain.mapping=anchor needs model.action_loss_weight > 0, "
                                  f"got {self.action_loss_weight}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_heads "
                f"({self.num_heads})"
            )
        if self.image_size != AUTO and self.image_size % self.patch_size:
            raise ConfigError(
                f"model.image_size ({self.image_size}) must be divisible by model.patch_size "
                f"({self.patch_size})"
            )


@dataclass
class OptimConfig:
    """Muon for hidden 2-D matrices, AdamW for everything else, warmup + cosine schedule."""

    lr: float = 0.02
    """Peak learning rate of the Muon group."""
    adamw_lr: float = 0.003
    """Peak learning rate of the AdamW group (embeddings, norms, biases, heads)."""
    weight_decay: float = 0.01
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5
    ns_dtype: str = "auto"
    """Newton-Schulz precision: ``auto`` (bf16 on GPU, fp32 on CPU), ``float32`` or ``bfloat16``."""
    adamw_betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    adamw_eps: float = 1e-8
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    """Cosine decays to ``min_lr_ratio * peak`` at ``train.steps``."""
    grad_clip: float = 1.0
    """Global grad-norm clip; 0 disables clipping."""
    muon_mode: str = "owner"
    """``owner``: each logical matrix orthogonalised once, on one home rank (distributed Muon,
    ZeRO-1 AdamW); ``gather``: every rank assembles and orthogonalises every matrix;
    ``replicated``: every rank keeps the whole optimizer state (TP slices gathered per matrix)."""
    muon_reduce: str = "home"
    """Owner mode: ``home`` reduces each Muon matrix's gradient straight to its home during
    backward and returns the update behind the next forward, and reduce-scatters each AdamW
    gradient into the ZeRO-1 shard that updates it (the all-reduce bound in bytes);
    ``all_reduce`` all-reduces every gradient first and returns the update within the step
    (1.5x the bound)."""
    muon_tp_ns: str = "gather"
    """Owner mode under tensor parallelism: ``gather`` joins each matrix's TP pieces on its home
    (bit-identical to single-process Muon); ``sharded`` keeps long, thin matrices split along
    their long side (long side > tp x short side) in pieces and runs Newton-Schulz through one
    all-reduce of their Gram matrix over TP (fewer bytes; equal to single-process Muon to
    rounding, not to the bit); ``sharded_all`` keeps every split matrix in pieces (for comparison)."""
    muon_split_fused: bool = True
    """Orthogonalise fused weights as their logical matrices (Q, K, V; gate, up; K, V)."""
    ns_variant: str = "quintic"
    """Newton-Schulz: ``quintic`` (3.4445, -4.7750, 2.0315), ``polar_express`` (per-step
    coefficients) or ``gram`` (the quintic evaluated through the Gram matrix of the smaller side:
    fewer flops for matrices with aspect ratio above about 2, equal to the quintic within 1e-5
    in fp32)."""
    muon_bucket_elems: int = 4_194_304
    """Elements per communication bucket of distributed Muon."""

    def __post_init__(self) -> None:
        if self.muon_mode not in ("owner", "gather", "replicated"):
            raise ConfigError(f"optim.muon_mode must be owner, gather or replicated, got {self.muon_mode!r}")
        if self.muon_reduce not in ("home", "all_reduce"):
            raise ConfigError(f"optim.muon_reduce must be home or all_reduce, got {self.muon_reduce!r}")
        if self.muon_tp_ns not in ("gather", "sharded", "sharded_all"):
            raise ConfigError(f"optim.muon_tp_ns must be gather, sharded or sharded_all, got {self.muon_tp_ns!r}")
        if self.ns_variant not in ("quintic", "polar_express", "gram"):
            raise ConfigError(f"optim.ns_variant must be quintic, polar_express or gram, got {self.ns_variant!r}")
        if self.muon_mode == "replicated" and (self.muon_split_fused or self.ns_variant != "quintic"):
            raise ConfigError(
                "optim.muon_mode=replicated orthogonalises fused weights whole with the quintic "
                "coefficients: set optim.muon_split_fused=false and optim.ns_variant=quintic, or use owner/gather"
            )
        if self.ns_dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(
                f"optim.ns_dtype must be auto, float32 or bfloat16, got {self.ns_dtype!r}"
            )
        if len(self.adamw_betas) != 2:
            raise ConfigError(f"optim.adamw_betas needs two values, got {list(self.adamw_betas)}")


def parse_duration(text: str) -> Optional[float]:
    """Seconds in ``[D-]HH:MM:SS``, ``MM:SS`` or a plain number of seconds; None for ``""``.

    Raises:
        ValueError: anything else, or a negative duration.
    """
    text = str(text).strip()
    if not text:
        return None
    days, _, clock = text.rpartition("-") if "-" in text and ":" in text else ("", "", text)
    try:
        parts = [float(p) for p in clock.split(":")]
        if len(parts) > 3 or (days and len(parts) != 3):
            raise ValueError
        seconds = 0.0
        for p in parts:
            seconds = seconds * 60 + p
        seconds += float(days or 0) * 86400
    except ValueError:
        raise ValueError(f"expected [D-]HH:MM:SS or seconds, got {text!r}") from None
    if seconds < 0:
        raise ValueError(f"must be >= 0, got {text!r}")
    return seconds


@dataclass
class TrainConfig:
    """The training loop."""

    steps: int = 200
    """Optimizer steps to reach (a resumed run continues up to this step)."""
    stop_after: int = 0
    """Stop this invocation at this global step (0 = at ``steps``), e.g. to fit a job's time
    limit; the learning-rate schedule still spans ``steps`` and a later run resumes."""
    seed: int = 0
    device: str = "auto"
    """``auto`` (cuda:LOCAL_RANK when a GPU is present, else cpu), ``cpu`` or ``cuda``."""
    precision: str = "auto"
    """``auto`` (bf16 autocast on GPU, fp32 on CPU), ``fp32`` or ``bf16``."""
    log_every: int = 10
    save_every: int = 100
    """Save a checkpoint every N steps (and always at the last step); 0 = only at the end."""
    resume: str = "auto"
    """``auto`` (newest complete checkpoint in the run folder, if any), ``none``, or a path."""
    runs_root: str = "runs"
    run_name: str = "smoke"
    """The run folder is ``runs_root/run_name``."""
    keep_checkpoints: int = 2
    """Complete checkpoints kept in the run folder (older ones are deleted after a save)."""
    keep_every: int = 0
    """Milestones: checkpoints at multiples of this step are kept forever, beside the newest
    ``keep_checkpoints`` (0 = none)."""
    save_format: str = "sharded"
    """``sharded``: every rank writes its own pieces of the canonical tensors (one safetensors
    file per rank, plus an index); ``gathered``: rank 0 gathers the whole state and writes it
    alone (the format of earlier versions). Both resume under any layout."""
    async_save: bool = False
    """Write checkpoints on a background thread while training continues (``sharded`` only):
    the step boundary only copies the state off the accelerator; at most one save is in flight,
    and the next save, a stop and the end of the run wait for it."""
    peak_tflops: float = 0.0
    """Dense bf16 peak of one device in TFLOP/s, for the MFU in the step log; 0 = from the GPU's
    name (H100, H200, A100, L40S, A10G). No MFU on CPUs."""
    microbatches: int = 1
    """Microbatches per optimizer step on each data-parallel rank: ``data.batch_size`` rows are
    cut into this many equal microbatches whose gradients accumulate before the step (pipeline
    stages work on different microbatches at once). The update equals that of one batch."""
    max_skipped_steps: int = 20
    """Stop the run (with an error) once this many steps had a non-finite loss or gradient
    norm in total; such a step's update is skipped on every rank. 0 = stop at the first."""
    max_consecutive_skipped: int = 5
    """Stop the run (with an error) once this many steps in a row were skipped as non-finite."""
    max_wall_time: str = ""
    """Wall-clock budget of one invocation, ``[D-]HH:MM:SS`` or seconds (empty = none). The
    trainer saves and exits (code 75, to be run again) before it runs out, keeping back the
    longest save and step measured so far; under Slurm the job's end time counts too."""
    exit_margin_s: float = 30.0
    """Seconds kept back before ``max_wall_time`` or the job's end on top of the measured
    save and step (start-up of the next step, the exit itself)."""

    def __post_init__(self) -> None:
        if self.max_skipped_steps < 0 or self.max_consecutive_skipped < 0:
            raise ConfigError(
                f"train.max_skipped_steps and train.max_consecutive_skipped must be >= 0, got "
                f"{self.max_skipped_steps} and {self.max_consecutive_skipped}"
            )
        if self.keep_every < 0:
            raise ConfigError(f"train.keep_every must be >= 0 (0 = no milestones), got {self.keep_every}")
        if self.save_format not in ("sharded", "gathered"):
            raise ConfigError(f"train.save_format must be 'sharded' or 'gathered', got {self.save_format!r}")
        if self.async_save and self.save_format != "sharded":
            raise ConfigError("train.async_save=true needs train.save_format=sharded")
        if self.exit_margin_s < 0:
            raise ConfigError(f"train.exit_margin_s must be >= 0, got {self.exit_margin_s}")
        try:
            self.max_wall_time_s
        except ValueError as exc:
            raise ConfigError(f"train.max_wall_time: {exc}") from None
        if self.steps < 1:
            raise ConfigError(f"train.steps must be >= 1, got {self.steps}")
        if self.microbatches < 1:
            raise ConfigError(f"train.microbatches must be >= 1, got {self.microbatches}")
        if self.stop_after < 0 or self.stop_after > self.steps:
            raise ConfigError(f"train.stop_after must be in [0, train.steps={self.steps}], got {self.stop_after}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"train.precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"train.device must be auto, cpu or cuda, got {self.device!r}")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_root) / self.run_name

    @property
    def max_wall_time_s(self) -> Optional[float]:
        """``max_wall_time`` in seconds (None = no budget)."""
        return parse_duration(self.max_wall_time)


@dataclass
class ParallelConfig:
    """Model-parallel layout; data parallel size is derived from the world size."""

    tp: int = 1
    """Tensor-parallel size."""
    pp: int = 1
    """Pipeline-parallel size: each stage holds consecutive coupled layers."""
    vpp: int = 1
    """Virtual pipeline stages per pipeline rank (interleaved 1F1B): each rank holds ``vpp``
    non-adjacent chunks of layers, which shrinks the pipeline bubble by that factor at the cost
    of ``vpp`` times more stage-to-stage messages. 1 = plain 1F1B."""
    timeout_s: float = 600.0
    """Collective timeout, and how long a rank may stay in one phase of a step (data,
    forward/backward, optimizer) before the watchdog stops the run naming the rank, step and
    phase. Saves and loads get ``save_timeout_s`` instead."""
    save_timeout_s: float = 3600.0
    """How long a save or a load may take before the watchdog stops the run."""
    heartbeat_s: float = 5.0
    """How often each rank's watchdog publishes its heartbeat (step, phase) to the run folder
    and reads the others'; 0 turns the watchdog off."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.save_timeout_s <= 0 or self.heartbeat_s < 0:
            raise ConfigError(
                f"parallel.timeout_s and parallel.save_timeout_s must be > 0 and parallel.heartbeat_s >= 0, "
                f"got {self.timeout_s}, {self.save_timeout_s}, {self.heartbeat_s}"
            )
        if self.tp < 1 or self.pp < 1 or self.vpp < 1:
            raise ConfigError(
                f"parallel.tp, parallel.pp and parallel.vpp must be >= 1, got tp={self.tp}, pp={self.pp}, "
                f"vpp={self.vpp}"
            )
        if self.vpp > 1 and self.pp == 1:
            raise ConfigError(f"parallel.vpp={self.vpp} interleaves pipeline stages and needs parallel.pp > 1")


@dataclass
class TrackingConfig:
    """MLflow tracking."""

    uri: str = ""
    """Tracking URI; empty = sqlite store ``<runs_root>/mlflow.db`` shared by all runs."""
    experiment: str = "wallwm-pretrain"
    enabled: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    # A run's data dims default to ``auto`` (read from the shards); a ModelConfig built alone
    # (tests, benchmarks) keeps concrete laptop-sized numbers so it builds a model by itself.
    model: ModelConfig = field(default_factory=lambda: ModelConfig(**{k: AUTO for k in DATA_DIMS}))
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# Keys that moved to the section of their reader (old -> new).
MOVED_KEYS = {
    "data.frame_stride": "model.frame_stride",
    "data.caption_max_bytes": "model.caption_max_bytes",
    "model.mode": "data.mode",
    "model.chunk_horizon": "data.chunk_horizon",
}


def _moved_key_error(source: str, old: str) -> ConfigError:
    return ConfigError(f"{source}: {old} is now {MOVED_KEYS[old]} (moved to the section that reads it)")


def _check_moved(node: Any, source: str) -> None:
    """Fail naming the new place of any moved key that ``node`` (a YAML mapping) sets."""
    if not isinstance(node, DictConfig):
        return
    for old in MOVED_KEYS:
        section, key = old.split(".")
        if section in node and isinstance(node[section], DictConfig) and key in node[section]:
            raise _moved_key_error(source, old)


def config_from_stored(config_yaml: str) -> "Config":
    """The :class:`Config` of a config stored in a checkpoint or an export.

    Configs written before keys moved between sections (:data:`MOVED_KEYS`) are translated:
    each old key's value goes to its new place. A stored config is the record of a finished
    run, so it is read as written rather than rejected like a user's preset.
    """
    raw = OmegaConf.create(config_yaml)
    for old, new in MOVED_KEYS.items():
        value = OmegaConf.select(raw, old, default="__missing__")
        if value == "__missing__":
            continue
        old_section, old_key = old.split(".")
        new_section, new_key = new.split(".")
        del raw[old_section][old_key]
        if OmegaConf.select(raw, new, default="__missing__") == "__missing__":
            raw.setdefault(new_section, {})
            raw[new_section][new_key] = value
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), raw))


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for name, value in node.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        if isinstance(value, DictConfig):
            keys.extend(_all_keys(value, dotted + "."))
    return keys


def _nearest(key: str, valid: list[str]) -> str:
    leaf = key.rsplit(".", 1)[-1]
    for candidates in (
        difflib.get_close_matches(key, valid, n=1, cutoff=0.8),  # a typo in the leaf
        [v for v in valid if v.rsplit(".", 1)[-1] == leaf],  # right leaf, wrong section
        difflib.get_close_matches(key, valid, n=1, cutoff=0.0),
    ):
        if candidates:
            return candidates[0]
    return "?"


def _explain(exc: OmegaConfBaseException, source: str, schema: DictConfig) -> ConfigError:
    key = getattr(exc, "full_key", None) or ""
    valid = _all_keys(schema)
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)) and key:
        return ConfigError(
            f"{source}: unknown config key '{key}'; did you mean '{_nearest(key, valid)}'?"
        )
    msg = getattr(exc, "msg", str(exc)).splitlines()[0]
    where = f" '{key}'" if key else ""
    return ConfigError(f"{source}: bad value for config key{where}: {msg}")


def _merge(base: DictConfig, other: Any, source: str, schema: DictConfig) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as exc:
        raise _explain(exc, source, schema) from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that rejects a key given twice in one mapping (the later one would
    silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"line {line}: duplicate key '{key}' (first given on line {seen[key]})"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> DictConfig:
    """A preset file as a mapping, or :class:`ConfigError` naming the file and the line.

    The text is parsed twice: once strictly (duplicate keys, syntax, top-level mapping), then by
    OmegaConf for the values, which keeps OmegaConf's reading of numbers and interpolations.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")  # an editor's byte-order mark is not part of the YAML
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}, line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x})") from None
    try:
        tree = yaml.load(text, Loader=_StrictLoader)
    except ConfigError as exc:
        raise ConfigError(f"{path}, {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: YAML syntax error: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML syntax error: {str(exc).splitlines()[0]}") from None
    if tree is None:
        return OmegaConf.create({})
    if not isinstance(tree, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections (data:, model:, ...), "
            f"got a {type(tree).__name__}"
        )
    return OmegaConf.create(text)


def load_config(path: Optional[str | Path | Sequence[str | Path]] = None, overrides: Sequence[str] = ()) -> Config:
    """Build the run config: schema defaults <- YAML preset(s) <- ``key=value`` overrides.

    Args:
        path: a YAML preset (``configs/smoke.yaml``), several merged in order (a size preset,
            then a stage preset such as ``configs/stages/1_video.yaml``), or None for the
            schema defaults.
        overrides: dotted ``key=value`` strings, e.g. ``train.steps=50``.

    Returns:
        A validated :class:`Config` object.

    Raises:
        ConfigError: unknown key (with the nearest valid key), wrong type, bad combination.
    """
    schema = OmegaConf.structured(Config)
    cfg = schema
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    for one in paths:
        one = Path(one)
        loaded = read_yaml(one)
        _check_moved(loaded, str(one))
        cfg = _merge(cfg, loaded, str(one), schema)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key = item.split("=", 1)[0]
        if key in MOVED_KEYS:
            raise _moved_key_error(f"override {item!r}", key)
        if OmegaConf.select(schema, key, default="__missing__") == "__missing__":
            raise ConfigError(
                f"override {item!r}: unknown config key '{key}'; did you mean "
                f"'{_nearest(key, _all_keys(schema))}'?"
            )
        cfg = _merge(cfg, OmegaConf.from_dotlist([item]), f"override {item!r}", schema)
    try:
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        raise _explain(exc, "config", schema) from None
    validate(obj)
    return obj


def validate(cfg: Config) -> None:
    """Checks that span several sections."""
    stride = cfg.model.frame_stride
    if cfg.data.max_frames % stride:
        raise ConfigError(
            f"data.max_frames ({cfg.data.max_frames}) must be a multiple of model.frame_stride "
            f"({stride}) so that action groups align with latent frames"
        )
    if cfg.data.mode in ("chunk", "unified") and cfg.data.chunk_horizon % stride:
        raise ConfigError(
            f"data.chunk_horizon ({cfg.data.chunk_horizon}) must be a multiple of model.frame_stride ({stride})"
        )
    try:
        resolve_train_parts(cfg.model.train_parts, cfg.model.kind, cfg.model.video_tower)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.model.kind in ("conditioner", "staircase"):
        _validate_conditioner(cfg)
    elif cfg.data.mode == "conditioner":
        raise ConfigError("data.mode=conditioner feeds the text conditioner: set model.kind=conditioner "
                          "(or data.mode=event for the towers)")
    _validate_context(cfg)
    tp = cfg.parallel.tp
    split = [("num_heads", cfg.model.num_heads), ("ffn_hidden_size", cfg.model.ffn_hidden_size)]
    if cfg.model.video_tower == "wan":
        split += [("wan.num_attention_heads", cfg.model.wan.num_attention_heads), ("wan.ffn_dim", cfg.model.wan.ffn_dim)]
    for name, value in split:
        if value % tp:
            raise ConfigError(
                f"model.{name}={value} is not divisible by parallel.tp={tp} "
                f"({value} = {value // tp} * {tp} + {value % tp}); tensor parallel splits it evenly"
            )
    pp, vpp, layers = cfg.parallel.pp, cfg.parallel.vpp, cfg.model.num_layers
    if cfg.model.action_pretrain.mapping == "anchor" and pp > 1:
        raise ConfigError(
            f"model.action_pretrain.mapping=anchor runs with parallel.pp=1 only (got pp={pp}): the K action passes "
            "reuse every layer's video output inside one forward, which a pipeline schedule does not carry "
            "between stages; use tensor or data parallelism"
        )
    if cfg.model.action_pretrain.mapping == "anchor" and cfg.model.video_tower == "small" and cfg.model.context.sources:
        # the small towers' anchor pass embeds the caption once for the video side; a context
        # source's text stream is not carried into it
        raise ConfigError("model.action_pretrain.mapping=anchor is not combined with model.context.sources on the "
                          "small towers; use mapping=symmetric")
    if layers % (pp * vpp):
        raise ConfigError(
            f"model.num_layers={layers} does not split into parallel.pp * parallel.vpp = {pp} * {vpp} = "
            f"{pp * vpp} stages of whole coupled layers"
        )
    micro = cfg.train.microbatches
    if cfg.data.batch_size % micro:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} does not split into train.microbatches={micro} equal "
            f"microbatches ({cfg.data.batch_size} = {cfg.data.batch_size // micro} * {micro} + "
            f"{cfg.data.batch_size % micro})"
        )
    if vpp > 1 and micro % pp:
        raise ConfigError(
            f"train.microbatches={micro} must be a multiple of parallel.pp={pp} for the interleaved "
            f"schedule (parallel.vpp={vpp}): it runs microbatches in groups of pp per virtual stage"
        )


def _validate_conditioner(cfg: Config) -> None:
    kind = cfg.model.kind
    if kind == "staircase" and not cfg.model.staircase.small_lm:
        raise ConfigError("model.kind=staircase needs model.staircase.small_lm: the folder of the frozen small LM")
    if cfg.data.mode != "conditioner":
        raise ConfigError(f"model.kind={kind} reads conditioner samples: set data.mode=conditioner (and "
                          f"data.shards to a folder from `python -m data_tools build-conditioner`), got "
                          f"data.mode={cfg.data.mode}")
    if not cfg.model.conditioner.vlm:
        raise ConfigError(f"model.kind={kind} needs model.conditioner.vlm: the folder of the frozen VLM")
    par = cfg.parallel
    if (par.tp, par.pp, par.vpp) != (1, 1, 1):
        # the frozen VLM is replicated on every rank and the heads are a few million parameters:
        # splitting them brings nothing, data parallel is the layout (see model/conditioner)
        raise ConfigError(f"model.kind={kind} trains data parallel only: set parallel.tp=1, pp=1, vpp=1 "
                          f"(got tp={par.tp}, pp={par.pp}, vpp={par.vpp})")


def _validate_context(cfg: Config) -> None:
    m, mix = cfg.model, cfg.data.context_mix
    wanted = [s for s in ("global", "staircase") if mix.get(s, 0) > 0] if cfg.data.mode == "unified" else []
    missing = [s for s in wanted if s not in m.context.sources]
    if missing:
        raise ConfigError(f"data.context_mix draws {missing[0]} contexts, which model.context.sources does not "
                          f"build (add it there, or set data.context_mix.{missing[0]}=0)")
    if not m.context.sources:
        return
    if m.kind != "towers":
        raise ConfigError(f"model.context.sources belongs to the towers (model.kind=towers), got kind={m.kind}")
    if m.video_tower == "small" and "global" in m.context.sources and not isinstance(m.conditioner.text_dim, int):
        raise ConfigError("model.context.sources=[global] on the small towers needs model.conditioner.text_dim: the "
                          "width of the text states the conditioner was aligned to (its run config says it)")
    if not m.conditioner.vlm:
        raise ConfigError("model.context.sources reads the frozen VLM: set model.conditioner.vlm")
    if cfg.parallel.pp != 1 or cfg.parallel.vpp != 1:
        # the context is computed (with gradient) before the first Wan block and read by every
        # block: a pipeline would have to ship it, and its gradient, across stages
        raise ConfigError(f"model.context.sources runs with parallel.pp=1 (got pp={cfg.parallel.pp}, "
                          f"vpp={cfg.parallel.vpp})")


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def flatten(cfg: Config) -> dict[str, Any]:
    """Dotted key -> value, for MLflow params."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(OmegaConf.to_container(OmegaConf.structured(cfg)), "")
    return out
