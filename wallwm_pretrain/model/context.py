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


class ContextSources(nn.Module):
    """The global and Staircase sources of unified mode (``model.context.sources``).

    Args:
        cfg: the ``model`` section (``context``, ``conditioner``, ``staircase``, ``wan.text_dim``).
        vlm: the frozen VLM to share (default: loaded from ``model.conditioner.vlm``).
    """

    def __init__(self, cfg: ModelConfig, *, vlm: FrozenVLM | None = None) -> None:
        super().__init__()
        from wallwm_pretrain.model.conditioner.model import vlm_dtype  # transformers: only when built

        self.cfg = cfg
        self.sources = tuple(cfg.context.sources)
        c, text_dim = cfg.conditioner, cfg.wan.text_dim
        self.vlm = vlm if vlm is not None else FrozenVLM.load(c.vlm, dtype=vlm_dtype(c.vlm_dtype))
        dv = self.vlm.hidden_size
        if "global" in self.sources:
            self.adapter = Adapter(dv, c.hidden_size)
            self.align = AlignmentHead(c.hidden_size, c.num_heads, c.align_layers, c.align_tokens, text_dim)
        if "staircase" in self.sources:
            self.branch = StaircaseBranch(self.vlm.num_layers, dv, cfg.staircase)
            self.staircase_proj = nn.Sequential(nn.RMSNorm(dv), nn.Linear(dv, text_dim))

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
        """[B, align_tokens, text_dim]: the conditioner's aligned states of the global instruction
        (gradient to the adapter and the alignment head, none to the VLM)."""
        states, valid = self.vlm.encode(observation, self.prompts(task, done))
        w = self.adapter.proj.weight
        memory = self.adapter(states.to(w.device, w.dtype))
        return self.align(memory, ~valid.to(w.device))

    def staircase_latents(self, observation: torch.Tensor, task: list[str], done: list[list[str]]) -> torch.Tensor:
        """[B, K_c, D_vlm]: the branch's reasoning latents (no autograd graph while the branch is
        frozen, ``model.train_parts`` without ``context_staircase``, as in stage 5)."""
        states, valid = self.vlm.layer_states(observation, self.prompts(task, done))
        states = states.to(self.staircase_proj[1].weight.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in self.branch.parameters())):
            return self.branch(states, valid)

    def staircase_states(self, observation: torch.Tensor, task: list[str], done: list[list[str]]) -> torch.Tensor:
        """[B, K_c, text_dim]: the Staircase latents projected into the text encoder's space."""
        return self.staircase_proj(self.staircase_latents(observation, task, done))

    def states(self, source: str, observation: torch.Tensor, task: list[str], done: list[list[str]]) -> torch.Tensor:
        if source not in self.sources:
            raise ValueError(f"context source {source!r} is not built (model.context.sources = {list(self.sources)})")
        if source == "global":
            return self.global_states(observation, task, done)
        return self.staircase_states(observation, task, done)

    def apply(self, batch: Batch) -> Batch:
        """``batch`` with the text states (and their mask) of every row whose ``context`` is
        ``global`` or ``staircase`` replaced by that source's; ``atomic`` rows keep theirs. The
        rows of one batch may have different sources: states are padded to the longest."""
        if not batch.context or all(c == "atomic" for c in batch.context):
            return batch
        unknown = sorted(set(batch.context) - set(SOURCES))
        if unknown:
            raise ValueError(f"batch.context: unknown source {unknown[0]!r}; the sources are {', '.join(SOURCES)}")
        observation = batch.frames[:, batch.history * self.cfg.frame_stride]  # the anchor's views
        per_row: list[torch.Tensor | None] = [None] * batch.size
        for source in ("global", "staircase"):
            rows = [i for i, c in enumerate(batch.context) if c == source]
            if not rows:
                continue
            if not batch.task or len(batch.task) != batch.size:
                raise ValueError(f"context source {source} needs batch.task (the global instruction) for every row")
            done = batch.done if batch.done else [[] for _ in range(batch.size)]
            out = self.states(source, observation[rows], [batch.task[i] for i in rows], [done[i] for i in rows])
            for j, i in enumerate(rows):
                per_row[i] = out[j]
        text, valid = batch.text_states, batch.text_valid
        if text is not None and valid is None:
            valid = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        length = max([t.shape[0] for t in per_row if t is not None] + ([text.shape[1]] if text is not None else []))
        dev = next(t for t in per_row if t is not None).device
        width = self.cfg.wan.text_dim
        rows_out, valid_out = [], []
        for i, mine in enumerate(per_row):
            if mine is None:
                if text is None:
                    raise ValueError(f"row {i} ({batch.keys[i] if batch.keys else i}) reads atomic text states, "
                                     "but the batch has none (text_states)")
                mine, real = text[i].to(dev, torch.float32), valid[i].to(dev)
            else:
                real = torch.ones(mine.shape[0], dtype=torch.bool, device=dev)
            pad = length - mine.shape[0]
            rows_out.append(torch.cat([mine.float(), mine.new_zeros(pad, width, dtype=torch.float32)]))
            valid_out.append(torch.cat([real, real.new_zeros(pad)]))
        return replace(batch, text_states=torch.stack(rows_out), text_valid=torch.stack(valid_out))
