"""The dual-tower denoiser with a Wan-architecture video tower (``model.video_tower=wan``).

The shared part (forward on a :class:`Batch` and its :class:`FlowNoise`, pipeline skeleton, loss
denominators, action tower, context, losses) is :class:`~.denoiser.DualTowerDenoiser`; this
module is the Wan tower's implementation of its :class:`~.video_tower.VideoTower` interface:

1. Video: the batch's VAE latents ``[B, V, Z, M + N, h, w]``: M = ``batch.history`` history
   latent frames (0 in event and chunk mode), then the N latent frames of the T control steps
   (latent frame M + j goes with control steps ``[K_p j, K_p j + K_p)``, latent frame M being the
   anchor), noised with the *shifted* video flow time (``model.video_time_shift``), the first
   M + 1 latent frames (history and anchor) kept clean and always real; the :class:`WanTower`
   reads Wan's per-token timesteps (0 on the clean frames, ``1000 t`` elsewhere), the text
   encoder's states (``batch.text_states``) and predicts the velocity; the loss covers real
   frames M + 1.. only.
2. Actions: the project's action tower (``model.hidden_size`` wide, its own uniform flow time),
   embedded as on the small path: action k carries its latent frame's index M + k // K_p (the
   first group lines up with the anchor) and its place inside the group; the state token; the
   caption is the text encoder's states through a learned projection ``text_dim -> hidden_size``.
3. Coupled layer i = Wan block i, then action block i, whose coupling cross-attention reads Wan
   block i's output as one key sequence per sample over all views (:func:`coupling_keys`),
   projected ``wan width -> hidden_size`` by a learned linear (``action_layers.<i>.coupling``), so
   megatron's cross-attention keeps the action width; the keys span all M + N latent frames,
   history included. One-way: the video tower never reads the action stream.
4. The remaining-time head reads the clean anchor latent frame (one token per latent pixel and
   view, ``Z`` channels each), the state token and the projected caption states.

Action pretraining's anchor-noise mapping (``anchor_noise.py``) runs the Wan blocks once,
recording each block's output (:meth:`WanWallWM.anchor_video`), and K action passes reading them
(:meth:`WanWallWM.anchor_action`).

Context parallelism (``sequence_split.py``): each rank holds its piece of every view's video
tokens (the Wan tower, ``model/wan/tower.py``) and of the action tokens; the coupling's keys
are this rank's tokens of all views (:func:`coupling_keys` of the piece), which the exchange
lays one rank after another, so their mask (:meth:`WanWallWM.coupling_mask`) follows that
order. Not built: context parallelism together with pipeline ranks on this tower.

Pipeline ranks. What crosses a pipeline boundary is ONE ``[n, B, d_wan]`` tensor (megatron's p2p
sends one tensor of ``[seq, micro_batch, pipeline hidden size]``, and the pipeline config's
hidden size is the Wan width here): first the Wan streams (:meth:`WanStreams.pack`,
``[S + L + 7t, B * V, d_wan]``) with each sample's views laid one after another along the
sequence (``[V * (S + L + 7t), B, d_wan]``), then the action streams (action tokens, projected
caption, state token, action timestep embedding; ``[T + L + 2, B, h]``) flattened per sample,
zero-padded to a multiple of ``d_wan`` and cut into ``d_wan``-wide positions. Masks, RoPE and
shapes do not travel: every pipeline rank derives them from the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from megatron.core.process_groups_config import ProcessGroupCollection
from torch import nn
from torch.utils.checkpoint import checkpoint

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.config import ModelConfig, WanTowerConfig
from wallwm_pretrain.model.blocks import ActionBlock, FinalLayer, Streams, key_padding_mask
from wallwm_pretrain.model.denoiser import DualTowerDenoiser, flow_masks
from wallwm_pretrain.model.embeddings import TimestepEmbedder, mark_adamw
from wallwm_pretrain.model.flops import cross_attention_flops, ffn_flops, self_attention_flops
from wallwm_pretrain.model.flow_matching import FlowNoise, interpolate, masked_mse
from wallwm_pretrain.model.pipeline_slice import PipelineSlice, draw_base_seed, part_rng
from wallwm_pretrain.model.remaining_time import RemainingTimeHead
from wallwm_pretrain.model.sequence_split import SequenceSplit
from wallwm_pretrain.model.spec import build_transformer_config
from wallwm_pretrain.model.wan.config import WanConfig
from wallwm_pretrain.model.wan.flops import wan_forward_flops
from wallwm_pretrain.model.wan.flow import per_token_timesteps
from wallwm_pretrain.model.wan.text import pad_text_context
from wallwm_pretrain.model.wan.tower import WanGeometry, WanStreams, WanTower, coupling_keys


def wan_config(cfg: ModelConfig) -> WanConfig:
    """The video tower's shape: ``model.wan`` at ``model.num_layers`` blocks and ``model.num_views``."""
    # every field of the schema's section is a WanConfig field of the same name
    shape = {f.name: getattr(cfg.wan, f.name) for f in fields(WanTowerConfig)}
    shape["patch_size"] = tuple(shape["patch_size"])
    return WanConfig(**shape, num_layers=cfg.num_layers, num_views=int(cfg.num_views), init_std=cfg.init_std)


@dataclass
class WanFlowInputs:
    """What every pipeline rank derives from a batch and its flow noise (no parameters involved)."""

    xt_video: torch.Tensor  # [B, V, Z, M + N, h, w] noisy latents, latent frames 0..M (history, anchor) clean
    timestep: torch.Tensor  # [B, S] Wan timesteps per token (0 on the clean frames)
    xt_action: torch.Tensor  # [B, T, A]
    target_video: torch.Tensor
    target_action: torch.Tensor
    t_action: torch.Tensor  # [B]
    state: torch.Tensor  # [B, S_state]
    text_states: torch.Tensor  # [B, L, text_dim]
    text_valid: torch.Tensor  # [B, L]
    frame_valid: torch.Tensor  # [B, M + N]
    action_valid: torch.Tensor  # [B, T]
    video_loss_mask: torch.Tensor  # [B, M + N]
    anchor_frame: torch.Tensor  # [B, V * h * w, Z] the clean anchor latent frame M (time head)
    remaining: torch.Tensor | None = None
    history: int = 0  # M: latent frames before the anchor


@dataclass(frozen=True)
class WanLayerInputs:
    """What every coupled layer reads besides the streams, derived once per forward."""

    geo: WanGeometry
    rope: tuple[torch.Tensor, torch.Tensor]
    video_mask: torch.Tensor | None
    text_mask: torch.Tensor | None


class ActionLayer(nn.Module):
    """Action block i and the projection of Wan block i's output to the action width."""

    def __init__(self, config, wan_width: int, layer_number: int, recompute_core: bool,
                 pg_collection: ProcessGroupCollection | None) -> None:
        super().__init__()
        self.coupling = nn.Linear(wan_width, config.hidden_size)
        self.block = ActionBlock(config, layer_number, recompute_core, pg_collection)

    def forward(self, s: Streams, video: torch.Tensor, views: int) -> torch.Tensor:
        return self.block(s, self.coupling(coupling_keys(video, views)))


class WanWallWM(DualTowerDenoiser):
    """The dual-tower denoiser on a Wan video tower, or one pipeline rank of it.

    Args:
        cfg: the ``model`` section (``video_tower=wan``; the Wan shape in ``cfg.wan``).
        pipeline_slice: the coupled layers (and ends) to hold; None = the whole model.
        pg_collection: megatron's process groups (TP-split layers) or None (local layers).

    Parameter names: ``video.*`` is the :class:`WanTower` (``video.blocks.<i>.*`` etc., the names
    ``convert_tower_state`` writes, under ``video.``), ``action_layers.<i>.*`` the action tower's
    layers, the rest the action tower's input side and heads. The pipeline ranks' names together are
    the whole model's; their concatenated order is not the whole model's (each pipeline rank lists its
    video part, then its action part), which nothing relies on: checkpoints and optimizer
    state are keyed by name.
    """

    def __init__(self, cfg: ModelConfig, pipeline_slice: PipelineSlice | None = None, *,
                 pg_collection: ProcessGroupCollection | None = None) -> None:
        wcfg = wan_config(cfg)
        if wcfg.patch_size[0] != 1:
            raise ValueError(
                f"model.wan.patch_size {list(cfg.wan.patch_size)}: the clean history and anchor latent frames are the "
                "condition, which needs a temporal patch of 1"
            )
        super().__init__(cfg, pipeline_slice)
        self.wan = wcfg
        self.split = SequenceSplit.of(pg_collection)
        part = self.pipeline_slice
        if self.split is not None and not (part.embed and part.head):
            raise ValueError("the Wan tower's pipeline boundary is not built with context parallelism: "
                             "use parallel.pp=1 with parallel.cp > 1 on model.video_tower=wan")
        h = cfg.hidden_size
        tcfg = build_transformer_config(cfg)
        selective = cfg.recompute == "selective"
        base = draw_base_seed()
        # the video tower draws its parts from ("wan.embed", "wan.block<i>", "wan.head")
        self.video = WanTower(wcfg, part, pg_collection=pg_collection, seed=base, recompute=cfg.recompute)
        if part.embed:
            with part_rng(base, "action.embed"):
                self.build_action_embeddings()
                self.time_action = TimestepEmbedder(h)
                self.text_in = mark_adamw(nn.Linear(wcfg.text_dim, h))
            self.build_context(base)
        self.action_layers = nn.ModuleDict()
        for i in part.layers:
            with part_rng(base, f"action.layer{i}"):
                self.action_layers[str(i)] = ActionLayer(tcfg, wcfg.hidden_size, i + 1, selective, pg_collection)
        if part.head:
            with part_rng(base, "action.head"):
                self.action_out = FinalLayer(h, int(cfg.action_dim))
            with part_rng(base, "action.time_head"):
                self.time_head = RemainingTimeHead(h, wcfg.in_channels)

    # ------------------------------------------------------------------ bookkeeping
    def parameter_counts(self) -> dict[str, int]:
        """Parameters held here per tower (the coupling projections count to the action tower)."""
        video = sum(p.numel() for p in self.video.parameters())
        total = sum(p.numel() for p in self.parameters())
        cond_modules = [self.text_in, self.time_action] if self.pipeline_slice.embed else []
        if self.context_sources:
            cond_modules.append(self.context)
        cond = sum(p.numel() for m in cond_modules for p in m.parameters())
        return {"video_tower": video, "action_tower": total - video - cond, "conditioning": cond, "total": total}

    def coupled_layers(self) -> dict[str, tuple[nn.Module, nn.Module]]:
        """Coupled layer i: Wan block i, then action layer i."""
        return {i: (self.video.blocks[i], self.action_layers[i]) for i in self.action_layers}

    def residual_widths(self) -> set[int]:
        return {self.cfg.hidden_size, self.wan.hidden_size}

    @staticmethod
    def boundary_width(cfg: ModelConfig) -> int:
        """The pipeline boundary is ``[n, B, Wan width]`` (see the module docstring)."""
        return int(cfg.wan.num_attention_heads * cfg.wan.attention_head_dim)

    def _masks(self, lengths: torch.Tensor, t_steps: int, frames: int, history: int = 0):
        """:func:`~.denoiser.flow_masks` of ``frames`` latent frames, the first ``history`` the history."""
        return flow_masks(lengths, t_steps, frames - history, history, self.frame_stride)

    def _check(self, batch: Batch) -> None:
        missing = [n for n in ("latents", "text_states") if getattr(batch, n) is None]
        if missing:
            raise ValueError(
                f"model.video_tower=wan needs batch.{' and batch.'.join(missing)} (VAE latents and text-encoder "
                "states in the shards: data_tools encode-latents / embed-captions)"
            )
        lat, t_steps, k, m = batch.latents, batch.actions.shape[1], self.frame_stride, int(batch.history)
        if lat.dim() != 6:
            raise ValueError(f"batch.latents must be [B, V, Z, M + N, h, w], got {tuple(lat.shape)}")
        if m < 0:
            raise ValueError(f"batch.history must be >= 0 latent frames, got {m}")
        want = m + -(-t_steps // k)
        if lat.shape[3] != want:
            raise ValueError(
                f"batch.latents has {lat.shape[3]} latent frames; batch.history = {m} history latent frames and "
                f"{t_steps} control steps at K_p = model.frame_stride = {k} need {m} + ceil({t_steps}/{k}) = {want}"
            )

    def loss_counts(self, batch: Batch) -> torch.Tensor:
        """[3] float: video elements, action elements, samples over which the losses average."""
        self._check(batch)
        b, v, z, n, hh, ww = batch.latents.shape
        action_valid, _, video_loss_mask = self._masks(batch.lengths, batch.actions.shape[1], n, batch.history)
        return torch.stack([
            video_loss_mask.sum() * (v * z * hh * ww), action_valid.sum() * int(self.cfg.action_dim),
            batch.lengths.new_tensor(b),
        ]).to(torch.float32)

    def boundary_seq_length(self, batch: Batch) -> int:
        """Positions of the packed pipeline-boundary tensor (see the module docstring; the
        history latent frames are video tokens like the others)."""
        b, v, z, n, hh, ww = batch.latents.shape
        pt, ph, pw = self.wan.patch_size
        tokens = (n // pt) * (hh // ph) * (ww // pw)
        text_len = int(self.cfg.text_len)  # Wan's padded text context (model/wan/text.py)
        wan = v * (tokens + text_len + 7 * tokens)  # per-token timesteps: t = S
        action = (batch.actions.shape[1] + text_len + 2) * self.cfg.hidden_size
        return wan + -(-action // self.wan.hidden_size)

    def train_flops(self, batch: Batch) -> int:
        """Model FLOPs of one sample's training step at this batch's padded shapes (the whole
        model's, whichever pipeline slice this is): 3x :func:`forward_flops`, history latent
        frames counted as video tokens."""
        shape = tuple(batch.latents.shape[3:])
        return 3 * forward_flops(self.cfg, shape, batch.actions.shape[1], int(self.cfg.text_len))["total"]

    # ------------------------------------------------------------------ flow inputs
    def video_noise_shape(self, batch: Batch) -> tuple[int, ...]:
        """The latents' shape (noise per latent, history and anchor included)."""
        self._check(batch)
        return batch.latents.shape

    def flow_inputs(self, batch: Batch, noise: FlowNoise) -> WanFlowInputs:
        self._check(batch)
        x0 = batch.latents.float()
        b, v, z, n, hh, ww = x0.shape
        m = int(batch.history)
        action_valid, frame_valid, video_loss_mask = self._masks(batch.lengths, batch.actions.shape[1], n, m)
        xt_v, target_v = interpolate(x0, noise.noise_video, noise.t_video)
        xt_v = torch.cat([x0[:, :, :, : m + 1], xt_v[:, :, :, m + 1 :]], dim=3)  # history and anchor clean
        pt, ph, pw = self.wan.patch_size
        timestep = per_token_timesteps(noise.t_video, (n // pt, hh // ph, ww // pw), clean_frames=m + 1)
        xt_a, target_a = interpolate(batch.actions, noise.noise_action, noise.t_action)
        # Wan's text context (model/wan/text.py): zero-padded to model.text_len, no key mask in
        # the Wan tower; text_valid keeps the real positions for the action tower and time head
        text_states, text_valid = pad_text_context(batch.text_states.float(), batch.text_valid,
                                                   int(self.cfg.text_len), "batch.text_states")
        anchor = x0[:, :, :, m].permute(0, 1, 3, 4, 2).reshape(b, v * hh * ww, z)
        remaining = None if batch.remaining is None else batch.remaining.float() / self.frame_stride
        return WanFlowInputs(
            xt_v, timestep, xt_a, target_v, target_a, noise.t_action, batch.state, text_states,
            text_valid, frame_valid, action_valid, video_loss_mask, anchor, remaining, m,
        )

    def with_context(self, batch: Batch) -> Batch:
        """``batch`` with each row's text context from its source (unchanged without sources):
        the Wan tower, the action tower's ``text_in`` and the time head read the text-encoder
        states of the batch, so a global or Staircase row's states replace them there."""
        if not batch.context_sources:
            return batch
        self.require_context(batch)
        return self.context.apply(batch)

    def text_context_space(self) -> tuple[int, bool]:
        """The text encoder's states (``model.wan.text_dim`` wide), read from the batch."""
        return int(self.wan.text_dim), True

    def geometry(self, inputs: WanFlowInputs) -> WanGeometry:
        return self.video.geometry(inputs.xt_video, inputs.timestep, inputs.text_states)

    def coupling_mask(self, inputs: WanFlowInputs, geo: WanGeometry) -> torch.Tensor:
        """Key padding of the coupling keys ``[V * S]`` per sample (view-major, as coupling_keys);
        under context parallelism ``[cp * V * S_pad / cp]``: each rank's tokens of all views,
        rank after rank, as the exchange gathers them."""
        per_frame = geo.tokens // geo.grid[0]
        tokens = inputs.frame_valid.repeat_interleave(per_frame, dim=1)  # [B, S]
        if self.split is None:
            return key_padding_mask(tokens.repeat(1, geo.views))
        b, cp = tokens.shape[0], self.split.size
        by_rank = self.split.pad_valid(tokens).view(b, cp, 1, -1).expand(b, cp, geo.views, -1)
        return key_padding_mask(by_rank.reshape(b, -1))

    # ------------------------------------------------------------------ the video tower interface
    def layer_inputs(self, inputs: WanFlowInputs) -> WanLayerInputs:
        """Geometry, 3-D RoPE and the Wan tower's key-padding masks of a forward: padded latent
        frames only; the text context has no mask, as Wan's (``model/wan/text.py``)."""
        geo = self.geometry(inputs)
        rope = self.video.rope(geo, inputs.xt_video.device)
        video_mask, text_mask = self.video.masks(geo, inputs.frame_valid, None)
        return WanLayerInputs(geo, rope, video_mask, text_mask)

    def embed_towers(self, inputs: WanFlowInputs, li: WanLayerInputs, context_rows=None):
        if context_rows is not None:
            raise ValueError("the Wan tower reads a row's context from the batch's text states (with_context)")
        return self.embed(inputs, li.geo)

    def unpack_towers(self, hidden: torch.Tensor, inputs: WanFlowInputs, li: WanLayerInputs):
        return self.unpack(hidden, inputs, li.geo)

    def run_coupled_layer(self, index: int, state: tuple[WanStreams, Streams], li: WanLayerInputs):
        ws, s = state
        return self.run_layer(index, ws, s, li.rope, li.geo, li.video_mask, li.text_mask)

    def pack_towers(self, state: tuple[WanStreams, Streams], li: WanLayerInputs) -> torch.Tensor:
        return self.pack(*state, li.geo)

    def tower_predictions(self, state: tuple[WanStreams, Streams], inputs: WanFlowInputs, li: WanLayerInputs):
        ws, s = state
        return self.video.head(ws, li.geo), self.action_prediction(s), s  # [B, V, Z, N, h, w], [B, T, A]

    def video_loss(self, pred_video: torch.Tensor, inputs: WanFlowInputs, denominator: torch.Tensor | None):
        if self.split is not None:  # this rank's tokens [rows, S_pad / cp, pt ph pw C] (the head's layout)
            b, v, c, n, hh, ww = inputs.target_video.shape
            pt, ph, pw = self.wan.patch_size
            target = inputs.target_video.reshape(b, v, c, n // pt, pt, hh // ph, ph, ww // pw, pw)
            target = target.permute(0, 1, 3, 5, 7, 4, 6, 8, 2).reshape(b * v, -1, pt * ph * pw * c)
            mask = inputs.video_loss_mask[:, ::pt].repeat_interleave((hh // ph) * (ww // pw), dim=1)
            mask = mask.repeat_interleave(v, dim=0)  # rows: sample-major
            return masked_mse(pred_video, self.split.shard(target, 1), self.split.shard_valid(mask), denominator)
        by_frame = lambda x: x.permute(0, 3, 1, 2, 4, 5)  # noqa: E731  [B, N, V, Z, h, w]: masks are [B, N]
        return masked_mse(by_frame(pred_video), by_frame(inputs.target_video), inputs.video_loss_mask, denominator)

    def time_head_inputs(self, inputs: WanFlowInputs, s: Streams):
        return inputs.anchor_frame, s.text, inputs.text_valid

    def embed(self, inputs: WanFlowInputs, geo: WanGeometry) -> tuple[WanStreams, Streams]:
        """The first pipeline rank's input side of both towers."""
        ws = self.video.embed(inputs.xt_video, inputs.timestep, inputs.text_states, geo)
        return ws, self.embed_action(inputs, geo)

    def embed_action(self, inputs: WanFlowInputs, geo: WanGeometry) -> Streams:
        """The action tower's input streams (action tokens, projected caption, state token, timestep)."""
        action, action_valid = self.action_tokens(inputs.xt_action, inputs.history).transpose(0, 1), inputs.action_valid
        if self.split is not None:  # this rank's action tokens; the mask of the whole padded sequence
            action, action_valid = self.split.shard(action), self.split.pad_valid(action_valid)
        return Streams(
            video=None, action=action, text=self.text_in(inputs.text_states).transpose(0, 1),
            state=self.state_in(inputs.state)[None], temb_video=None, temb_action=self.time_action(inputs.t_action),
            video_mask=self.coupling_mask(inputs, geo), action_mask=key_padding_mask(action_valid),
            text_mask=key_padding_mask(inputs.text_valid),
        )

    def run_layer(self, index: int, ws: WanStreams, s: Streams, rope, geo, video_mask, text_mask):
        """Coupled layer ``index``: Wan block, then the action block reading its output."""
        ws = self.video.run_block(index, ws, rope, geo, video_mask, text_mask)
        return ws, self.run_action_layer(index, s, ws.video, geo)

    def run_action_layer(self, index: int, s: Streams, video: torch.Tensor, geo: WanGeometry) -> Streams:
        """Action layer ``index`` reading Wan block ``index``'s output ``video``."""
        layer = self.action_layers[str(index)]
        if self.cfg.recompute == "full" and self.training and torch.is_grad_enabled():
            action = checkpoint(layer, s, video, geo.views, use_reentrant=False)
        else:
            action = layer(s, video, geo.views)
        return replace(s, action=action)

    # -- the anchor mapping's two passes (model/anchor_noise.py); the whole model only ------------
    def video_side_parameters(self) -> list[nn.Parameter]:
        """What the video pass reads: the Wan tower (the text states come precomputed)."""
        return list(self.video.parameters())

    def anchor_video(self, inputs: WanFlowInputs) -> tuple[WanLayerInputs, list[torch.Tensor]]:
        """The Wan tower once, every block's output recorded (the same blocks and order as
        :meth:`forward_slice`); no output head (the anchor mapping has no video loss)."""
        li = self.layer_inputs(inputs)
        ws = self.video.embed(inputs.xt_video, inputs.timestep, inputs.text_states, li.geo)
        videos = []
        for i in self.pipeline_slice.layers:
            ws = self.video.run_block(i, ws, li.rope, li.geo, li.video_mask, li.text_mask)
            videos.append(ws.video)
        return li, videos

    def anchor_action(self, inputs: WanFlowInputs, features: tuple[WanLayerInputs, list[torch.Tensor]]):
        """One action pass reading the recorded Wan block outputs: (prediction [B, T, A], streams)."""
        li, videos = features
        s = self.embed_action(inputs, li.geo)
        for i, video in zip(self.pipeline_slice.layers, videos):
            s = self.run_action_layer(i, s, video, li.geo)
        return self.action_prediction(s), s

    def denoise(self, inputs: WanFlowInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocity predictions ``([B, V, Z, M + N, h, w], [B, T, A])`` (the whole model only).

        ``inputs`` as :meth:`flow_inputs` builds them; at inference the caller keeps latent
        frames 0..M clean, their timesteps 0 (``per_token_timesteps(..., clean_frames=M + 1)``)
        and sets ``history`` = M (the action tower's frame offset)."""
        return self.predict(inputs)

    # ------------------------------------------------------------------ pipeline boundary
    def pack(self, ws: WanStreams, s: Streams, geo: WanGeometry) -> torch.Tensor:
        """Both towers' streams as one ``[n, B, d_wan]`` tensor (see the module docstring)."""
        d = self.wan.hidden_size
        wan = ws.pack()  # [Sw, B * V, d]
        sw = wan.shape[0]
        wan = wan.view(sw, geo.batch, geo.views, d).permute(2, 0, 1, 3).reshape(geo.views * sw, geo.batch, d)
        action = torch.cat([s.action, s.text, s.state, s.temb_action[None]]).to(wan.dtype)  # [Na, B, h]
        flat = action.transpose(0, 1).reshape(geo.batch, -1)
        pad = -flat.shape[1] % d
        flat = nn.functional.pad(flat, (0, pad)).view(geo.batch, -1, d).transpose(0, 1)
        return torch.cat([wan, flat])

    def unpack(self, packed: torch.Tensor, inputs: WanFlowInputs, geo: WanGeometry) -> tuple[WanStreams, Streams]:
        """Inverse of :meth:`pack`; lengths and masks come from the batch."""
        d, h, v, b = self.wan.hidden_size, self.cfg.hidden_size, geo.views, geo.batch
        sw = geo.tokens + geo.text_len + 7 * geo.time_len
        t_steps, text_len = inputs.xt_action.shape[1], inputs.text_states.shape[1]
        na = t_steps + text_len + 2
        expected = v * sw + -(-na * h // d)
        if packed.shape[0] != expected:
            raise ValueError(
                f"a packed pipeline input of {packed.shape[0]} positions does not match the batch: {v} views x "
                f"(video {geo.tokens} + text {geo.text_len} + 7 x {geo.time_len}) + action streams {na} x {h} / {d} "
                f"= {expected}"
            )
        wan, rest = packed.split([v * sw, packed.shape[0] - v * sw])
        wan = wan.view(v, sw, b, d).permute(1, 2, 0, 3).reshape(sw, b * v, d)
        ws = WanStreams.unpack(wan, geo.tokens, geo.text_len, geo.time_len)
        flat = rest.transpose(0, 1).reshape(b, -1)[:, : na * h]
        action, text, state, temb = flat.reshape(b, na, h).transpose(0, 1).split([t_steps, text_len, 1, 1])
        s = Streams(
            video=None, action=action, text=text, state=state, temb_video=None, temb_action=temb[0],
            video_mask=self.coupling_mask(inputs, geo), action_mask=key_padding_mask(inputs.action_valid),
            text_mask=key_padding_mask(inputs.text_valid),
        )
        return ws, s


def forward_flops(cfg: ModelConfig, latent_shape: tuple[int, int, int], steps: int, text_len: int) -> dict[str, int]:
    """Forward matmul FLOPs of one sample of the Wan-path model (conventions of ``model/flops.py``).

    Args:
        latent_shape: ``(N, h, w)`` latent frames (history included), height and width of one view.
        steps: control steps T (action tokens); text_len: text tokens L.

    The video tower is :func:`wan_forward_flops` (per-token timesteps); an action layer is the
    small model's action block with the coupling keys ``V * S`` wide, plus the coupling
    projection ``2 V S d_wan h``; the input side adds the caption projection ``2 L text_dim h``.
    """
    wcfg = wan_config(cfg)
    video = wan_forward_flops(wcfg, latent_shape, text_len, per_token_time=True)
    h, f, a = cfg.hidden_size, cfg.ffn_hidden_size, int(cfg.action_dim)
    n, hh, ww = latent_shape
    pt, ph, pw = wcfg.patch_size
    keys = wcfg.num_views * (n // pt) * (hh // ph) * (ww // pw)
    layer = (12 * h * h + self_attention_flops(steps, h) + cross_attention_flops(steps, 1, h)
             + cross_attention_flops(steps, keys, h) + cross_attention_flops(steps, text_len, h) + ffn_flops(steps, h, f)
             + 2 * keys * wcfg.hidden_size * h)
    parts = {
        "video_tower": video["total"],
        "action_tower": cfg.num_layers * layer,
        # action, state and caption projections, the action timestep MLP (two h x h)
        "input_side": 2 * steps * a * h + 2 * int(cfg.state_dim) * h + 4 * h * h + 2 * text_len * wcfg.text_dim * h,
        "output_side": 2 * steps * h * a + 4 * h * h,  # the action head's modulation (h -> 2h) and linear
    }
    parts["total"] = sum(parts.values())
    return parts
