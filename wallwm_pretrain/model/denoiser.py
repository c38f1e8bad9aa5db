"""The dual-tower denoiser, whichever video tower it runs: action tower, context, noise, losses.

One class holds what both video towers share, written once:

- the forward on a :class:`Batch` and its :class:`FlowNoise` (or the anchor mapping's
  :class:`AnchorDraws`, ``anchor_noise.py``), and the pipeline-rank skeleton
  (:meth:`DualTowerDenoiser.forward_slice`: embed on the first pipeline rank or unpack the
  previous one's tensor, this rank's coupled layers, then pack for the next one or compute the
  losses on the last);
- the flow noise (video time shifted by ``model.video_time_shift``, the action tower's uniform),
  in the order the forward has always drawn it;
- the masks of real action steps, real latent frames and frames that carry a video loss (the
  M history frames and the anchor, latent frame M, never do);
- the action tower's input tokens (action k carries latent frame index M + k // K_p and its
  place inside the group of K_p) and its head, the remaining-time head's Huber loss, the
  weighted flow loss and the :data:`LOSS_KEYS`;
- the unified-mode text context (``context.py``): the video tower says where a row's context
  enters (:meth:`~DualTowerDenoiser.with_context`: into the batch's text-encoder states;
  :meth:`~DualTowerDenoiser.context_rows`: after the caption encoder).

The video side is the abstract :class:`~.video_tower.VideoTower` interface, implemented by the
small tower (``wallwm.py``) and the Wan tower (``wan_wallwm.py``); each registers its own
parameters (their names are the checkpoint format, see ``video_tower.py``) and its weights
from its own named RNG parts, so splitting the shared code out of them moved no weight.
Capabilities are attributes, not probes: ``context_sources`` (the context sources built here,
empty when none), ``pipeline_slice`` (which ends of the model this pipeline rank holds) and
``split`` (this rank's piece of each sample's token sequence under context parallelism, see
``sequence_split.py``; None = whole sequences): the action loss then covers this rank's action
tokens, and the remaining-time head, which every context-parallel rank computes whole, counts
``1 / cp`` on each so that the ranks' losses add up to the sample's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model.anchor_noise import AnchorDraws, anchor_losses, with_anchor_draws
from wallwm_pretrain.model.blocks import Streams
from wallwm_pretrain.model.embeddings import mark_adamw, sinusoidal
from wallwm_pretrain.model.flow_matching import FlowNoise, masked_mse, sample_time, weighted_flow_loss
from wallwm_pretrain.model.pipeline_slice import PipelineSlice, part_rng
from wallwm_pretrain.model.remaining_time import huber_sum
from wallwm_pretrain.model.sequence_split import SequenceSplit
from wallwm_pretrain.model.video_tower import VideoTower

# what the last pipeline rank's forward returns, and so what the trainer logs and checkpoints
LOSS_KEYS = ("loss", "loss_video", "loss_action", "loss_time")


def flow_masks(lengths: torch.Tensor, t_steps: int, future_frames: int, history: int,
               frame_stride: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real action steps ``[B, T]``, real latent frames ``[B, M + F_T]`` (the M history frames
    always real; latent frame M + j is real when its first control step ``K_p j`` is), frames
    that carry a video loss (neither the history nor the anchor: they are the clean condition)."""
    dev = lengths.device
    action_valid = torch.arange(t_steps, device=dev)[None, :] < lengths[:, None]
    frame_valid = (torch.arange(future_frames, device=dev) * frame_stride)[None, :] < lengths[:, None]
    if history:
        frame_valid = torch.cat([frame_valid.new_ones(lengths.shape[0], history), frame_valid], dim=1)
    video_loss_mask = frame_valid.clone()
    video_loss_mask[:, : history + 1] = False  # history and anchor are the clean condition, never predicted
    return action_valid, frame_valid, video_loss_mask


class DualTowerDenoiser(nn.Module, VideoTower):
    """The denoiser's shared part; a video tower implementation subclasses it.

    Args:
        cfg: the ``model`` section of the run config (K_p is ``cfg.frame_stride``).
        pipeline_slice: the part to hold (one pipeline rank's); None = the whole model.
    """

    loss_keys = LOSS_KEYS

    def __init__(self, cfg: ModelConfig, pipeline_slice: PipelineSlice | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.frame_stride = cfg.frame_stride
        self.pipeline_slice = PipelineSlice.of(pipeline_slice, cfg.num_layers)
        # the unified-mode context sources this model builds (the first pipeline rank only; pp=1: config)
        self.context_sources: tuple[str, ...] = ()
        # context parallelism: set by a subclass from its process groups (None: whole sequences)
        self.split: SequenceSplit | None = None

    # ------------------------------------------------------------------ building (subclasses)
    def build_action_embeddings(self) -> None:
        """The action tower's input projections (``action_in``, ``action_group_pos``,
        ``state_in``), drawn from the caller's RNG part in this order."""
        cfg, h = self.cfg, self.cfg.hidden_size
        self.action_in = mark_adamw(nn.Linear(int(cfg.action_dim), h))
        self.action_group_pos = mark_adamw(nn.Embedding(cfg.frame_stride, h))
        self.state_in = mark_adamw(nn.Linear(int(cfg.state_dim), h))

    def build_context(self, base_seed: int) -> None:
        """Unified mode's global / Staircase text context (``model.context.sources``), if any."""
        if not self.cfg.context.sources:
            return
        from wallwm_pretrain.model.context import ContextSources  # loads transformers

        width, text_encoder_space = self.text_context_space()
        with part_rng(base_seed, "context"):
            self.context = ContextSources(self.cfg, width, text_encoder_space)
        self.context_sources = tuple(self.context.sources)

    def whole_model_only(self, what: str) -> None:
        if not (self.pipeline_slice.embed and self.pipeline_slice.head):
            raise ValueError(f"{what} needs the whole model; a pipeline rank runs forward_slice")

    # ------------------------------------------------------------------ noise
    def sample_noise(self, batch: Batch, generator: torch.Generator | None = None) -> FlowNoise:
        """Flow times (video: shifted) and noise for a batch, in the order the forward has
        always drawn them; :class:`AnchorDraws` under ``model.action_pretrain.mapping=anchor``."""
        shape = self.video_noise_shape(batch)
        b, dev = batch.actions.shape[0], batch.actions.device
        t_v = sample_time(b, dev, generator, shift=self.cfg.video_time_shift)
        noise_v = torch.randn(shape, device=dev, generator=generator)
        t_a = sample_time(b, dev, generator)
        noise_a = torch.randn(batch.actions.shape, device=dev, generator=generator)
        # model.action_pretrain.mapping=anchor: t_video becomes t*, more action draws follow
        return with_anchor_draws(self.cfg, FlowNoise(t_v, noise_v, t_a, noise_a), generator)

    # ------------------------------------------------------------------ context
    def require_context(self, batch: Batch) -> None:
        if not self.context_sources:
            raise ValueError(f"batch rows ask for {batch.context_sources} text contexts; "
                             "this model builds none (model.context.sources)")

    def with_context(self, batch: Batch) -> Batch:
        """``batch`` with its rows' text contexts where the video tower reads them from the batch
        (the Wan tower: the text-encoder states); unchanged here."""
        return batch

    def context_rows(self, batch: Batch) -> list[torch.Tensor | None] | None:
        """The rows' context states where the video tower reads them after its own text encoder
        (the small tower: the caption encoder's output); None here."""
        return None

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        batch: Batch,
        *,
        generator: torch.Generator | None = None,
        noise: FlowNoise | AnchorDraws | None = None,
        loss_denominators: torch.Tensor | None = None,
        hidden: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor] | torch.Tensor:
        """Flow-matching losses of one batch (or this pipeline rank's part of computing them).

        Args:
            batch: the padded batch; its ``remaining`` is the remaining-time head's target
                (None = no time loss). Rows of a unified-mode batch whose context is
                ``global`` or ``staircase`` read that source's states (:mod:`.context`).
            generator: optional RNG for flow times and noise (ignored when ``noise`` is given).
            noise: precomputed draws (see :meth:`sample_noise`), e.g. rows of a global batch's.
                Every pipeline rank of a pipeline must be given the same draws. :class:`AnchorDraws`
                (``model.action_pretrain.mapping=anchor``) take the anchor-noise path.
            loss_denominators: [3] counts (video elements, action elements, samples) that divide
                the loss sums instead of this batch's own counts (see :meth:`loss_counts`).
            hidden: the packed streams from the previous pipeline rank (not on the first pipeline rank).

        Returns:
            On the last pipeline rank the :data:`LOSS_KEYS`: ``loss`` (weighted sum), ``loss_video``,
            ``loss_action``, ``loss_time``; on any other pipeline rank the packed streams for the next.
        """
        batch = self.with_context(batch)
        if noise is None:
            noise = self.sample_noise(batch, generator)
        if self.split is not None and loss_denominators is None:
            # a context-parallel rank's losses are shares of the sample's: divide by the whole counts
            loss_denominators = self.loss_counts(batch).to(batch.actions.device)
        if isinstance(noise, AnchorDraws):  # model.action_pretrain.mapping=anchor
            if self.split is not None:
                raise ValueError("the anchor-noise mapping is not built with context parallelism (parallel.cp > 1)")
            return anchor_losses(self, batch, noise, loss_denominators, hidden)
        inputs = self.flow_inputs(batch, noise)
        return self.forward_slice(inputs, hidden, loss_denominators, context_rows=self.context_rows(batch))

    def forward_slice(self, inputs: Any, hidden: torch.Tensor | None = None,
                      loss_denominators: torch.Tensor | None = None,
                      context_rows: list[torch.Tensor | None] | None = None) -> dict[str, torch.Tensor] | torch.Tensor:
        """This pipeline rank's layers on ``inputs`` (first pipeline rank) or on ``hidden`` (any later one)."""
        part = self.pipeline_slice
        layer_inputs = self.layer_inputs(inputs)
        if part.embed:
            state = self.embed_towers(inputs, layer_inputs, context_rows)
        else:
            if hidden is None:
                raise ValueError(f"pipeline slice from layer {part.first_layer} needs the previous rank's output")
            state = self.unpack_towers(hidden, inputs, layer_inputs)
        for i in part.layers:
            state = self.run_coupled_layer(i, state, layer_inputs)
        if not part.head:
            return self.pack_towers(state, layer_inputs)
        pred_v, pred_a, s = self.tower_predictions(state, inputs, layer_inputs)
        return self.losses(inputs, pred_v, pred_a, s, loss_denominators)

    def predict(self, inputs: Any, context_rows: list[torch.Tensor | None] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocity predictions (video, actions ``[B, T, A]``) of flow inputs (the whole model)."""
        self.whole_model_only("denoise")
        if self.split is not None:
            raise ValueError("denoising predicts whole sequences: build the model without a context-parallel group")
        layer_inputs = self.layer_inputs(inputs)
        state = self.embed_towers(inputs, layer_inputs, context_rows)
        for i in self.pipeline_slice.layers:
            state = self.run_coupled_layer(i, state, layer_inputs)
        pred_v, pred_a, _ = self.tower_predictions(state, inputs, layer_inputs)
        return pred_v, pred_a

    # ------------------------------------------------------------------ losses
    def losses(self, inputs: Any, pred_video: torch.Tensor, pred_action: torch.Tensor, s: Streams,
               loss_denominators: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The :data:`LOSS_KEYS` of the towers' predictions."""
        den_v, den_a, den_t = (None,) * 3 if loss_denominators is None else loss_denominators.unbind()
        loss_v = self.video_loss(pred_video, inputs, den_v)
        target_a, valid_a = inputs.target_action, inputs.action_valid
        if self.split is not None:  # this rank's action tokens (pred_action is [B, T_pad / cp, A])
            target_a, valid_a = self.split.shard(target_a, 1), self.split.shard_valid(valid_a)
        loss_a = masked_mse(pred_action, target_a, valid_a, den_a)
        loss = weighted_flow_loss(self.cfg.video_loss_weight, loss_v, self.cfg.action_loss_weight, loss_a)
        loss_t = self.time_loss(inputs, s, den_t)
        if loss_t is None:
            loss_t = torch.zeros((), device=loss.device)
        else:
            loss = loss + self.cfg.time_loss_weight * loss_t
        return {"loss": loss, "loss_video": loss_v.detach(), "loss_action": loss_a.detach(),
                "loss_time": loss_t.detach()}

    def time_loss(self, inputs: Any, s: Streams, den: torch.Tensor | None = None) -> torch.Tensor | None:
        """The remaining-time head's Huber loss (None: no target in the batch, or weight 0)."""
        if inputs.remaining is None or self.cfg.time_loss_weight <= 0:
            return None
        anchor, text, text_valid = self.time_head_inputs(inputs, s)
        pred_t = self.time_head(anchor, s.state, text, text_valid)
        den = torch.tensor(float(pred_t.shape[0]), device=pred_t.device) if den is None else den
        loss = huber_sum(pred_t, inputs.remaining) / den.clamp_min(1.0)
        # every context-parallel rank computes the per-sample head whole: each counts 1 / cp
        return loss if self.split is None else loss / self.split.size

    # ------------------------------------------------------------------ the action tower
    def action_tokens(self, xt_action: torch.Tensor, history: int = 0) -> torch.Tensor:
        """``[B, T, h]``: action k's embedding plus latent frame index M + k // K_p (the first
        group lines up with the anchor) plus its place inside the group."""
        t_steps, k, h = xt_action.shape[1], self.frame_stride, self.cfg.hidden_size
        steps = torch.arange(t_steps, device=xt_action.device)
        frame = history + steps // k
        return self.action_in(xt_action) + sinusoidal(frame, h)[None] + self.action_group_pos(steps % k)[None]

    def action_prediction(self, s: Streams) -> torch.Tensor:
        """The action head: velocity ``[B, T, A]`` of the action streams."""
        return self.action_out(s.action, s.temb_action).transpose(0, 1)
