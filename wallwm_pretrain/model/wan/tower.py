"""The Wan video tower, or the slice of it one pipeline rank holds.

Forward (shapes for B samples, V views, latents ``[B, V, C, F, H, W]``, patch ``(pt, ph, pw)``):

1. first slice: ``patch_embedding`` (Conv3d, stride = patch) turns each view's latents into
   ``S = F/pt * H/ph * W/pw`` tokens; views become separate rows (``rows = B * V``, sample
   major); the condition embedder turns the timestep into ``temb`` and six modulation vectors
   per block, and the text encoder's states into the hidden width;
2. the slice's blocks (``blocks.<global index>``), sequence first ``[S, rows, hidden]``;
3. last slice: the output head ``proj_out((LN(h) * (1 + scale) + shift))`` with ``(shift,
   scale) = head_modulation + temb``, then unpatchify back to ``[B, V, C_out, F, H, W]``.

Between pipeline ranks the :class:`WanStreams` travel packed into one ``[*, rows, hidden]``
tensor; every pipeline rank derives the rest (3-D RoPE, masks, shapes) from the inputs, which each
of them is given. Weights of each part (input side, each block, head) are drawn from their own
RNG state (see ``model/pipeline_slice.py``), so a slice holds exactly the weights that part has
in the whole tower.

Context parallelism (``pg_collection.cp`` of size > 1, ``sequence_split.py``): after the
patch embedding each rank keeps its piece of every view's ``S`` tokens (and of the per-token
timestep embeddings), the video key-padding mask is that of the whole padded sequence, and the
head returns this rank's tokens unpatchified (``[rows, S_pad / cp, pt ph pw C_out]``): the
loss compares them with the same piece of the targets.

Timesteps are ``[B]`` (one flow time per sample) or ``[B, S]`` (one per token, as Wan2.2 TI2V
uses to keep its first latent frame clean); they are on Wan's scale (0..1000).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from megatron.core.process_groups_config import ProcessGroupCollection
from torch import nn
from torch.utils.checkpoint import checkpoint

from wallwm_pretrain.model.pipeline_slice import PipelineSlice, draw_base_seed, part_rng
from wallwm_pretrain.model.sequence_split import SequenceSplit
from wallwm_pretrain.model.wan.block import WanBlock, layer_norm
from wallwm_pretrain.model.wan.conditioning import WanConditioning
from wallwm_pretrain.model.wan.config import WanConfig
from wallwm_pretrain.model.wan.layers import wan_transformer_config
from wallwm_pretrain.model.wan.rope import rope_3d


@dataclass
class WanStreams:
    """What passes from one block to the next, rows = samples x views."""

    video: torch.Tensor  # [S, rows, d]
    text: torch.Tensor  # [L, rows, d]
    temb: torch.Tensor  # [t, rows, d], t = 1 or S
    modulation: torch.Tensor  # [t, rows, 6, d]

    def pack(self) -> torch.Tensor:
        """``[S + L + 7t, rows, d]``: video, text, temb, the six modulation vectors."""
        t, rows, six, d = self.modulation.shape
        mod = self.modulation.transpose(1, 2).reshape(t * six, rows, d)
        return torch.cat([self.video, self.text, self.temb, mod.to(self.video.dtype)])

    @classmethod
    def unpack(cls, packed: torch.Tensor, video_len: int, text_len: int, time_len: int) -> "WanStreams":
        """Inverse of :meth:`pack` (the lengths come from the inputs, not the wire)."""
        expected = video_len + text_len + 7 * time_len
        if packed.shape[0] != expected:
            raise ValueError(
                f"a packed pipeline input of {packed.shape[0]} positions does not match the inputs: video {video_len} "
                f"+ text {text_len} + 7 x timesteps {time_len} = {expected}"
            )
        video, text, temb, mod = packed.split([video_len, text_len, time_len, 6 * time_len])
        rows, d = packed.shape[1:]
        return cls(video, text, temb, mod.view(time_len, 6, rows, d).transpose(1, 2))


@dataclass(frozen=True)
class WanGeometry:
    """Shapes of one forward, derived from the inputs (no parameters)."""

    batch: int
    views: int
    channels: int
    grid: tuple[int, int, int]  # latent patches per (frame, height, width)
    text_len: int
    per_token_time: bool

    @property
    def tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def rows(self) -> int:
        return self.batch * self.views

    @property
    def time_len(self) -> int:
        return self.tokens if self.per_token_time else 1


def coupling_keys(video: torch.Tensor, views: int) -> torch.Tensor:
    """A block's output ``[S, B * V, d]`` as one key sequence per sample, ``[V * S, B, d]``
    (view-major): what an action block's cross-attention to the video tower reads, so that
    actions see every view of their sample."""
    s, rows, d = video.shape
    return video.view(s, rows // views, views, d).permute(2, 0, 1, 3).reshape(views * s, rows // views, d)


def key_padding(valid: torch.Tensor) -> torch.Tensor:
    """bool ``[rows, n]`` valid -> megatron key-padding mask ``[rows, 1, 1, n]`` (True = padding)."""
    return ~valid[:, None, None, :]


class WanTower(nn.Module):
    """The Wan-architecture video tower (or one pipeline slice of it).

    Args:
        cfg: the tower's shape (``WanConfig.from_diffusers`` reads a diffusers config.json).
        pipeline_slice: the blocks (and ends) to hold; None = the whole tower.
        pg_collection: megatron's process groups of this rank: the blocks' linear layers are then
            megatron-core column/row-parallel layers split over its ``tp`` group (heads, FFN
            width). None: local layers, same parameter names and shapes, no process group.
        seed: base seed of the initial weights (None: one draw from torch's global RNG).
        recompute: ``none`` or ``full`` (each block keeps only its input and runs again in
            backward, as ``model.recompute=full``). There is no ``selective``: the attention
            core is already fused and keeps no score matrix to drop.
    """

    def __init__(self, cfg: WanConfig, pipeline_slice: PipelineSlice | None = None, *,
                 pg_collection: ProcessGroupCollection | None = None, seed: int | None = None,
                 recompute: str = "none") -> None:
        super().__init__()
        if recompute not in ("none", "full"):
            raise ValueError(f"the Wan tower recomputes 'none' or 'full' blocks, got {recompute!r}")
        self.recompute = recompute
        self.cfg = cfg
        self.pipeline_slice = part = pipeline_slice or PipelineSlice.whole(cfg.num_layers)
        if part.first_layer < 0 or part.num_layers < 1 or part.layers.stop > cfg.num_layers:
            raise ValueError(
                f"pipeline slice blocks {part.first_layer}..{part.layers.stop - 1} are not inside the tower's "
                f"{cfg.num_layers} blocks (0..{cfg.num_layers - 1})"
            )
        tp_group = None if pg_collection is None else pg_collection.tp
        self.split = SequenceSplit.of(pg_collection)
        config = wan_transformer_config(cfg)
        d = cfg.hidden_size
        base = draw_base_seed() if seed is None else seed
        if part.embed:
            with part_rng(base, "wan.embed"):
                self.patch_embedding = nn.Conv3d(cfg.in_channels, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
                self.condition_embedder = WanConditioning(cfg)
        self.blocks = nn.ModuleDict()
        for i in part.layers:
            with part_rng(base, f"wan.block{i}"):
                self.blocks[str(i)] = WanBlock(config, cfg, tp_group, self.split)
        if part.head:
            with part_rng(base, "wan.head"):
                self.head_modulation = nn.Parameter(torch.randn(1, 2, d) / d**0.5)
                self.head_modulation.no_weight_decay = True  # shift/scale offsets of the head
                self.proj_out = nn.Linear(d, cfg.out_dim * math.prod(cfg.patch_size))
                for p in self.proj_out.parameters():
                    p.use_adamw = True  # the output head, as the other towers' heads

    # ----------------------------------------------------------------------------- inputs
    def geometry(self, latents: torch.Tensor, timestep: torch.Tensor, text_states: torch.Tensor) -> WanGeometry:
        """Shapes of a forward; checks the inputs against the config (errors name the input)."""
        if latents.dim() == 5:
            latents = latents[:, None]
        if latents.dim() != 6:
            raise ValueError(f"latents must be [B, V, C, F, H, W] or [B, C, F, H, W], got {tuple(latents.shape)}")
        b, v, c, f, h, w = latents.shape
        pt, ph, pw = self.cfg.patch_size
        if c != self.cfg.in_channels:
            raise ValueError(f"latents have {c} channels, the tower takes in_channels={self.cfg.in_channels}")
        if v != self.cfg.num_views and not (v == 1 and not self.cfg.cross_view):
            raise ValueError(f"latents have {v} views, the tower was built for num_views={self.cfg.num_views}")
        if f % pt or h % ph or w % pw:
            raise ValueError(f"latent frames/height/width {(f, h, w)} are not multiples of patch_size {self.cfg.patch_size}")
        grid = (f // pt, h // ph, w // pw)
        if max(grid) > self.cfg.rope_max_seq_len:
            raise ValueError(f"latent patch grid {grid} exceeds rope_max_seq_len={self.cfg.rope_max_seq_len}")
        if timestep.dim() == 2 and timestep.shape != (b, math.prod(grid)):
            raise ValueError(f"per-token timesteps must be [B, S] = {(b, math.prod(grid))}, got {tuple(timestep.shape)}")
        if timestep.dim() not in (1, 2) or timestep.shape[0] != b:
            raise ValueError(f"timestep must be [B] or [B, S] with B={b}, got {tuple(timestep.shape)}")
        if text_states.dim() != 3 or text_states.shape[0] != b or text_states.shape[2] != self.cfg.text_dim:
            raise ValueError(f"text states must be [B={b}, L, text_dim={self.cfg.text_dim}], got {tuple(text_states.shape)}")
        return WanGeometry(b, v, c, grid, text_states.shape[1], timestep.dim() == 2)

    def packed_shape(self, geo: WanGeometry) -> tuple[int, int, int]:
        """Shape of the tensor one pipeline rank sends the next."""
        return geo.tokens + geo.text_len + 7 * geo.time_len, geo.rows, self.cfg.hidden_size

    def rope(self, geo: WanGeometry, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` ``[S, head_dim / 2]`` of the latent patch grid."""
        return rope_3d(self.cfg.attention_head_dim, geo.grid, device=device)

    def masks(self, geo: WanGeometry, frame_valid: torch.Tensor | None, text_valid: torch.Tensor | None):
        """Key-padding masks ``[rows, 1, 1, n]`` of the video tokens and the text (or None)."""
        per_frame = geo.tokens // geo.grid[0]
        video = text = None
        if frame_valid is not None:  # a patch frame is real when its first latent frame is
            tokens = frame_valid[:, :: self.cfg.patch_size[0]].repeat_interleave(per_frame, dim=1)
            tokens = tokens.repeat_interleave(geo.views, dim=0)
            video = key_padding(tokens if self.split is None else self.split.pad_valid(tokens))
        if text_valid is not None:
            text = key_padding(text_valid.repeat_interleave(geo.views, dim=0))
        return video, text

    # ----------------------------------------------------------------------------- parts
    def embed(self, latents: torch.Tensor, timestep: torch.Tensor, text_states: torch.Tensor,
              geo: WanGeometry) -> WanStreams:
        """The first slice's input side: patch embedding and the condition embedder."""
        x = latents.reshape(geo.rows, *latents.shape[-4:])
        video = self.patch_embedding(x).flatten(2).permute(2, 0, 1)  # [S, rows, d]
        temb, modulation, text = self.condition_embedder(timestep.flatten(), text_states)
        if geo.per_token_time:  # [B * S, ...] -> [S, B, ...]
            temb = temb.unflatten(0, (geo.batch, geo.tokens)).transpose(0, 1)
            modulation = modulation.unflatten(0, (geo.batch, geo.tokens)).transpose(0, 1)
        else:
            temb, modulation = temb[None], modulation[None]
        v = geo.views
        if self.split is not None:  # this context-parallel rank's tokens (and their timesteps)
            video = self.split.shard(video)
            if geo.per_token_time:
                temb, modulation = self.split.shard(temb), self.split.shard(modulation)
        return WanStreams(
            video=video,
            text=text.repeat_interleave(v, dim=0).transpose(0, 1),
            temb=temb.repeat_interleave(v, dim=1),
            modulation=modulation.repeat_interleave(v, dim=1),
        )

    def run_block(self, index: int, s: WanStreams, rope, geo: WanGeometry, video_mask=None, text_mask=None) -> WanStreams:
        """Block ``index`` (global) on ``s``; the coupling reads ``result.video``."""
        block = self.blocks[str(index)]
        args = (s.video, s.text, s.modulation, rope, geo.grid[0], video_mask, text_mask)
        if self.recompute == "full" and self.training and torch.is_grad_enabled():
            video = checkpoint(block, *args, use_reentrant=False)
        else:
            video = block(*args)
        return WanStreams(video, s.text, s.temb, s.modulation)

    def head(self, s: WanStreams, geo: WanGeometry) -> torch.Tensor:
        """The last slice's output head and unpatchify: ``[B, V, C_out, F, H, W]``."""
        shift, scale = (self.head_modulation[None] + s.temb[:, :, None, :]).unbind(dim=2)
        h = (layer_norm(s.video, self.cfg.eps) * (1 + scale) + shift).to(s.video.dtype)
        out = self.proj_out(h).transpose(0, 1)  # [rows, S, out * pt * ph * pw]
        if self.split is not None:  # this rank's tokens: the loss takes the targets' same piece
            return out
        (f, hh, ww), (pt, ph, pw) = geo.grid, self.cfg.patch_size
        out = out.reshape(geo.rows, f, hh, ww, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        out = out.reshape(geo.batch, geo.views, -1, f * pt, hh * ph, ww * pw)
        return out

    # ----------------------------------------------------------------------------- forward
    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, text_states: torch.Tensor, *,
                frame_valid: torch.Tensor | None = None, text_valid: torch.Tensor | None = None,
                hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity prediction (last slice) or the packed streams for the next pipeline rank.

        Args:
            latents: ``[B, V, C, F, H, W]`` (or ``[B, C, F, H, W]``: one view) noisy latents.
            timestep: ``[B]`` or ``[B, S]`` on Wan's 0..1000 scale.
            text_states: ``[B, L, text_dim]`` the text encoder's states.
            frame_valid: optional bool ``[B, F]`` real latent frames (others are padding keys).
            text_valid: optional bool ``[B, L]`` real text tokens.
            hidden: the previous pipeline rank's packed streams (every slice but the first).

        Returns:
            ``[B, V, C_out, F, H, W]`` (``[B, C_out, F, H, W]`` for 5-D latents) on the last
            slice, else the packed :class:`WanStreams`.
        """
        single = latents.dim() == 5
        geo = self.geometry(latents, timestep, text_states)
        if single:
            latents = latents[:, None]
        part = self.pipeline_slice
        if part.embed:
            s = self.embed(latents, timestep, text_states, geo)
        else:
            if hidden is None:
                raise ValueError(f"pipeline slice from block {part.first_layer} needs the previous rank's output")
            s = WanStreams.unpack(hidden, geo.tokens, geo.text_len, geo.time_len)
        rope = self.rope(geo, latents.device)
        video_mask, text_mask = self.masks(geo, frame_valid, text_valid)
        for i in part.layers:
            s = self.run_block(i, s, rope, geo, video_mask, text_mask)
        if not part.head:
            return s.pack()
        out = self.head(s, geo)
        return out[:, 0] if single else out

    def parameter_counts(self) -> dict[str, int]:
        """Parameters held here: those a diffusers checkpoint provides (``pretrained``), the
        grafted cross-view attention and cameras (``cross_view``), and the ``total``."""
        new = sum(p.numel() for n, p in self.named_parameters() if ".cross_view." in n)
        total = sum(p.numel() for p in self.parameters())
        return {"pretrained": total - new, "cross_view": new, "total": total}

    def new_parameter_names(self) -> list[str]:
        """Parameters a diffusers checkpoint does not have: cross-view attention and cameras."""
        return [n for n, _ in self.named_parameters() if ".cross_view." in n]
