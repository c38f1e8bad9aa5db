"""A trained checkpoint as a policy: observation + caption in, actions in robot units out.

The policy owns everything that must match training exactly: the normalisation statistics of
the shards the model was trained on (``index.json``), the caption encoding, the model's frame
size, and the horizon it plans over (the data mode's, ``data/modes``: ``data.max_frames`` in
event mode, ``data.chunk_horizon`` in chunk and unified mode, rounded up to whole latent
frames). Which caption each plan gets and how much of it runs is a planner's decision
(``eval/planners``).

Unified mode (:meth:`CheckpointPolicy.plan_chunk`) also takes the frames of the
``data.history_latents`` latent frames before the observation and the chunk's text context
(:class:`ChunkContext`: an atomic instruction, the task through the conditioner, or Staircase
latents); each call chooses its own source, nothing of one call is kept for the next.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wallwm_pretrain.config import Config
from wallwm_pretrain.captions import CAPTION_PAD, encode_caption
from wallwm_pretrain.data.cookers import Normalizer
from wallwm_pretrain.data.modes import MODES, mode_of
from wallwm_pretrain.eval.sampler import sample_event
from wallwm_pretrain.export import load_model
from wallwm_pretrain.model.embeddings import patchify


class PolicyError(ValueError):
    """The checkpoint cannot act here (missing statistics, mismatched observation)."""


@dataclass
class ChunkContext:
    """A unified-mode chunk's text context: ``source`` ``atomic`` (``caption``, an atomic
    instruction), ``global`` or ``staircase`` (from ``task`` and the captions of the events
    ``done``, through the frozen VLM)."""

    source: str = "atomic"
    caption: str = ""
    task: str = ""
    done: list[str] | None = None


@dataclass
class Plan:
    actions: np.ndarray  # float32 [T, A] in the robot's units
    remaining: float  # predicted control steps to the end of the current event


def read_stats(path: str | Path) -> dict:
    """``index.json`` of a shard folder (or the file itself): statistics, views, sizes."""
    path = Path(path)
    index = path / "index.json" if path.is_dir() else path
    if not index.is_file():
        raise PolicyError(
            f"{index} not found: the policy needs the index.json of the shards the model was trained on "
            "(action/state statistics, camera views); pass --stats SHARD_FOLDER"
        )
    data = json.loads(index.read_text())
    if "stats" not in data:
        raise PolicyError(f"{index}: has no 'stats' (action/state normalisation); rebuild the shards")
    return data


class PolicyBase:
    """What every checkpoint policy shares, whichever video tower it drives: the plan mode (the
    checkpoint's, or another that shares the towers), the horizon in whole latent frames, the
    statistics' check, the observation's shape and the episode's noise stream. A subclass checks
    its model first, then calls :meth:`_setup`, and adds how observations and captions go in."""

    def _setup(self, model, cfg: Config, index: dict, denoise_steps: int, mode: str | None) -> None:
        self.model, self.cfg, self.index = model, cfg, index
        self.norm = Normalizer.from_index(index)
        self.denoise_steps = denoise_steps
        self.device = next(model.parameters()).device
        trained = mode_of(cfg.data.mode)
        self.plan_mode = mode_of(mode) if mode else trained
        if self.plan_mode is not trained and not (self.plan_mode.shares_towers and trained.shares_towers):
            shared = " and ".join(m.name for m in MODES.values() if m.shares_towers)
            raise PolicyError(f"a {trained.name}-mode checkpoint cannot plan in {self.plan_mode.name} mode ({shared} "
                              "mode share the towers; the other modes plan as trained)")
        k = cfg.model.frame_stride
        self.horizon = -(-self.plan_mode.horizon(cfg.data) // k) * k
        self.history = self.plan_mode.history(cfg.data)
        for name, want in (("state_dim", cfg.model.state_dim), ("action_dim", cfg.model.action_dim)):
            got = index.get(name)
            if got is not None and got != want:
                raise PolicyError(f"the statistics' {name} is {got} but the model's is {want}: wrong --stats?")

    @property
    def mode(self) -> str:
        """The mode this policy plans in (its name, ``data.mode``; :attr:`plan_mode` is the mode)."""
        return self.plan_mode.name

    @property
    def views(self) -> list[str]:
        return list(self.index.get("views") or [])

    @property
    def image_size(self) -> int:
        return self.cfg.model.image_size

    @property
    def state_dim(self) -> int:
        return self.cfg.model.state_dim

    @property
    def action_dim(self) -> int:
        return self.cfg.model.action_dim

    @property
    def num_views(self) -> int:
        return self.cfg.model.num_views

    @property
    def fps(self) -> float | None:
        return self.index.get("fps")

    def new_episode(self, seed: int) -> torch.Generator:
        """The sampling-noise stream of one episode: every plan of the episode draws from it."""
        return torch.Generator(device=self.device).manual_seed(seed)

    def check_observation(self, frame: np.ndarray, state: np.ndarray) -> None:
        want = (self.num_views, self.image_size, self.image_size, 3)
        if frame.shape != want:
            raise PolicyError(f"observation frame has shape {frame.shape}, the model expects {want}")
        if state.shape != (self.state_dim,):
            raise PolicyError(f"state has shape {state.shape}, the model expects ({self.state_dim},)")


class CheckpointPolicy(PolicyBase):
    """Plans an event (or chunk) from the current observation with a trained model.

    Args:
        model: the whole model, eval mode; cfg: its run config.
        index: the training shards' ``index.json`` (statistics, views).
        denoise_steps: Euler steps per plan.
        mode: the mode to plan in (default the checkpoint's ``data.mode``). The towers are one
            backbone for both inference modes: an event-mode checkpoint may plan unified chunks
            and a unified-mode one whole events (with the horizons and history of its config);
            chunk mode (the baseline) stays as trained.
    """

    # the model this policy drives: the small towers (pixels in, byte captions). The Wan towers'
    # policy (the VAE encodes each observation, UMT5 each caption) is eval/wan_policy.py, with the
    # same planning methods; load_policy there picks between them by the checkpoint's config.
    MODEL = ("towers", "small")

    def __init__(self, model, cfg: Config, index: dict, denoise_steps: int = 10, mode: str | None = None) -> None:
        kind, tower = cfg.model.kind, cfg.model.video_tower
        if (kind, tower) != self.MODEL:
            what = f"{kind} with video_tower={tower}" if kind == self.MODEL[0] else kind
            hint = " (eval.wan_policy.load_policy plans with it)" if (kind, tower) == ("towers", "wan") else ""
            raise PolicyError(f"the checkpoint policy runs the small towers (pixels in, byte captions); this "
                              f"checkpoint is {what}{hint}")
        self._setup(model, cfg, index, denoise_steps, mode)

    @classmethod
    def load(cls, ckpt: str | Path, stats: str | Path | None = None, device: str = "cpu",
             denoise_steps: int = 10, mode: str | None = None) -> "CheckpointPolicy":
        model, cfg = load_model(ckpt, device)
        return cls(model, cfg, read_stats(stats or cfg.data.shards), denoise_steps, mode)

    def caption_tokens(self, text: str) -> torch.Tensor:
        return torch.from_numpy(encode_caption(text, self.cfg.model.caption_max_bytes))[None].to(self.device)

    def plan(self, frame: np.ndarray, state: np.ndarray, caption: str, generator: torch.Generator) -> Plan:
        """Denoise ``self.horizon`` steps from this observation.

        Args:
            frame: uint8 [V, H, W, 3] at the model's image size, views in training order.
            state: float [S] in the robot's units.
            caption: the next-event description (event mode) or the task (chunk mode).
            generator: the episode's noise stream (:meth:`new_episode`).
        """
        return self.plan_batch([frame], [state], [caption], [generator])[0]

    def plan_batch(self, frames: list[np.ndarray], states: list[np.ndarray], captions: list[str],
                   generators: list[torch.Generator]) -> list[Plan]:
        """:meth:`plan` for several observations in one forward pass.

        Each observation draws its starting noise from its own generator, in the order a
        lone :meth:`plan` draws it (video, then actions), so its plan does not depend on what
        else is in the batch, up to float rounding of the batched matmuls. Captions are padded
        to the longest; the model masks the padding.
        """
        for frame, state in zip(frames, states):
            self.check_observation(frame, state)
        first = torch.from_numpy(np.stack(frames))
        st = torch.from_numpy(np.stack([self.norm.state(s.astype(np.float32)) for s in states]))
        tokens = [encode_caption(c, self.cfg.model.caption_max_bytes) for c in captions]
        cap = np.full((len(tokens), max(len(t) for t in tokens)), CAPTION_PAD, np.int64)
        for i, t in enumerate(tokens):
            cap[i, : len(t)] = t
        first, st, cap = first.to(self.device), st.to(self.device), torch.from_numpy(cap).to(self.device)
        video_shape = patchify(first[:1, None], self.cfg.model.patch_size).shape[2:]
        frames_n = self.horizon // self.cfg.model.frame_stride
        noise = [(torch.randn((1, frames_n, *video_shape), device=self.device, generator=g),
                  torch.randn((1, self.horizon, self.action_dim), device=self.device, generator=g)) for g in generators]
        noise = (torch.cat([v for v, _ in noise]), torch.cat([a for _, a in noise]))
        actions, _ = sample_event(self.model, first, st, cap, self.horizon, self.denoise_steps, noise=noise)
        with torch.no_grad():
            remaining = self.model.remaining_steps(first, st, cap).float().cpu().numpy()
        raw = self.norm.raw_actions(actions.float().cpu().numpy()).astype(np.float32)
        return [Plan(raw[i], float(remaining[i])) for i in range(len(frames))]

    def history_steps(self) -> list[int]:
        """Unified mode: how many control steps before the observation each history frame is,
        oldest first (``[M K_p, ..., K_p]``)."""
        k = self.cfg.model.frame_stride
        return [(self.history - j) * k for j in range(self.history)]

    def context_text(self, frame: torch.Tensor, context: ChunkContext) -> tuple[torch.Tensor, tuple | None]:
        """The caption tokens and (for ``global`` / ``staircase``) the text stream of one chunk."""
        if context.source == "atomic":
            return self.caption_tokens(context.caption), None
        if not hasattr(self.model, "context") or context.source not in self.model.context.sources:
            built = list(getattr(getattr(self.model, "context", None), "sources", ()))
            raise PolicyError(f"context source {context.source!r}: this checkpoint builds {built or 'none'} "
                              "(model.context.sources) besides atomic")
        tokens = self.caption_tokens("")
        with torch.no_grad():
            states = self.model.context.states(context.source, frame[None], [context.task], [list(context.done or [])])
            return tokens, self.model.text_context(tokens, [states[0]])

    def plan_chunk(self, history: list[np.ndarray], frame: np.ndarray, state: np.ndarray, context: ChunkContext,
                   generator: torch.Generator) -> Plan:
        """Unified mode: denoise one chunk of ``self.horizon`` steps from this observation.

        Args:
            history: ``data.history_latents`` frames (uint8 [V, H, W, 3]) at :meth:`history_steps`
                before the observation, oldest first (at an episode's start, repeat its first frame,
                as training did).
            frame: the observation (the anchor); state: float [S] in the robot's units.
            context: the chunk's text context.
            generator: the episode's noise stream.

        Returns:
            the chunk's actions in the robot's units and the remaining-time head's control steps
            to the end of the event in progress.
        """
        if not self.plan_mode.reads_context:
            raise PolicyError(f"plan_chunk plans a chunk with history and a context source (unified mode), this "
                              f"policy plans in {self.mode} mode")
        if len(history) != self.history:
            raise PolicyError(f"{len(history)} history frames given, the model reads {self.history}")
        self.check_observation(frame, state)
        for h in history:
            self.check_observation(h, state)
        anchor = torch.from_numpy(np.array(frame, dtype=np.uint8))[None].to(self.device)  # a copy: frames may be read-only
        past = torch.from_numpy(np.stack(history))[None].to(self.device) if history else None
        st = torch.from_numpy(self.norm.state(state.astype(np.float32)))[None].to(self.device)
        tokens, text = self.context_text(anchor[0], context)
        video_shape = patchify(anchor[:, None], self.cfg.model.patch_size).shape[2:]
        frames_n = self.horizon // self.cfg.model.frame_stride
        noise = (torch.randn((1, frames_n, *video_shape), device=self.device, generator=generator),
                 torch.randn((1, self.horizon, self.action_dim), device=self.device, generator=generator))
        actions, _ = sample_event(self.model, anchor, st, tokens, self.horizon, self.denoise_steps, noise=noise,
                                  history_frames=past, text=text)
        with torch.no_grad():
            remaining = float(self.model.remaining_steps(anchor, st, tokens, text=text)[0])
        return Plan(self.norm.raw_actions(actions[0].float().cpu().numpy()).astype(np.float32), remaining)
