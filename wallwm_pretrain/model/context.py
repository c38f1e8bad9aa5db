"""Unified mode's text context c_l: one of three sources per chunk, in the text encoder's space.

A unified-mode chunk (``data.mode=unified``) is conditioned on a text context that the Wan
tower's cross-attention, the action tower's ``text_in`` and the remaining-time head read in place
of the text encoder's states of a caption. Each row of a batch names its source
(``Batch.context``):

* ``atomic``: the text encoder's states of an atomic instruction (the caption of the event the
  window mostly covers in training; a planner's or a person's at inference): ``batch.text_states``
  as the loader or the caller gives them. Nothing to compute.
* ``global``: the global instruction (the task, with the events done so far, as the
  conditioner's prompt) through the frozen VLM and the conditioner's adapter and alignment head
  (:mod:`.conditioner.heads`), which map VLM states to the text encoder's states. The VLM runs
  under ``no_grad``; the adapter and the head are ordinary parameters of this module, so the DiT's
  loss reaches them: the gradient-continuous path of the paper.
* ``staircase``: the K_c reasoning latents of the Staircase branch (:mod:`.conditioner.staircase`,
  trained in stage 4 and frozen in stage 5, when it runs without an autograd graph) through a learned projection ``D_vlm -> text_dim`` (with an
  RMSNorm first: the latents leave the branch normed to the VLM's scale, the text states do not).

The module holds no state between calls: switching a chunk's source changes its context and
nothing else. The frozen VLM is a plain attribute (as in :class:`~.conditioner.model.TextConditioner`):
outside the state dict, the optimizer and DDP. Parameter names (``context.adapter.*``,
``context.align.*``, ``context.branch.*``, ``context.staircase_proj.*``) are those of the
conditioner and Staircase checkpoints under ``context.``, so ``model.context.conditioner_from`` /
``staircase_from`` load them by name (the trainer does; the model never reads files but the VLM's).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model.conditioner.heads import Adapter, AlignmentHead
from wallwm_pretrain.model.conditioner.prompt import build_prompt
from wallwm_pretrain.model.conditioner.staircase import StaircaseBranch
from wallwm_pretrain.model.conditioner.vlm import FrozenVLM

SOURCES = ("atomic", "global", "staircase")


def aligned_width(cfg: ModelConfig, width: int, text_encoder_space: bool) -> int:
    """The alignment head's output width: the text encoder's (``model.conditioner.text_dim``, the
    stage-3 target). A video tower that reads text-encoder states (the Wan tower, ``width`` =
    ``model.wan.text_dim``) reads it as is, so the two must agree."""
    own = cfg.conditioner.text_dim
    if text_encoder_space:
        if isinstance(own, int) and own != width:
            raise ValueError(f"model.conditioner.text_dim={own} but the Wan tower reads text states of width "
                             f"model.wan.text_dim={width}")
        return int(width)
    if not isinstance(own, int):
        raise ValueError("the global context source on the small towers needs model.conditioner.text_dim (the "
                         "width of the text states the conditioner was aligned to, in its run config)")
    return own


class ContextSources(nn.Module):
    """The global and Staircase sources of unified mode (``model.context.sources``).

    Args:
        cfg: the ``model`` section (``context``, ``conditioner``, ``staircase``).
        width: width of the text context the towers read (the video tower says: the text
            encoder's states on the Wan tower, ``model.wan.text_dim``; the caption encoder's
            output on the small tower, ``hidden_size``).
        text_encoder_space: the towers read the text encoder's states (the Wan tower), so the
            conditioner's aligned states enter as they are; otherwise through ``global_proj``.
        vlm: the frozen VLM to share (default: loaded from ``model.conditioner.vlm``).
    """

    def __init__(self, cfg: ModelConfig, width: int, text_encoder_space: bool, *,
                 vlm: FrozenVLM | None = None) -> None:
        super().__init__()
        from wallwm_pretrain.model.conditioner.model import vlm_dtype  # transformers: only when built

        self.cfg = cfg
        self.sources = tuple(cfg.context.sources)
        self.width = int(width)
        self.global_proj: nn.Linear | None = None
        c = cfg.conditioner
        self.vlm = vlm if vlm is not None else FrozenVLM.load(c.vlm, dtype=vlm_dtype(c.vlm_dtype))
        dv = self.vlm.hidden_size
        if "global" in self.sources:
            text_dim = aligned_width(cfg, self.width, text_encoder_space)
            self.adapter = Adapter(dv, c.hidden_size)
            self.align = AlignmentHead(c.hidden_size, c.num_heads, c.align_layers, c.align_tokens, text_dim)
            if not text_encoder_space:  # the small tower's text stream: projected into it
                self.global_proj = nn.Linear(text_dim, self.width)
        if "staircase" in self.sources:
            self.branch = StaircaseBranch(self.vlm.num_layers, dv, cfg.staircase)
            self.staircase_proj = nn.Sequential(nn.RMSNorm(dv), nn.Linear(dv, self.width))

    def _apply(self, fn, recurse: bool = True):
        # a parent's .to / .cuda reaches submodules through _apply, not .to: the frozen VLM (not a
        # submodule) follows the parameters' device here; its dtype stays model.conditioner.vlm_dtype
        out = super()._apply(fn, recurse)
        param = next(self.parameters(), None)
        if param is not None and param.device != self.vlm.device:
            self.vlm.to(param.device)
        return out

    def prompts(self, task: list[str], done: list[list[str]]) -> list[str]:
        return [build_prompt(t, d, self.cfg.conditioner.max_done) for t, d in zip(task, done)]

    def global_states(self, observation: torch.Tensor, task: list[str], done: list[list[str]]) -> torch.Tensor:
        """[B, align_tokens, width]: the conditioner's aligned states of the global instruction
        (gradient to the adapter and the alignment head, none to the VLM), every position trained
        against the zero-padded target; on the Wan tower at most ``model.text_len`` of them, on the
        small towers through ``global_proj`` into their text stream."""
        states, valid = self.vlm.encode(observation, self.prompts(task, done))
        w = self.adapter.proj.weight
        memory = self.adapter(states.to(w.device, w.dtype))
        aligned = self.align(memory, ~valid.to(w.device))
        if self.global_proj is None:
            # the Wan tower reads model.text_len positions (model/wan/text.py): those past it are cut
            # here (the head trained them towards Wan's zero padding); fewer are zero-padded there
            return aligned[:, : self.cfg.text_len]
        return self.global_proj(aligned)

    def staircase_latents(self, observation: torch.Tensor, task: list[str], done: list[list[str]]) -> torch.Tensor:
        """[B, K_c, D_vlm]: the branch's reasoning latents (no autograd graph while the branch is
        frozen, ``model.train_parts`` without ``context_staircase``, as in stage 5)."""
        states, valid = self.vlm.layer_states(observation, self.prompts(task, done))
        states = states.to(self.staircase_proj[1].weight.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in self.branch.parameters())):
            return self.branch(states, valid)

    def staircase_states(self, observation: torch.Tensor, task: list[str], done: list[list[str]]) -> torch.Tensor:
        """[B, K_c, width]: the Staircase latents projected into the towers' text-context space."""
        return self.staircase_proj(self.staircase_latents(observation, task, done))

    def states(self, source: str, observation: torch.Tensor, task: list[str], done: list[list[str]]) -> torch.Tensor:
        if source not in self.sources:
            raise ValueError(f"context source {source!r} is not built (model.context.sources = {list(self.sources)})")
        if source == "global":
            return self.global_states(observation, task, done)
        return self.staircase_states(observation, task, done)

    def row_states(self, batch: Batch) -> list[torch.Tensor | None]:
        """Each row's context states ``[L_i, width]`` from its source; None for ``atomic`` rows
        (and for every row of a batch without sources). The anchor's views are the observation."""
        per_row: list[torch.Tensor | None] = [None] * batch.size
        if not batch.context_sources:
            return per_row
        unknown = sorted(set(batch.context) - set(SOURCES))
        if unknown:
            raise ValueError(f"batch.context: unknown source {unknown[0]!r}; the sources are {', '.join(SOURCES)}")
        observation = batch.frames[:, batch.history * self.cfg.frame_stride]  # the anchor's views
        for source in ("global", "staircase"):
            rows = [i for i, c in enumerate(batch.context) if c == source]
            if not rows:
                continue
            if len(batch.task) != batch.size:
                raise ValueError(f"context source {source} needs batch.task (the global instruction) for every row")
            done = batch.done if batch.done else [[] for _ in range(batch.size)]
            out = self.states(source, observation[rows], [batch.task[i] for i in rows], [done[i] for i in rows])
            for j, i in enumerate(rows):
                per_row[i] = out[j]
        return per_row

    def merge(self, per_row: list[torch.Tensor | None], text: torch.Tensor | None, valid: torch.Tensor | None,
              keys: list[str] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """Text states ``[B, L, width]`` and their mask ``[B, L]``: row i is ``per_row[i]`` where
        given, else ``text[i]`` with ``valid[i]``; padded to the longest row."""
        if text is not None and valid is None:
            valid = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        length = max([t.shape[0] for t in per_row if t is not None] + ([text.shape[1]] if text is not None else []))
        dev = next(t for t in per_row if t is not None).device
        rows_out, valid_out = [], []
        for i, mine in enumerate(per_row):
            if mine is None:
                if text is None:
                    raise ValueError(f"row {i} ({keys[i] if keys else i}) reads atomic text states, but the batch "
                                     "has none (text_states)")
                mine, real = text[i].to(dev, torch.float32), valid[i].to(dev)
            else:
                real = torch.ones(mine.shape[0], dtype=torch.bool, device=dev)
            pad = length - mine.shape[0]
            rows_out.append(torch.cat([mine.float(), mine.new_zeros(pad, self.width, dtype=torch.float32)]))
            valid_out.append(torch.cat([real, real.new_zeros(pad)]))
        return torch.stack(rows_out), torch.stack(valid_out)

    def apply(self, batch: Batch) -> Batch:
        """``batch`` with the text states (and their mask) of every row whose ``context`` is
        ``global`` or ``staircase`` replaced by that source's; ``atomic`` rows keep theirs (the
        Wan path: ``batch.text_states`` are the text encoder's). Rows may mix sources."""
        per_row = self.row_states(batch)
        if all(t is None for t in per_row):
            return batch
        text, valid = self.merge(per_row, batch.text_states, batch.text_valid, batch.keys)
        return replace(batch, text_states=text, text_valid=valid)

