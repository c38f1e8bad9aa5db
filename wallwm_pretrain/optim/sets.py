"""One optimizer interface for every layout: :class:`OptimizerSet`.

An optimizer set drives Muon (hidden matrices) and AdamW (the rest) with their warmup + cosine
schedules as one optimizer, over this rank's pieces of the model. Two implementations share the
parts that do not depend on where optimizer state lives (:class:`OptimizerSetBase`):

- :class:`ReplicatedOptimizerSet`: every rank holds the whole state of the parameters it holds;
  tensor-parallel slices are orthogonalised as whole matrices through a ``matrices`` hook.
  With no process groups it is the single-process optimizer, the reference of every test.
- ``distributed.DistributedOptimizerSet``: each logical matrix has one home rank that holds its
  momentum and orthogonalises it; AdamW state is sharded over data-parallel ranks (ZeRO-1).

Which one a run gets is ``optim.muon_mode`` (see :func:`~.build.build_optimizer`); the caller
never branches on it. ``state_dict`` / ``load_state_dict`` reload a rank's own state under the
same layout; how the state of any layout is laid out in a checkpoint, as pieces of the
single-process state (whole TP=1 tensors, parameters named by the ``split`` lists) that any
layout resumes from, is ``wallwm_pretrain.checkpoint.optim``'s, which reads :attr:`params`,
:meth:`split_lists` and each set's own holdings.

Gradients live in ``param.grad``, or, with ``grad_buffers`` (megatron DDP wrappers, one per
model chunk), in ``param.main_grad``, reduced over data-parallel ranks by
``finish_grad_sync()``; ``clip_grad_norm`` and ``step`` call it if the caller has not.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, Sequence

import torch
from torch import Tensor, nn

from ..config import OptimConfig
from .params import ParamSplit, muon_hyperparameters
from .fused import FusedRows
from .grad_norm import clip_by_global_norm, global_grad_norm
from .groups import OptimizerGroups
from .muon import LocalMatrices, Muon
from .schedule import build_scheduler

GROUPS = ("muon", "adamw_decay", "adamw_no_decay")


class GradBuffer(Protocol):
    """What an optimizer set needs of a data-parallel wrapper (megatron's DDP has it)."""

    def finish_grad_sync(self) -> None: ...

    def zero_grad_buffer(self) -> None: ...


class OptimizerSet(Protocol):
    """The interface of every optimizer set (see the module docstring)."""

    split: ParamSplit
    optimizers: dict[str, torch.optim.Optimizer]

    def finish_grad_sync(self) -> None: ...

    def finish_param_sync(self) -> None: ...

    def clip_grad_norm(self, max_norm: float) -> float: ...

    def step(self) -> None: ...

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def lrs(self) -> dict[str, float]: ...

    def param_groups_summary(self) -> dict[str, dict[str, int]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @property
    def params(self) -> dict[str, nn.Parameter]: ...

    def split_lists(self) -> dict[str, list[str]]: ...


class OptimizerSetBase:
    """What every optimizer set does alike: hyper-parameters, gradients, clipping, zeroing,
    schedules, summaries. A subclass builds ``self.optimizers`` (``muon``, ``adamw``) from
    :attr:`muon_hyper`, :attr:`adamw_hyper` and :attr:`adamw_groups`, then calls
    :meth:`_build_schedulers`.

    Args:
        named_params: this rank's trainable parameters by name (the whole model's names).
        split: which names go to Muon and to the two AdamW groups.
        cfg: the ``optim`` section of the run config.
        total_steps: optimizer steps of the whole run (end of the cosine decay).
        ns_dtype: Newton-Schulz precision, ``float32`` or ``bfloat16``.
        groups: this rank's process groups; ``None`` = one process, no collectives.
        grad_buffers: data-parallel wrappers whose buffers (``param.main_grad``) hold the
            gradients; ``None`` reads ``param.grad``.
        ns_variant: ``quintic``, ``polar_express`` or ``gram`` (Newton-Schulz variant).
    """

    def __init__(
        self,
        named_params: dict[str, nn.Parameter],
        split: ParamSplit,
        cfg: OptimConfig,
        total_steps: int,
        ns_dtype: str,
        groups: Optional[OptimizerGroups] = None,
        grad_buffers: Optional[Sequence[GradBuffer]] = None,
        ns_variant: str = "quintic",
    ) -> None:
        self.split = split
        self._params = named_params
        self.groups = groups or OptimizerGroups.single()
        self.grad_buffers = list(grad_buffers or [])
        self.muon_hyper = muon_hyperparameters(cfg, ns_dtype, ns_variant)
        self.adamw_hyper = dict(lr=cfg.adamw_lr, betas=(float(cfg.adamw_betas[0]), float(cfg.adamw_betas[1])),
                                eps=cfg.adamw_eps)
        # (names, weight decay) per AdamW group: norms, biases and 1-D tensors are not decayed
        self.adamw_groups = [(split.adamw_decay, cfg.weight_decay), (split.adamw_no_decay, 0.0)]
        self._schedule = (cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self._synced = False

    def _build_schedulers(self) -> None:
        self.schedulers = {key: build_scheduler(opt, *self._schedule) for key, opt in self.optimizers.items()}

    def _grad(self, p: Tensor) -> Optional[Tensor]:
        return p.main_grad if self.grad_buffers else p.grad

    def _grad_fn(self):
        """Where the optimizers read a parameter's reduced gradient (None = ``param.grad``)."""
        return (lambda p: p.main_grad) if self.grad_buffers else None

    def finish_grad_sync(self) -> None:
        """Complete the data-parallel gradient reduction of this step (idempotent per step)."""
        if not self._synced:
            for buffer in self.grad_buffers:
                buffer.finish_grad_sync()
        self._synced = True

    def finish_param_sync(self) -> None:
        """Land every parameter update still in flight; call before reading parameters outside
        the model's forward (checkpoints, evaluation, export). Here updates land in ``step``."""

    @torch.no_grad()
    def clip_grad_norm(self, max_norm: float) -> float:
        """Scale all gradients so the norm of the logical model's gradient is <= ``max_norm``.

        Sliced gradients add up over the tensor-parallel group, replicated ones count once,
        pipeline ranks add up; the norm, and so the clip factor, is the same on every rank.

        Args:
            max_norm: the bound; 0 disables clipping (the norm is still measured).

        Returns:
            The global norm before clipping.

        Raises:
            ValueError: a negative ``max_norm``.
        """
        if max_norm < 0:
            raise ValueError(f"max_norm must be >= 0 (0 disables clipping), got {max_norm}")
        self.finish_grad_sync()
        pairs = [(p, g) for p in self._params.values() if (g := self._grad(p)) is not None]
        device = next(iter(self._params.values())).device
        g = self.groups
        total = global_grad_norm(pairs, g.tp_rank, g.model_parallel, g.model_parallel_size, device)
        clip_by_global_norm([grad for _, grad in pairs], total, max_norm)
        return float(total)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear all gradients, including the data-parallel buffers.

        Args:
            set_to_none: drop the gradient tensors (saves memory) instead of zeroing them;
                always so with ``grad_buffers``, where ``param.grad`` only aliases a buffer.
        """
        for p in self._params.values():
            if set_to_none or self.grad_buffers:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()
        for buffer in self.grad_buffers:
            buffer.zero_grad_buffer()
        self._synced = False

    def lrs(self) -> dict[str, float]:
        """Current (scheduled) learning rate per optimizer, e.g. ``{"muon": ..., "adamw": ...}``.

        For Muon this is the lr before the per-shape 0.2 sqrt(max(A, B)) factor.
        """
        return {key: float(opt.param_groups[0]["lr"]) for key, opt in self.optimizers.items()}

    def param_groups_summary(self) -> dict[str, dict[str, int]]:
        """Tensor and element counts (this rank's pieces) per optimizer and per AdamW group.

        Keys: ``muon``, ``adamw`` (both AdamW groups), ``adamw_decay``, ``adamw_no_decay``; each
        maps to ``{"tensors": ..., "params": ...}``.
        """
        return self.split.summary(self._params)

    @property
    def params(self) -> dict[str, nn.Parameter]:
        """This rank's trainable parameters by name (the whole model's names)."""
        return self._params

    def split_lists(self) -> dict[str, list[str]]:
        """Parameter names per group kind (``muon``, ``adamw_decay``, ``adamw_no_decay``)."""
        return {g: list(getattr(self.split, g)) for g in GROUPS}


class ReplicatedOptimizerSet(OptimizerSetBase):
    """Muon + AdamW whose whole state lives on every rank that holds the parameters.

    ``step()`` steps both optimizers and then both schedulers, so ``lrs()`` afterwards shows the
    learning rates of the next step.

    Args:
        *common, **common_kw: as :class:`OptimizerSetBase` (parameters, split, config, steps,
            Newton-Schulz dtype, groups, grad buffers, Newton-Schulz variant).
        matrices: Muon's hook to the whole matrix of a sliced parameter (``LocalMatrices``:
            every parameter is its own matrix).
        fused: row layouts of fused Muon weights by name (QKV, gate/up, KV), orthogonalised
            per logical matrix; ``None`` treats every weight as one matrix.
    """

    def __init__(
        self,
        *common,
        matrices: Optional[LocalMatrices] = None,
        fused: Optional[dict[str, FusedRows]] = None,
        **common_kw,
    ) -> None:
        super().__init__(*common, **common_kw)
        params, split = self._params, self.split
        self.matrices = matrices or LocalMatrices()
        layouts = {params[n]: layout for n, layout in (fused or {}).items() if n in split.muon}
        if split.muon:
            self.optimizers["muon"] = Muon(
                [params[n] for n in split.muon], **self.muon_hyper, matrices=self.matrices, fused=layouts
            )
        adamw_groups = [
            {"params": [params[n] for n in names], "weight_decay": wd} for names, wd in self.adamw_groups if names
        ]
        if adamw_groups:
            self.optimizers["adamw"] = torch.optim.AdamW(adamw_groups, **self.adamw_hyper)
        self._build_schedulers()

    def step(self) -> None:
        """One update of every parameter with a gradient, then advance the schedules."""
        self.finish_grad_sync()
        if self.grad_buffers:  # the torch optimizers read p.grad: point it at the reduced buffer
            for p in self._params.values():
                p.grad = p.main_grad
        try:
            for opt in self.optimizers.values():
                opt.step()
            for sched in self.schedulers.values():
                sched.step()
        finally:
            if self.grad_buffers:
                for p in self._params.values():
                    p.grad = None
            self._synced = False

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: both optimizers, both schedulers and the name split."""
        return {
            "split": self.split_lists(),
            "optimizers": {key: opt.state_dict() for key, opt in self.optimizers.items()},
            "schedulers": {key: sched.state_dict() for key, sched in self.schedulers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`.

        Args:
            state: a dict returned by :meth:`state_dict` of a set built on the same parameters.

        Raises:
            ValueError: the saved split names different parameters than this set holds.
        """
        saved = state["split"]
        for group in GROUPS:
            mine = getattr(self.split, group)
            if list(saved[group]) != mine:
                missing = sorted(set(saved[group]) ^ set(mine))[:5]
                raise ValueError(
                    f"optimizer state does not match the model: group {group!r} holds "
                    f"{len(saved[group])} saved vs {len(mine)} current parameters "
                    f"(differing names, first 5: {missing or 'same names, other order'})"
                )
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        for key, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][key])
