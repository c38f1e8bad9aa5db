"""Distributed Muon's momentum as a checkpoint sees it: this rank's share with the layout to
rebuild whole matrices, reloaded under the same plan, or cut from whole (TP=1) buffers.

:class:`MomentumState` is the state half of :class:`~.muon.DistMuon` (which inherits it), kept
apart so that the optimizer's step reads on its own; it uses the optimizer's plan, fused layouts,
groups and momentum and adds nothing of its own.
"""

from __future__ import annotations

import torch
from torch import Tensor


class MomentumState:
    """Save and load of :class:`~.muon.DistMuon`'s momentum (see the module docstring)."""

    def sharded_state(self) -> dict:
        """This rank's momentum with the layout needed to rebuild whole matrices (no comm)."""
        g = self.groups
        whole = {n: (list(f.whole.names), list(f.whole.sizes), f.whole.groups) for n, f in self.fused.items()}
        return {
            "mode": self.mode,
            "tp_rank": g.tp_rank,
            "tp_size": g.tp_size,
            "dp_rank": g.dp_rank,
            "pp_rank": g.pp_rank,
            "stage_rank": self.tp_dp_rank,  # the key checkpoints have always used for this rank
            "names": list(self.params),
            "plan": [dict(m.__dict__) for m in self.plan],
            "tp_ns_keys": sorted(self.sharded_keys),  # momentum held in TP pieces (muon_tp_ns=sharded)
            "whole_layouts": whole,
            "momentum": {k: v.detach().to("cpu", copy=True) for k, v in self.momentum.items()},
        }

    def load_sharded_state(self, state: dict) -> None:
        """Reload :meth:`sharded_state` of this rank under the same plan.

        Raises:
            ValueError: the state was saved under another plan or mode.
        """
        if (
            state["mode"] != self.mode
            or state["plan"] != [dict(m.__dict__) for m in self.plan]
            or state.get("tp_ns_keys", []) != sorted(self.sharded_keys)
        ):
            raise ValueError(
                f"momentum shard was saved under another plan, mode or optim.muon_tp_ns ({state['mode']!r} vs {self.mode!r}); "
                "load the canonical state instead"
            )
        device = next(iter(self.params.values())).device
        self.momentum = {k: v.to(device).clone() for k, v in state["momentum"].items()}

    def load_whole_momentum(self, whole: dict[str, Tensor]) -> None:
        """Take this rank's share of whole (TP=1 layout) momentum buffers, keyed by parameter.

        Parameters missing from ``whole`` start with no momentum (as before their first step).

        Raises:
            ValueError: a buffer whose shape is not the parameter's whole shape.
        """
        self.momentum = {}
        for m in self.plan:
            buf = whole.get(m.name)
            if buf is None:
                continue
            if m.part >= 0:
                layout = self.fused[m.name].whole
                layout.check(buf)
                buf = layout.part(buf, m.part)
            if tuple(buf.shape) != (m.rows, m.cols):
                raise ValueError(f"momentum of {m.key}: expected {m.rows} x {m.cols}, got {tuple(buf.shape)}")
            p = self.params[m.name]
            if m.key in self.sharded_keys:
                if self.holds(m, self.tp_dp_rank):
                    piece = self._cut(m, buf, self.groups.tp_rank)
                    self.momentum[m.key] = piece.to(p.device, p.dtype).clone(memory_format=torch.contiguous_format)
            elif self.mode == "owner":
                if m.home == self.tp_dp_rank:
                    self.momentum[m.key] = buf.to(p.device, p.dtype).clone(memory_format=torch.contiguous_format)
            else:
                piece = self._cut(m, buf, self.groups.tp_rank)
                self.momentum[m.key] = piece.to(p.device, p.dtype).clone(memory_format=torch.contiguous_format)
