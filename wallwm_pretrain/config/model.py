"""The ``model`` section: the dual-tower denoiser and how its towers are trained (read by
``wallwm_pretrain.model``; the Wan shape is in ``config/wan.py``, the conditioner parts in
``config/conditioner.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Union

from wallwm_pretrain.config.base import AUTO, ConfigError
from wallwm_pretrain.config.conditioner import ConditionerConfig, ContextConfig, StaircaseConfig
from wallwm_pretrain.config.wan import WanTowerConfig

VIDEO_INPUTS = ("pixels", "latents")


# Model fields that describe the data; a run config takes them from the shards' index.json
# (``wallwm_pretrain.data.dims``) unless set.
DATA_DIMS = ("action_dim", "state_dim", "num_views", "image_size")


VIDEO_TOWERS = ("small", "wan")


MODEL_KINDS = ("towers", "conditioner", "staircase")


ACTION_PRETRAIN_MAPPINGS = ("symmetric", "anchor")


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
    text_len: int = 512
    """``video_tower=wan``: positions of the text context the Wan tower reads, as Wan was trained:
    the text encoder's states zero-padded to this length with no key mask (Wan2.2's
    ``max_sequence_length``, 512; ``model/wan/text.py``). A global context source's aligned states
    are cut or zero-padded to it too."""
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

    def loss_weights(self) -> dict[str, float]:
        """The weight of each weighted loss term of this model kind in its training loss, by loss key."""
        if self.kind == "conditioner":
            c = self.conditioner
            return {"loss_align": c.l_align, "loss_next": c.l_next, "loss_time": c.l_time}
        return {"loss_video": self.video_loss_weight, "loss_action": self.action_loss_weight,
                "loss_time": self.time_loss_weight}

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
        if self.text_len < 1:
            raise ConfigError(f"model.text_len must be >= 1, got {self.text_len}")
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
