"""The video tower's written interface: what the dual-tower denoiser asks of its video side.

The denoiser (``denoiser.py``) owns everything the two video towers share: the action tower's
embedding and head, the remaining-time head's loss, the unified-mode text context, the flow
noise, the losses and the pipeline-rank skeleton (embed, coupled layers, pack or heads). What
differs between the small pixel tower (:class:`~wallwm_pretrain.model.wallwm.WallWM`) and the
Wan video DiT (:class:`~wallwm_pretrain.model.wan_wallwm.WanWallWM`) is this class's abstract
methods: the noisy video inputs, the embedding, coupled layer i (video block i, then the action
block reading it), the stream packing between pipeline ranks, the video head and loss, and the
video tower's bookkeeping (loss counts, boundary length, FLOPs).

Why the video side is a set of methods of the denoiser rather than a submodule of it: parameter
names are the checkpoint format (state dicts, optimizer state, ``model.train_parts`` and the
converted Wan weights are keyed by them). The small tower's names are flat (``video_in``,
``layers.<i>.video``: one coupled layer holds both towers' blocks) and the Wan tower's sit under
``video.``; a composed ``video_tower`` submodule would rename one of them. An implementation is
therefore a subclass of the denoiser that registers its video modules where its names say and
answers these methods; everything else it inherits.

``state`` below is the tower's own stream object between coupled layers (small: one
:class:`~.blocks.Streams` carrying both towers; Wan: the :class:`~.wan.tower.WanStreams` and the
action tower's :class:`~.blocks.Streams`); ``layer_inputs`` what every coupled layer reads
besides it, derived once per forward from the flow inputs (small: nothing; Wan: geometry, RoPE,
masks).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.model.blocks import Streams
from wallwm_pretrain.model.flow_matching import FlowNoise


class VideoTower(ABC):
    """The video side of the dual-tower denoiser (see the module docstring)."""

    # ---------------------------------------------------------------- inputs
    @abstractmethod
    def video_noise_shape(self, batch: Batch) -> tuple[int, ...]:
        """Shape of the video noise of a batch (checks the batch's video against the model)."""

    @abstractmethod
    def flow_inputs(self, batch: Batch, noise: FlowNoise) -> Any:
        """Noisy inputs, velocity targets and masks of both towers (no parameters involved):
        every pipeline rank derives them from the same batch and noise."""

    @abstractmethod
    def layer_inputs(self, inputs: Any) -> Any:
        """What every coupled layer reads besides the streams, computed once per forward."""

    # ---------------------------------------------------------------- embed, block i, head
    @abstractmethod
    def embed_towers(self, inputs: Any, layer_inputs: Any, context_rows: list | None = None) -> Any:
        """The first pipeline rank's input side of both towers (the action side: :meth:`action_tokens`)."""

    @abstractmethod
    def run_coupled_layer(self, index: int, state: Any, layer_inputs: Any) -> Any:
        """Coupled layer ``index`` (global): video block ``index``, then the action block reading
        its output (one-way coupling)."""

    @abstractmethod
    def tower_predictions(self, state: Any, inputs: Any,
                          layer_inputs: Any) -> tuple[torch.Tensor, torch.Tensor, Streams]:
        """The last pipeline rank's heads: (video velocity, action velocity ``[B, T, A]``, the action
        streams the remaining-time head reads)."""

    @abstractmethod
    def video_loss(self, pred_video: torch.Tensor, inputs: Any, denominator: torch.Tensor | None) -> torch.Tensor:
        """The masked flow-matching loss of the video prediction."""

    @abstractmethod
    def time_head_inputs(self, inputs: Any, s: Streams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the remaining-time head reads: (clean anchor frame tokens, text stream, its real
        positions ``[B, L]``)."""

    # ---------------------------------------------------------------- stream packing
    @abstractmethod
    def pack_towers(self, state: Any, layer_inputs: Any) -> torch.Tensor:
        """Both towers' streams as the ONE tensor a pipeline rank sends the next."""

    @abstractmethod
    def unpack_towers(self, hidden: torch.Tensor, inputs: Any, layer_inputs: Any) -> Any:
        """Inverse of :meth:`pack_towers`; lengths and masks come from the inputs."""

    @abstractmethod
    def boundary_seq_length(self, batch: Batch) -> int:
        """Positions of the packed pipeline-boundary tensor of a batch."""

    @staticmethod
    @abstractmethod
    def boundary_width(cfg) -> int:
        """Width of the packed pipeline-boundary tensor (the pipeline config's hidden size)."""

    @abstractmethod
    def text_context_space(self) -> tuple[int, bool]:
        """Where a unified-mode row's text context enters (``context.py``): (its width, whether it
        is the text encoder's space, read from the batch, rather than the tower's own text stream)."""

    # ---------------------------------------------------------------- anchor mapping
    @abstractmethod
    def video_side_parameters(self) -> list[nn.Parameter]:
        """What the anchor mapping's video pass reads (decides ``torch.no_grad``)."""

    @abstractmethod
    def anchor_video(self, inputs: Any) -> tuple[Any, list[torch.Tensor]]:
        """The video side once, every coupled layer's video output recorded."""

    @abstractmethod
    def anchor_action(self, inputs: Any, features: tuple[Any, list[torch.Tensor]]) -> tuple[torch.Tensor, Streams]:
        """One action pass reading the recorded video outputs: (prediction ``[B, T, A]``, streams)."""

    # ---------------------------------------------------------------- bookkeeping
    @abstractmethod
    def loss_counts(self, batch: Batch) -> torch.Tensor:
        """[3] float: video elements, action elements and samples the losses average over."""

    @abstractmethod
    def train_flops(self, batch: Batch) -> int:
        """Model FLOPs of one sample's training step at the batch's padded shapes."""

    @abstractmethod
    def parameter_counts(self) -> dict[str, int]:
        """Parameters held here: ``video_tower``, ``action_tower``, ``conditioning``, ``total``."""

    @abstractmethod
    def coupled_layers(self) -> dict[str, tuple[nn.Module, nn.Module]]:
        """Coupled layer i -> (the module it starts with, the module it ends with)."""

    @abstractmethod
    def residual_widths(self) -> set[int]:
        """The towers' residual-stream widths (what every tensor-parallel rank keeps whole)."""
