"""The dual-tower denoiser on the small pixel video tower (``model.video_tower=small``).

The shared part (action tower, context, noise, losses, pipeline skeleton) is
:class:`~.denoiser.DualTowerDenoiser`; this module is the small video tower's implementation of
its :class:`~.video_tower.VideoTower` interface.

Data flow of one training forward (shapes for batch B, T control steps, stride K = K_p,
M = ``batch.history`` history latent frames, 0 in event and chunk mode):

1. Video: the window's frames are ``[B, M K + T, ...]`` (M K history control steps, then the T
   steps the actions cover); latent frame f is the observed frame at step f*K, so there are
   F = M + ceil(T / K) latent frames, patchified to [B, F, P, D]. The first M + 1 frames (the
   history and the anchor, latent frame M: the observation at the event or chunk start) stay
   clean (they are the condition, always real, never in the video loss); frames M + 1.. are
   noised with flow time t_v and predicted.
2. Actions: [B, T, A], noised with their own flow time t_a. Action k belongs to latent frame
   M + k // K and carries that frame index (shared sinusoid with the video tokens) plus its
   place inside the group of K, so each group of K_p actions lines up with its frame, the
   first group with the anchor.
3. The state token (proprioception at the anchor) and the caption states condition the
   action tower; the caption conditions the video tower too; timesteps enter by AdaLN.
4. ``num_layers`` coupled layers (the video tower attends over history, anchor and future
   frames alike; the action tower reads all of them through the coupling), then per-tower
   heads and masked flow-matching losses.
5. The remaining-time head (``remaining_time.py``) predicts, from the clean anchor frame, the
   state token and the caption, how many frames are left until the event ends (Huber loss);
   at inference it decides how much of a denoised event to execute.

Event mode, chunk mode and unified mode share this model; they differ only in what a sample is
(see ``wallwm_pretrain/data/cookers.py``) and in M.

Action pretraining's anchor-noise mapping (``anchor_noise.py``, ``model.action_pretrain``) runs
the same blocks as one video pass that records every layer's video output
(:meth:`WallWM.anchor_video`) and K action passes that read them (:meth:`WallWM.anchor_action`).

Context parallel. Given a context-parallel group (``pg_collection.cp`` of size > 1), each
rank keeps its piece of the video tokens (F * P per sample) and of the action tokens (T) after
embedding them (:meth:`WallWM.split_streams`, ``sequence_split.py``); the heads predict and
the losses cover this rank's tokens only.

Pipeline parallel. Built with a :class:`PipelineSlice`, the model holds only the parts one
pipeline rank runs (see ``pipeline_slice.py``): the first embeds and sends the packed
:class:`Streams`, middle ones unpack, run their coupled layers and pack again, the last computes
heads and losses.
Every pipeline rank derives the noisy inputs, targets and masks from the same batch and flow noise
(:meth:`WallWM.flow_inputs`, no parameters, cheap next to the layers), so only hidden states
cross pipeline ranks. Parameter names are those of the whole model (``layers.<global index>``), so the
pipeline ranks' state dicts together are the whole model's.
"""


from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from megatron.core.process_groups_config import ProcessGroupCollection
from torch import nn

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.captions import CAPTION_PAD
from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model.blocks import CoupledLayer, FinalLayer, Streams, TextLayer, key_padding_mask
from wallwm_pretrain.model.denoiser import LOSS_KEYS, DualTowerDenoiser, flow_masks
from wallwm_pretrain.model.embeddings import CaptionEncoder, TimestepEmbedder, mark_adamw, patchify, sinusoidal
from wallwm_pretrain.model.flops import SampleShape, train_flops
from wallwm_pretrain.model.flow_matching import FlowNoise, interpolate, masked_mse
from wallwm_pretrain.model.pipeline_slice import PipelineSlice, draw_base_seed, part_rng
from wallwm_pretrain.model.recompute import run_layer
from wallwm_pretrain.model.remaining_time import RemainingTimeHead
from wallwm_pretrain.model.sequence_split import SequenceSplit
from wallwm_pretrain.model.spec import build_transformer_config

__all__ = ["LOSS_KEYS", "FlowInputs", "WallWM"]


@dataclass
class FlowInputs:
    """What every pipeline rank derives from a batch and its flow noise (no parameters involved)."""

    xt_video: torch.Tensor  # [B, F, P, D] noisy video latents, frames 0..M (history, anchor) clean
    xt_action: torch.Tensor  # [B, T, A] noisy actions
    target_video: torch.Tensor  # velocity targets
    target_action: torch.Tensor
    t_video: torch.Tensor  # [B]
    t_action: torch.Tensor  # [B]
    state: torch.Tensor  # [B, S]
    caption: torch.Tensor  # [B, L]
    frame_valid: torch.Tensor  # [B, F] real latent frames
    action_valid: torch.Tensor  # [B, T] real control steps
    video_loss_mask: torch.Tensor  # [B, F] frames that carry a video loss
    remaining: torch.Tensor | None = None  # [B] latent frames to the event's end (time-head target)
    history: int = 0  # M: latent frames before the anchor (latent frame M)


class WallWM(DualTowerDenoiser):
    """The dual-tower denoiser on the small video tower, or one pipeline rank of it.

    Args:
        cfg: the ``model`` section of the run config (K_p is ``cfg.frame_stride``; captions are
            at most ``cfg.caption_max_bytes`` + 1 tokens).
        pipeline_slice: the part to hold (one pipeline rank's); None = the whole model.
        pg_collection: megatron's process groups of this rank (``ParallelContext.pg_collection``):
            the attention and FFN modules are then megatron-core's, split over its
            tensor-parallel group. None builds them from local layers with the same parameter
            names, layouts and arithmetic (see ``spec.py``), with no process group at all:
            for export, evaluation, inference and tests. The two load each other's state dicts.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        pipeline_slice: PipelineSlice | None = None,
        *,
        pg_collection: ProcessGroupCollection | None = None,
    ) -> None:
        super().__init__(cfg, pipeline_slice)
        self.split = SequenceSplit.of(pg_collection)
        part = self.pipeline_slice
        caption_max_len = cfg.caption_max_bytes + 1
        h = cfg.hidden_size
        self.patches = cfg.num_views * (cfg.image_size // cfg.patch_size) ** 2
        self.patch_dim = cfg.patch_size**2 * 3
        tcfg = build_transformer_config(cfg)
        selective = cfg.recompute == "selective"
        base = draw_base_seed()

        # Registration order = parameter order: input side, layers, output side. Concatenating
        # the pipeline ranks in order therefore gives the whole model's order.
        if part.embed:
            with part_rng(base, "embed"):
                self.video_in = mark_adamw(nn.Linear(self.patch_dim, h))
                self.video_patch_pos = mark_adamw(nn.Embedding(self.patches, h))
                self.build_action_embeddings()
                self.time_video = TimestepEmbedder(h)
                self.time_action = TimestepEmbedder(h)
                text_cfg = build_transformer_config(cfg, num_layers=max(cfg.text_layers, 1))
                self.caption = CaptionEncoder(
                    h,
                    caption_max_len,
                    nn.ModuleList(
                        TextLayer(text_cfg, i + 1, selective, pg_collection) for i in range(cfg.text_layers)
                    ),
                )
            self.build_context(base)
        # keyed by the global layer index: names match the whole model's ``layers.<i>.``
        self.layers = nn.ModuleDict()
        for i in part.layers:
            with part_rng(base, f"layer{i}"):
                self.layers[str(i)] = CoupledLayer(tcfg, i + 1, selective, pg_collection)
        if part.head:
            with part_rng(base, "head"):
                self.video_out = FinalLayer(h, self.patch_dim)
                self.action_out = FinalLayer(h, cfg.action_dim)
            with part_rng(base, "time_head"):
                self.time_head = RemainingTimeHead(h, self.patch_dim)

    # ------------------------------------------------------------------ bookkeeping
    def parameter_counts(self) -> dict[str, int]:
        """Parameters per tower held here (the rest: caption encoder, embeddings, timestep MLPs)."""
        count = lambda mods: sum(p.numel() for m in mods for p in m.parameters())  # noqa: E731
        part, layers = self.pipeline_slice, list(self.layers.values())
        video = [l.video for l in layers] + ([self.video_in, self.video_patch_pos] if part.embed else [])
        action = [l.action for l in layers] + ([self.action_in, self.action_group_pos, self.state_in] if part.embed else [])
        if part.head:
            video, action = video + [self.video_out], action + [self.action_out]
        video, action = count(video), count(action)
        total = sum(p.numel() for p in self.parameters())
        return {"video_tower": video, "action_tower": action, "conditioning": total - video - action, "total": total}

    def coupled_layers(self) -> dict[str, tuple[nn.Module, nn.Module]]:
        """Coupled layer i is one module (video block i and action block i)."""
        return {i: (layer, layer) for i, layer in self.layers.items()}

    def residual_widths(self) -> set[int]:
        return {self.cfg.hidden_size}

    @staticmethod
    def boundary_width(cfg: ModelConfig) -> int:
        """Both towers are ``hidden_size`` wide: so is the pipeline boundary."""
        return build_transformer_config(cfg).hidden_size

    def loss_element_counts(self, lengths: torch.Tensor, t_steps: int, history: int = 0) -> torch.Tensor:
        """[3] float: video elements, action elements and samples over which this batch's
        losses average (``history``: M, whose frames and the anchor carry no loss).

        Summed over data-parallel ranks and passed back as ``loss_denominators``, they make
        each rank's loss its exact share of the global-batch loss.
        """
        action_valid, _, video_loss_mask = self._masks(lengths, t_steps, history)
        per_frame = self.patches * self.patch_dim
        return torch.stack(
            [video_loss_mask.sum() * per_frame, action_valid.sum() * self.cfg.action_dim, lengths.new_tensor(lengths.shape[0])]
        ).to(torch.float32)

    def loss_counts(self, batch: Batch) -> torch.Tensor:
        """:meth:`loss_element_counts` of a batch."""
        return self.loss_element_counts(batch.lengths, batch.actions.shape[1], self._history(batch))

    def boundary_seq_length(self, batch: Batch) -> int:
        """Positions of the packed pipeline-boundary tensor (:meth:`Streams.pack`):
        F * P + T + L + 3, the F = M + ceil(T / K) latent frames counting the history."""
        frames, p = batch.frames, self.cfg.patch_size
        t_steps = batch.actions.shape[1]
        frames_kept = self._history(batch) + -(-t_steps // self.frame_stride)
        patches = frames.shape[2] * (frames.shape[3] // p) * (frames.shape[4] // p)
        video, action = frames_kept * patches, t_steps
        if self.split is not None:  # this context-parallel rank's pieces
            video, action = self.split.local(video), self.split.local(action)
        return video + action + batch.caption.shape[1] + 3

    def train_flops(self, batch: Batch) -> int:
        """Model FLOPs of one sample's training step at this batch's padded shapes (the whole
        model's, whichever pipeline slice this is)."""
        shape = SampleShape.of(
            self.cfg, batch.actions.shape[1], self.frame_stride, batch.caption.shape[1], history=self._history(batch)
        )
        return train_flops(self.cfg, shape)

    # ------------------------------------------------------------------ inputs
    def _history(self, batch: Batch) -> int:
        """``batch.history`` (M), checked against the frames: ``[B, M K + T, ...]``."""
        m, k = int(batch.history), self.frame_stride
        t_steps = batch.actions.shape[1]
        if m < 0:
            raise ValueError(f"batch.history must be >= 0 latent frames, got {m}")
        if batch.frames.shape[1] != m * k + t_steps:
            raise ValueError(
                f"batch.frames has {batch.frames.shape[1]} control steps; batch.history = {m} latent frames at "
                f"K_p = model.frame_stride = {k} before the {t_steps} steps of batch.actions need {m * k + t_steps}"
            )
        return m

    def _masks(self, lengths: torch.Tensor, t_steps: int, history: int = 0):
        """:func:`~.denoiser.flow_masks` of T control steps (T // K future latent frames)."""
        return flow_masks(lengths, t_steps, t_steps // self.frame_stride, history, self.frame_stride)

    def video_noise_shape(self, batch: Batch) -> tuple[int, ...]:
        """``[B, F, P, D]``: frames[:, ::K] keeps M + ceil(T / K) frames (the history's M K steps
        are whole frames)."""
        frames, p = batch.frames, self.cfg.patch_size
        b, t_steps = batch.actions.shape[:2]
        n_frames = self._history(batch) + -(-t_steps // self.frame_stride)
        patches = frames.shape[2] * (frames.shape[3] // p) * (frames.shape[4] // p)
        return (b, n_frames, patches, p * p * frames.shape[5])

    def flow_inputs(self, batch: Batch, noise: FlowNoise) -> FlowInputs:
        """Noisy inputs, velocity targets and masks of a batch (patchify, interpolate)."""
        frames, actions, lengths, remaining = batch.frames, batch.actions, batch.lengths, batch.remaining
        k, m = self.frame_stride, self._history(batch)
        action_valid, frame_valid, video_loss_mask = self._masks(lengths, actions.shape[1], m)
        # video latents; frames 0..M (history and anchor) are the clean condition
        x0_v = patchify(frames[:, ::k], self.cfg.patch_size)  # [B, F, P, D]
        xt_v, target_v = interpolate(x0_v, noise.noise_video, noise.t_video)
        xt_v = torch.cat([x0_v[:, : m + 1], xt_v[:, m + 1 :]], dim=1)
        xt_a, target_a = interpolate(actions, noise.noise_action, noise.t_action)
        return FlowInputs(
            xt_v, xt_a, target_v, target_a, noise.t_video, noise.t_action, batch.state, batch.caption,
            frame_valid, action_valid, video_loss_mask,
            None if remaining is None else remaining.float() / k, m,
        )

    def _stream_masks(self, inputs: FlowInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """megatron key-padding masks of the video tokens, action tokens and caption (under
        context parallelism: of the whole padded token sequences)."""
        p = inputs.xt_video.shape[2]
        video, action = inputs.frame_valid.repeat_interleave(p, dim=1), inputs.action_valid
        if self.split is not None:
            video, action = self.split.pad_valid(video), self.split.pad_valid(action)
        return key_padding_mask(video), key_padding_mask(action), key_padding_mask(inputs.caption != CAPTION_PAD)

    def split_streams(self, s: Streams) -> Streams:
        """``s`` with this context-parallel rank's piece of the video and action tokens and the
        masks of the whole padded sequences (unchanged without context parallelism)."""
        if self.split is None:
            return s
        sp = self.split
        return replace(s, video=sp.shard(s.video), action=sp.shard(s.action),
                       video_mask=sp.pad(s.video_mask, 3, True), action_mask=sp.pad(s.action_mask, 3, True))

    # ------------------------------------------------------------------ text context
    def context_rows(self, batch: Batch) -> list[torch.Tensor | None] | None:
        """Unified mode: the context states ``[L_i, hidden]`` of the rows whose source is
        ``global`` or ``staircase`` (None for ``atomic`` rows), or None when every row reads its
        caption (:mod:`.context`). They replace the caption encoder's output of their rows."""
        if not batch.context_sources:
            return None
        self.require_context(batch)
        return self.context.row_states(batch)

    def text_context_space(self) -> tuple[int, bool]:
        """The caption encoder's output stream (``hidden_size`` wide): a context row replaces it there."""
        return int(self.cfg.hidden_size), False

    def text_context(self, caption: torch.Tensor, context_rows: list[torch.Tensor | None] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The towers' text stream ``[L, B, h]`` and its real positions ``[B, L]``: the caption
        encoder's output, with the rows that carry context states (``context_rows``) reading
        those instead."""
        valid = caption != CAPTION_PAD
        text = self.caption(caption, key_padding_mask(valid))
        if context_rows is None or all(r is None for r in context_rows):
            return text, valid
        merged, merged_valid = self.context.merge(context_rows, text.transpose(0, 1), valid)
        return merged.transpose(0, 1).to(text.dtype), merged_valid

    # ------------------------------------------------------------------ the video tower interface
    def layer_inputs(self, inputs: FlowInputs) -> None:
        """Nothing: the masks travel in the :class:`Streams`."""
        return None

    def embed_towers(self, inputs: FlowInputs, layer_inputs: None = None,
                     context_rows: list[torch.Tensor | None] | None = None) -> Streams:
        text = self.text_context(inputs.caption, context_rows)
        return self.split_streams(self.embed(
            inputs.xt_video, inputs.xt_action, inputs.t_video, inputs.t_action, inputs.state,
            inputs.caption, inputs.frame_valid, inputs.action_valid, history=inputs.history, text=text,
        ))

    def unpack_towers(self, hidden: torch.Tensor, inputs: FlowInputs, layer_inputs: None = None) -> Streams:
        video_mask, action_mask, text_mask = self._stream_masks(inputs)
        b, f, p, _ = inputs.xt_video.shape
        video, action = f * p, inputs.xt_action.shape[1]
        if self.split is not None:
            video, action = self.split.local(video), self.split.local(action)
        return Streams.unpack(hidden, video, action, video_mask, action_mask, text_mask)

    def run_coupled_layer(self, index: int, s: Streams, layer_inputs: None = None) -> Streams:
        """Coupled layer ``index``, recomputed in backward when ``recompute=full``."""
        return run_layer(self.layers[str(index)], s, self.cfg.recompute)

    def pack_towers(self, s: Streams, layer_inputs: None = None) -> torch.Tensor:
        return s.pack()

    def tower_predictions(self, s: Streams, inputs: FlowInputs, layer_inputs: None = None):
        if self.split is not None:  # this rank's tokens: [B, F P_pad / cp, D], [B, T_pad / cp, A]
            return self.video_out(s.video, s.temb_video).transpose(0, 1), self.action_prediction(s), s
        pred_v, pred_a = self.head(s, inputs.xt_video.shape)
        return pred_v, pred_a, s

    def video_loss(self, pred_video: torch.Tensor, inputs: FlowInputs, denominator: torch.Tensor | None):
        if self.split is not None:  # this rank's tokens of the targets and of the loss mask
            b, f, p, d = inputs.target_video.shape
            target = self.split.shard(inputs.target_video.reshape(b, f * p, d), 1)
            mask = self.split.shard_valid(inputs.video_loss_mask.repeat_interleave(p, dim=1))
            return masked_mse(pred_video, target, mask, denominator)
        return masked_mse(pred_video, inputs.target_video, inputs.video_loss_mask, denominator)

    def time_head_inputs(self, inputs: FlowInputs, s: Streams):
        # the anchor (latent frame M) and the text stream's own mask (a context source's rows too)
        return inputs.xt_video[:, inputs.history], s.text, ~s.text_mask[:, 0, 0]

    def run_layers(self, s: Streams) -> Streams:
        """This pipeline rank's coupled layers, each recomputed in backward when ``recompute=full``."""
        for i in self.pipeline_slice.layers:
            s = self.run_coupled_layer(i, s)
        return s

    # -- the anchor mapping's two passes (model/anchor_noise.py); the whole model only ------------
    def video_side_parameters(self) -> list[nn.Parameter]:
        """What the video pass reads: the video tower and the caption encoder."""
        mods = [self.video_in, self.video_patch_pos, self.time_video, self.caption]
        return [p for m in mods + [layer.video for layer in self.layers.values()] for p in m.parameters()]

    def anchor_video(self, inputs: FlowInputs) -> tuple[Streams, list[torch.Tensor]]:
        """The video side once: its embedding, then every layer's video block (the same blocks
        and order as :meth:`run_layers`); the streams without the action side, each layer's
        video output."""
        s = self.embed_video(inputs.xt_video, inputs.t_video, inputs.caption, inputs.frame_valid)  # atomic rows only
        videos = []
        for layer in self.layers.values():
            s = replace(s, video=run_layer(layer.video, s, self.cfg.recompute))
            videos.append(s.video)
        return s, videos

    def anchor_action(self, inputs: FlowInputs, features: tuple[Streams, list[torch.Tensor]]):
        """One action pass reading the recorded video outputs: (prediction [B, T, A], streams)."""
        s, videos = features
        s = self.embed_action(s, inputs.xt_action, inputs.t_action, inputs.state, inputs.action_valid,
                              history=inputs.history)
        for layer, video in zip(self.layers.values(), videos):
            s = replace(s, action=run_layer(layer.action, s, self.cfg.recompute, video))
        return self.action_prediction(s), s

    # ------------------------------------------------------------------ inference
    def denoise(
        self,
        xt_video: torch.Tensor,
        xt_action: torch.Tensor,
        t_video: torch.Tensor,
        t_action: torch.Tensor,
        state: torch.Tensor,
        caption: torch.Tensor,
        frame_valid: torch.Tensor,
        action_valid: torch.Tensor,
        *,
        history: int = 0,
        text: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocity predictions for noisy video latents [B, F, P, D] and actions [B, T, A]
        (the whole model only).

        ``history``: M, the clean history latent frames at the front of ``xt_video`` before the
        anchor (frame M); action k then carries frame index M + k // K. The caller keeps frames
        0..M clean (event mode: M = 0, frame 0 is the current observation). ``text``: the text
        stream and its mask from :meth:`text_context` (computed once per plan; default: the
        caption encoder's output of ``caption``).
        """
        self.whole_model_only("denoise")
        if not 0 <= history < xt_video.shape[1]:
            raise ValueError(f"history={history} must leave the anchor among the {xt_video.shape[1]} latent frames")
        s = self.embed(xt_video, xt_action, t_video, t_action, state, caption, frame_valid, action_valid,
                       history=history, text=text)
        return self.head(self.run_layers(s), xt_video.shape)

    def remaining_steps(self, first_frame: torch.Tensor, state: torch.Tensor, caption: torch.Tensor,
                        text: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Predicted control steps to the end of the event in progress now (whole model only).

        Args:
            first_frame: uint8 [B, V, H, W, 3], the current observation (unified mode: the anchor).
            state: float [B, S] (normalised); caption: long [B, L] byte tokens.
            text: the text stream and mask of :meth:`text_context` in place of ``caption``'s.
        """
        if not (self.pipeline_slice.embed and self.pipeline_slice.head):
            raise ValueError("remaining_steps needs the whole model")
        text, text_valid = self.text_context(caption) if text is None else text
        patches = patchify(first_frame[:, None], self.cfg.patch_size)[:, 0]
        frames_left = self.time_head(patches, self.state_in(state)[None], text, text_valid)
        return frames_left * self.frame_stride

    # ------------------------------------------------------------------ embed and heads
    def embed(self, xt_video, xt_action, t_video, t_action, state, caption, frame_valid, action_valid, *,
              history: int = 0, text: tuple[torch.Tensor, torch.Tensor] | None = None) -> Streams:
        s = self.embed_video(xt_video, t_video, caption, frame_valid, text=text)
        return self.embed_action(s, xt_action, t_action, state, action_valid, history=history)

    def embed_video(self, xt_video, t_video, caption, frame_valid, *,
                    text: tuple[torch.Tensor, torch.Tensor] | None = None) -> Streams:
        """The video side's input streams (video tokens, the text stream: ``text`` or the caption
        encoder's output, video timestep); the action side's fields are None until
        :meth:`embed_action`."""
        b, f, p, _ = xt_video.shape
        frame_index = torch.arange(f, device=xt_video.device)
        h = self.cfg.hidden_size
        video = self.video_in(xt_video) + self.video_patch_pos.weight[None, None]
        video = video + sinusoidal(frame_index, h)[None, :, None]
        text, text_valid = self.text_context(caption) if text is None else text
        return Streams(
            video=video.reshape(b, f * p, h).transpose(0, 1),
            action=None,
            text=text,
            state=None,
            temb_video=self.time_video(t_video),
            temb_action=None,
            video_mask=key_padding_mask(frame_valid.repeat_interleave(p, dim=1)),
            action_mask=None,
            text_mask=key_padding_mask(text_valid),
        )

    def embed_action(self, s: Streams, xt_action, t_action, state, action_valid, *, history: int = 0) -> Streams:
        """``s`` with the action side's input streams (action tokens, state token, action timestep)."""
        action = self.action_tokens(xt_action, history)
        return replace(
            s, action=action.transpose(0, 1), state=self.state_in(state)[None],
            temb_action=self.time_action(t_action), action_mask=key_padding_mask(action_valid),
        )

    def head(self, s: Streams, video_shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        pred_v = self.video_out(s.video, s.temb_video).transpose(0, 1).reshape(video_shape)
        return pred_v, self.action_prediction(s)
