"""Distributed Muon's momentum as this rank's share, reloaded under the same plan (a
checkpoint that any layout resumes from is ``wallwm_pretrain.checkpoint.optim.distributed``'s).

:class:`MomentumState` is the state half of :class:`~.muon.DistMuon` (which inherits it), kept
apart so that the optimizer's step reads on its own; it uses the optimizer's plan, fused layouts,
groups and momentum and adds nothing of its own.
"""

from __future__ import annotations



class MomentumState:
    """Save and load of :class:`~.muon.DistMuon`'s momentum (see the module docstring)."""

    def sharded_state(self) -> dict:
        """This rank's momentum with the layout needed to rebuild whole matrices (no comm)."""
        g = self.groups
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
                "load a checkpoint instead"
            )
        device = next(iter(self.params.values())).device
        self.momentum = {k: v.to(device).clone() for k, v in state["momentum"].items()}
