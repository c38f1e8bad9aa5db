"""Bytes this rank sends and receives in ``torch.distributed`` collectives, by wrapping the calls.

:class:`CollectiveBytes` replaces the collectives of ``torch.distributed`` that the training
step uses (all_reduce, all_gather, all_gather_into_tensor, reduce_scatter,
reduce_scatter_tensor, all_to_all_single, broadcast, reduce) by wrappers that read each call's
tensors, split sizes and group, and add up, while a :meth:`~CollectiveBytes.window` is open:

- ``all_to_all_single``: exactly the bytes of the segments addressed to other ranks (sent) and
  coming from them (received), from the call's split sizes;
- ``all_reduce``: 2 (N-1)/N of the tensor each way, ``all_gather`` and ``reduce_scatter``
  (N-1)/N of the gathered (scattered) tensor each way: what the bandwidth-optimal ring
  algorithms move, which is what NCCL and gloo's ring implementations do for large tensors;
- ``broadcast`` / ``reduce``: the root sends (receives) N-1 copies, every other rank receives
  (sends) one (direct transfers).

Code that calls ``torch.distributed.X`` (attribute lookup at call time, as this project and
megatron's DDP buckets do) is counted; a name bound at import (``from torch.distributed import
all_reduce``) is not. Trade-off: the ring convention stands in for what an all-reduce moves on
the wire; the all_to_all counts, where distributed Muon's transfers are, are exact.
"""

from __future__ import annotations

import inspect
from collections import Counter
from contextlib import contextmanager

import torch.distributed as dist

WRAPPED = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter", "reduce_scatter_tensor",
           "all_to_all_single", "broadcast", "reduce")


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


class CollectiveBytes:
    """Counts this rank's collective traffic inside :meth:`window` (see the module docstring).

    Attributes:
        sent, received: bytes counted in the last window.
        calls: number of calls per collective in the last window.
    """

    def __init__(self) -> None:
        self.sent = self.received = 0
        self.calls: Counter[str] = Counter()
        self._open = False
        self._originals: dict = {}

    def install(self) -> None:
        for name in WRAPPED:
            if name in self._originals:
                continue
            original = getattr(dist, name)
            self._originals[name] = original
            setattr(dist, name, self._wrap(name, original))

    def uninstall(self) -> None:
        for name, original in self._originals.items():
            setattr(dist, name, original)
        self._originals = {}

    @contextmanager
    def window(self):
        """Count the collectives called inside (the counts of earlier windows are dropped)."""
        self.sent = self.received = 0
        self.calls = Counter()
        self._open = True
        try:
            yield self
        finally:
            self._open = False

    def _wrap(self, name: str, original):
        signature = inspect.signature(original)

        def counted(*args, **kwargs):
            if self._open:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                self._count(name, bound.arguments)
            return original(*args, **kwargs)

        counted.__wrapped__ = original
        return counted

    def _count(self, name: str, a: dict) -> None:
        group = a.get("group")
        n = dist.get_world_size(group)
        if n == 1:
            return
        me = dist.get_rank(group)
        self.calls[name] += 1
        sent = received = 0.0
        if name == "all_reduce":
            sent = received = 2 * (n - 1) / n * _nbytes(a["tensor"])
        elif name == "all_gather":
            sent = received = (n - 1) * _nbytes(a["tensor"])
        elif name == "all_gather_into_tensor":
            sent = received = (n - 1) * _nbytes(a["input_tensor"])
        elif name == "reduce_scatter":
            sent = received = (n - 1) * _nbytes(a["output"])
        elif name == "reduce_scatter_tensor":
            sent = received = (n - 1) * _nbytes(a["output"])
        elif name == "all_to_all_single":
            out, inp = a["output"], a["input"]
            in_splits = a.get("input_split_sizes") or [inp.numel() // n] * n
            out_splits = a.get("output_split_sizes") or [out.numel() // n] * n
            sent = sum(c for j, c in enumerate(in_splits) if j != me) * inp.element_size()
            received = sum(c for j, c in enumerate(out_splits) if j != me) * out.element_size()
        elif name == "broadcast":
            root = a["group_src"] if a.get("group_src") is not None else (
                dist.get_group_rank(group, a["src"]) if group is not None else a["src"])
            if me == root:
                sent = (n - 1) * _nbytes(a["tensor"])
            else:
                received = _nbytes(a["tensor"])
        elif name == "reduce":
            root = a["group_dst"] if a.get("group_dst") is not None else (
                dist.get_group_rank(group, a["dst"]) if group is not None else a["dst"])
            if me == root:
                received = (n - 1) * _nbytes(a["tensor"])
            else:
                sent = _nbytes(a["tensor"])
        self.sent += int(sent)
        self.received += int(received)
