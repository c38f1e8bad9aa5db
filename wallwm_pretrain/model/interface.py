"""The typed model interfaces the rest of the code programs against.

Two layers of contract, each a :class:`typing.Protocol` (structural: a class satisfies it by
having the members, no registration):

- :class:`TrainableModel`: what the pipeline schedule (``parallel/pipeline.py``) and the trainer
  drive, whatever is trained: the dual-tower denoiser (either video tower) and the text
  conditioner and Staircase models of ``model/conditioner``. One step: ``sample_noise`` for the
  global batch, ``loss_counts`` summed over data-parallel ranks, then the forward of each
  microbatch on each pipeline rank with ``hidden`` the previous pipeline rank's packed tensor of
  ``boundary_seq_length`` positions; ``loss_keys`` name what the last pipeline rank returns.
- :class:`Denoiser`: the dual-tower denoiser on top of that, as the anchor-noise mapping
  (``anchor_noise.py``) and the memory planner (``plan/measure.py``) use it. Both video towers
  implement it through :class:`~.denoiser.DualTowerDenoiser`.

Capabilities are members, never probes: a pipeline rank's ends are ``pipeline_slice.embed`` /
``.head``, the context sources built ``context_sources`` (empty when none), the coupled layers
and residual widths methods. Inference entry points (``denoise``, ``remaining_steps``) take the
video tower's own input layout and so are not in the shared contract: see each tower's class.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model.blocks import Streams
from wallwm_pretrain.model.pipeline_slice import PipelineSlice


@runtime_checkable
class TrainableModel(Protocol):
    """A model (or one pipeline rank of it) the trainer's pipeline path trains."""

    cfg: ModelConfig
    pipeline_slice: PipelineSlice
    loss_keys: tuple[str, ...]

    def __call__(self, batch: Any, *, noise: Any = None, loss_denominators: torch.Tensor | None = None,
                 hidden: torch.Tensor | None = None) -> dict[str, torch.Tensor] | torch.Tensor:
        """The :attr:`loss_keys` on the last pipeline rank, else the packed tensor for the next pipeline rank."""
        ...

    def sample_noise(self, batch: Any, generator: torch.Generator | None = None) -> Any:
        """The step's random draws; row-sliceable (``.rows(start, stop)``) for microbatches."""
        ...

    def loss_counts(self, batch: Any) -> torch.Tensor:
        """The loss denominators of a batch (summed over data-parallel ranks by the caller)."""
        ...

    def boundary_seq_length(self, batch: Any) -> int:
        """Positions of the tensor one pipeline rank sends the next."""
        ...

    def train_flops(self, batch: Any) -> int:
        """Model FLOPs of one sample's training step (the whole model's)."""
        ...

    def parameter_counts(self) -> dict[str, int]:
        """Parameters held here, by part, and the ``total``."""
        ...


@runtime_checkable
class Denoiser(TrainableModel, Protocol):
    """The dual-tower flow-matching denoiser, either video tower (see ``denoiser.py``)."""

    frame_stride: int
    context_sources: tuple[str, ...]

    def flow_inputs(self, batch: Any, noise: Any) -> Any:
        """Noisy inputs, targets and masks of both towers (no parameters involved)."""
        ...

    def forward_slice(self, inputs: Any, hidden: torch.Tensor | None = None,
                      loss_denominators: torch.Tensor | None = None,
                      context_rows: list[torch.Tensor | None] | None = None) -> dict[str, torch.Tensor] | torch.Tensor:
        """This pipeline rank's part of the forward on flow inputs."""
        ...

    def time_loss(self, inputs: Any, s: Streams, den: torch.Tensor | None = None) -> torch.Tensor | None:
        """The remaining-time head's loss, or None (no target, or weight 0)."""
        ...

    def video_side_parameters(self) -> list[nn.Parameter]:
        """What the anchor mapping's video pass reads."""
        ...

    def anchor_video(self, inputs: Any) -> tuple[Any, list[torch.Tensor]]:
        """The video side once, every coupled layer's video output recorded."""
        ...

    def anchor_action(self, inputs: Any, features: tuple[Any, list[torch.Tensor]]) -> tuple[torch.Tensor, Streams]:
        """One action pass on the recorded video outputs: (prediction ``[B, T, A]``, streams)."""
        ...

    def coupled_layers(self) -> dict[str, tuple[nn.Module, nn.Module]]:
        """Coupled layer i -> (the module it starts with, the module it ends with)."""
        ...

    def residual_widths(self) -> set[int]:
        """The towers' residual-stream widths."""
        ...
