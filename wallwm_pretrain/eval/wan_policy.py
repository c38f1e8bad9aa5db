"""A Wan-tower checkpoint (``model.video_tower=wan``) as a policy, beside the small towers'
:class:`~wallwm_pretrain.eval.policy.CheckpointPolicy` and with the same planning methods, so the
planners, evaluation, ``infer`` and the server drive either.

Each plan: the observation's views through the frozen VAE (one clip of one frame per view: the
anchor latent, as latent frame 0 of an event clip was encoded in the shards; in unified mode the
history frames too, each on its own) -> the text context (UMT5 states of the caption, or a
context source's states) -> both towers denoise (``eval/wan_sampler.py``) -> actions in the
robot's units. The frozen VAE and UMT5 are those the shards were made with (``index.json``:
``latents.source``, ``text_states.source`` / ``tokenizer`` / ``max_length``), loaded once per
process (``model/wan/frozen.py``), which also keeps the states of every caption it has encoded.
On request (:meth:`WanPolicy.predict_video`) the predicted latent frames are decoded to frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wallwm_pretrain.config import Config
from wallwm_pretrain.eval.policy import ChunkContext, Plan, PolicyBase, PolicyError
from wallwm_pretrain.eval.wan_sampler import WanSample, sample_wan
from wallwm_pretrain.model.wan.frozen import FrozenWan, frozen_wan


def frozen_of(index: dict, device: str = "cpu") -> FrozenWan:
    """The frozen VAE and text encoder the shards of ``index`` were made with."""
    lat, text = index.get("latents") or {}, index.get("text_states") or {}
    folders = {"latents.source": lat.get("source"), "text_states.source": text.get("source")}
    for key, folder in folders.items():
        if not folder or not Path(folder).is_dir():
            raise PolicyError(f"the Wan-tower policy loads the frozen models the shards were made with; the "
                              f"statistics' index.json {key} is {folder!r}, not a folder here (pass --stats with "
                              "the training shards' folder on this machine)")
    return frozen_wan(lat["source"], text["source"], text.get("tokenizer"), device, int(text.get("max_length", 512)))


class WanPolicy(PolicyBase):
    """Plans an event (or chunk) from the current observation with a Wan-tower model.

    Args:
        model: the whole :class:`~wallwm_pretrain.model.wan_wallwm.WanWallWM`, eval mode; cfg: its run config.
        index: the training shards' ``index.json`` (statistics, views, the frozen models' folders).
        frozen: the frozen VAE and text encoder (default: :func:`frozen_of` ``index``).
        denoise_steps: scheduler steps per plan; mode: as :class:`CheckpointPolicy`'s.
        scheduler: ``euler`` or ``unipc`` (the video tower's, ``eval/wan_video.py``).
    """

    MODEL = ("towers", "wan")
    reads_text_states = True  # predicted events plan the conditioner's aligned states (plan_states)

    def __init__(self, model, cfg: Config, index: dict, frozen: FrozenWan | None = None, denoise_steps: int = 10,
                 mode: str | None = None, scheduler: str = "euler") -> None:
        kind, tower = cfg.model.kind, cfg.model.video_tower
        if (kind, tower) != self.MODEL:
            raise PolicyError(f"the Wan-tower policy runs model.video_tower=wan towers; this checkpoint is {kind} "
                              f"with video_tower={tower}")
        self._setup(model, cfg, index, denoise_steps, mode)
        self.scheduler = scheduler
        self.frozen = frozen if frozen is not None else frozen_of(index, str(self.device))
        if self.frozen.temporal != cfg.model.frame_stride:
            raise PolicyError(f"the VAE compresses {self.frozen.temporal} frames per latent frame, the model's "
                              f"model.frame_stride is {cfg.model.frame_stride}")

    @property
    def image_size(self) -> int:
        return int(self.index.get("image_size") or self.cfg.model.image_size)

    def context_sources(self) -> list[str]:
        """The text contexts a plan can read: ``atomic`` (UMT5 states of a caption) and the model's
        built sources (``model.context.sources``)."""
        return ["atomic", *self.cfg.model.context.sources]

    # ------------------------------------------------------------------ inputs
    def latents(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 ``[B, M + 1, V, H, W, 3]`` -> ``[B, V, Z, M + 1, h, w]``, each frame encoded on its own."""
        b, f, v = frames.shape[:3]
        clips = torch.from_numpy(np.ascontiguousarray(frames)).reshape(b * f * v, 1, *frames.shape[3:])
        z = self.frozen.encode_frames(clips)  # [B F V, Z, 1, h, w]
        return z[:, :, 0].reshape(b, f, v, *z.shape[1:2], *z.shape[3:]).permute(0, 2, 3, 1, 4, 5).to(self.device)

    def noise(self, generators: list[torch.Generator], clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each observation's starting noise from its own generator (video, then actions)."""
        _, v, z, _, h, w = clean.shape
        n = self.horizon // self.cfg.model.frame_stride
        pairs = [(torch.randn((1, v, z, n - 1, h, w), device=self.device, generator=g),
                  torch.randn((1, self.horizon, self.action_dim), device=self.device, generator=g)) for g in generators]
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])

    def states(self, states: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.norm.state(s.astype(np.float32)) for s in states])).to(self.device)

    def caption_context(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        text, valid = self.frozen.text_batch(captions)
        return text.to(self.device), valid.to(self.device)

    # ------------------------------------------------------------------ plans
    def sample(self, frames: np.ndarray, states: list[np.ndarray], text, generators) -> WanSample:
        clean = self.latents(frames)
        return sample_wan(self.model, clean, self.states(states), text[0], text[1], self.horizon, self.denoise_steps,
                          self.noise(generators, clean), scheduler=self.scheduler)

    def plans(self, out: WanSample) -> list[Plan]:
        raw = self.norm.raw_actions(out.actions.float().cpu().numpy()).astype(np.float32)
        return [Plan(raw[i], float(out.remaining[i])) for i in range(len(raw))]

    def plan(self, frame: np.ndarray, state: np.ndarray, caption: str, generator: torch.Generator) -> Plan:
        """Denoise ``self.horizon`` steps from this observation, conditioned on ``caption``."""
        return self.plan_batch([frame], [state], [caption], [generator])[0]

    def plan_batch(self, frames: list[np.ndarray], states: list[np.ndarray], captions: list[str],
                   generators: list[torch.Generator]) -> list[Plan]:
        """:meth:`plan` for several observations in one pass (each with its own noise stream)."""
        for frame, state in zip(frames, states):
            self.check_observation(frame, state)
        return self.plans(self.sample(np.stack(frames)[:, None], states, self.caption_context(captions), generators))

    def plan_states(self, frame: np.ndarray, state: np.ndarray, text: torch.Tensor, generator: torch.Generator) -> Plan:
        """A plan conditioned on text states ``[L, text_dim]`` in the text encoder's space (the
        conditioner's aligned states of a predicted event, every position trained)."""
        self.check_observation(frame, state)
        if text.dim() != 2 or text.shape[1] != self.model.wan.text_dim:
            raise PolicyError(f"text states of shape {tuple(text.shape)}: the Wan tower reads [L, "
                              f"{self.model.wan.text_dim}] (a conditioner aligned to another text encoder?)")
        # positions past model.text_len were trained towards Wan's zero padding: cut, as the global source does
        text = text[: self.cfg.model.text_len].to(self.device).float()[None]
        return self.plans(self.sample(frame[None, None], [state], (text, None), [generator]))[0]

    def history_steps(self) -> list[int]:
        k = self.cfg.model.frame_stride
        return [(self.history - j) * k for j in range(self.history)]

    def context_text(self, frame: np.ndarray, context: ChunkContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        if context.source == "atomic":
            return self.caption_context([context.caption])
        if context.source not in self.context_sources():
            raise PolicyError(f"context source {context.source!r}: this checkpoint builds "
                              f"{self.context_sources()[1:] or 'none'} (model.context.sources) besides atomic")
        obs = torch.from_numpy(np.array(frame, dtype=np.uint8))[None].to(self.device)
        with torch.no_grad():
            states = self.model.context.states(context.source, obs, [context.task], [list(context.done or [])])
        return states.float(), None

    def plan_chunk(self, history: list[np.ndarray], frame: np.ndarray, state: np.ndarray, context: ChunkContext,
                   generator: torch.Generator) -> Plan:
        """Unified mode: one chunk after ``history`` frames (oldest first), with ``context``'s text."""
        if not self.plan_mode.reads_context:
            raise PolicyError(f"plan_chunk plans a chunk with history and a context source (unified mode), this "
                              f"policy plans in {self.mode} mode")
        if len(history) != self.history:
            raise PolicyError(f"{len(history)} history frames given, the model reads {self.history}")
        for f in [*history, frame]:
            self.check_observation(f, state)
        frames = np.stack([*history, frame])[None]  # [1, M + 1, V, H, W, 3]
        return self.plans(self.sample(frames, [state], self.context_text(frame, context), [generator]))[0]

    @torch.no_grad()
    def predict_video(self, frame: np.ndarray, state: np.ndarray, caption: str, generator: torch.Generator):
        """(plan, predicted frames uint8 ``[V, T, H, W, 3]``): the event's video decoded by the VAE."""
        self.check_observation(frame, state)
        out = self.sample(frame[None, None], [state], self.caption_context([caption]), [generator])
        b, v = out.latents.shape[:2]
        decoded = self.frozen.to_uint8(self.frozen.decode(out.latents.flatten(0, 1)))
        return self.plans(out)[0], decoded.reshape(b, v, *decoded.shape[1:])[0].cpu().numpy()


def load_policy(ckpt: str | Path, stats: str | Path | None = None, device: str = "cpu", denoise_steps: int = 10,
                mode: str | None = None):
    """The policy of a checkpoint: :class:`WanPolicy` for the Wan towers, else the small towers'
    :class:`~wallwm_pretrain.eval.policy.CheckpointPolicy` (which names what it refuses)."""
    from wallwm_pretrain.eval.policy import CheckpointPolicy, read_stats
    from wallwm_pretrain.export import load_model

    model, cfg = load_model(ckpt, device)
    index = read_stats(stats or cfg.data.shards)
    if (cfg.model.kind, cfg.model.video_tower) == WanPolicy.MODEL:
        return WanPolicy(model, cfg, index, denoise_steps=denoise_steps, mode=mode)
    return CheckpointPolicy(model, cfg, index, denoise_steps, mode)
