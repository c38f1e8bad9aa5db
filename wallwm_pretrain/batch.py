"""The batch types, from the loader to the loss: :class:`Batch` (events and chunks) and
:class:`ConditionerBatch` (observations for the text conditioner).

The loader collates cooked samples into a :class:`Batch`; the trainer moves it to the device;
the pipeline schedule cuts it into microbatches with :meth:`Batch.rows`; the model's forward
and its losses read it whole. A field added here (a new target, a new condition) reaches
every pipeline rank without another repacking.

Samples have different lengths: every per-step field is padded to the batch's longest sample
(rounded up to whole latent frames) and ``lengths`` says how much of each row is real; the
model derives its masks from ``lengths`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch


@dataclass
class Batch:
    """A padded batch of training samples (events, or chunks in chunk mode)."""

    frames: torch.Tensor
    """uint8 [B, T, V, H, W, C]: camera frames per control step, zero beyond each length."""
    actions: torch.Tensor
    """float32 [B, T, A]: normalised actions, zero beyond each length."""
    state: torch.Tensor
    """float32 [B, S]: normalised proprioception at each sample's first step (the state token)."""
    lengths: torch.Tensor
    """int64 [B]: real control steps per sample."""
    caption: torch.Tensor
    """int64 [B, L]: caption tokens (``wallwm_pretrain.captions``; 0 = pad)."""
    remaining: Optional[torch.Tensor] = None
    """float32 [B]: control steps from each sample's first step to its event's end (the
    remaining-time head's target); None trains no time head."""
    latents: Optional[torch.Tensor] = None
    """float [B, V, Z, N, h, w]: the video VAE's normalised latents per view (N latent frames,
    latent frame j going with control steps [K_p j, K_p j + K_p)); what ``model.video_tower=wan``
    denoises. None on the pixel path."""
    text_states: Optional[torch.Tensor] = None
    """float [B, L, D]: the text encoder's states of the caption (``model.video_tower=wan``)."""
    text_valid: Optional[torch.Tensor] = None
    """bool [B, L]: real positions of ``text_states`` (False = padding)."""
    keys: list[str] = field(default_factory=list)
    """The samples' keys (shard sample keys, ``/w<start>`` for chunk and unified windows)."""
    history: int = 0
    """Unified mode: M, the latent frames before the anchor. ``frames`` then holds ``M * K_p``
    history control steps before the ``T`` steps that ``actions`` covers (``[B, M K_p + T, ...]``)
    and ``latents`` M history latent frames before those of the T steps; the first M + 1 latent
    frames (history and anchor) are clean conditions. 0 in event and chunk mode (the anchor is
    the first frame)."""
    context: list[str] = field(default_factory=list)
    """Unified mode: each row's text-context source, ``atomic`` (``caption`` / ``text_states`` as
    given), ``global`` (the conditioner's aligned states of ``task``) or ``staircase`` (projected
    Staircase latents); empty = every row reads ``caption`` / ``text_states`` as given."""
    task: list[str] = field(default_factory=list)
    """Unified mode: each row's task instruction (the conditioner's and Staircase's prompt)."""
    done: list[list[str]] = field(default_factory=list)
    """Unified mode: captions of the events finished before each row's anchor, in order."""

    @property
    def size(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def context_sources(self) -> list[str]:
        """The sources other than ``atomic`` some row reads (what the model must build)."""
        return sorted(set(self.context) - {"atomic"})

    def rows(self, start: int, stop: int) -> "Batch":
        """Rows ``start:stop`` (a microbatch, or one data-parallel rank's part)."""
        cut = lambda x: None if x is None else x[start:stop]  # noqa: E731
        return replace(
            self, frames=cut(self.frames), actions=cut(self.actions), state=cut(self.state),
            lengths=cut(self.lengths), caption=cut(self.caption), remaining=cut(self.remaining),
            latents=cut(self.latents), text_states=cut(self.text_states), text_valid=cut(self.text_valid),
            keys=self.keys[start:stop], context=self.context[start:stop], task=self.task[start:stop],
            done=self.done[start:stop],
        )

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda x: None if x is None else x.to(device, non_blocking=True)  # noqa: E731
        return replace(
            self, frames=move(self.frames), actions=move(self.actions), state=move(self.state),
            lengths=move(self.lengths), caption=move(self.caption), remaining=move(self.remaining),
            latents=move(self.latents), text_states=move(self.text_states), text_valid=move(self.text_valid),
        )

    def padding_efficiency(self) -> float:
        """Real control steps / padded control steps (of the span ``actions`` covers)."""
        return float(self.lengths.sum()) / float(self.lengths.shape[0] * self.actions.shape[1])


@dataclass
class ConditionerBatch:
    """A batch of conditioner samples (``data.mode=conditioner``): one observation inside an
    event each, with the task and the captions already done as inputs and the caption of the
    event in progress (the next-event description), its remaining control steps and its
    text-encoder states as targets."""

    observation: torch.Tensor
    """uint8 [B, V, H, W, C]: camera views at the observation time."""
    state: torch.Tensor
    """float32 [B, S]: normalised proprioception at the observation time."""
    remaining: torch.Tensor
    """float32 [B]: control steps from the observation to its event's end (>= 1)."""
    lengths: torch.Tensor
    """int64 [B]: all ones (one observation per sample; the trainer counts these)."""
    task: list[str]
    done: list[list[str]]
    """Captions of the events finished before the observation, in order."""
    caption: list[str]
    """Target: the caption of the event in progress (never dropped: it is not a condition)."""
    text_states: Optional[torch.Tensor] = None
    """float [B, L, D]: frozen text-encoder states of ``caption``, zero-padded."""
    text_valid: Optional[torch.Tensor] = None
    """bool [B, L]: real positions of ``text_states``."""
    reasoning: list[str] = field(default_factory=list)
    """The reasoning trace of each observation (the conditioner shards' ``reasoning``; Staircase's
    reconstruction target); empty when the shards carry none."""
    keys: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.lengths.shape[0])

    def rows(self, start: int, stop: int) -> "ConditionerBatch":
        """Rows ``start:stop`` (a microbatch, or one data-parallel rank's part)."""
        cut = lambda x: None if x is None else x[start:stop]  # noqa: E731
        return replace(
            self, observation=cut(self.observation), state=cut(self.state), remaining=cut(self.remaining),
            lengths=cut(self.lengths), task=self.task[start:stop], done=self.done[start:stop],
            caption=self.caption[start:stop], text_states=cut(self.text_states),
            text_valid=cut(self.text_valid), keys=self.keys[start:stop], reasoning=self.reasoning[start:stop],
        )

    def to(self, device: torch.device | str) -> "ConditionerBatch":
        move = lambda x: None if x is None else x.to(device, non_blocking=True)  # noqa: E731
        return replace(
            self, observation=move(self.observation), state=move(self.state), remaining=move(self.remaining),
            lengths=move(self.lengths), text_states=move(self.text_states), text_valid=move(self.text_valid),
        )

    def padding_efficiency(self) -> float:
        """1.0 (one observation per row), or real / padded text positions with text states."""
        if self.text_valid is None or self.text_valid.numel() == 0:
            return 1.0
        return float(self.text_valid.sum()) / float(self.text_valid.numel())
