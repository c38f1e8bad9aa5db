"""Reduce-scatter of ZeRO-1 AdamW's gradients from megatron DDP's buckets into each rank's shard.

:class:`~.adamw.ZeroAdamW` keeps, on data-parallel rank r, the AdamW state of the flat range r
of each AdamW group. With ``optim.muon_reduce=home`` the AdamW gradients are not all-reduced:
when megatron's DDP finds a bucket ready, :class:`~.home_reduce.HomeReduce` hands the bucket's
AdamW parameters to :meth:`ShardReduce.start`, which sends every data-parallel rank the part of
these gradients that falls in its shard, in one ``all_to_all_single`` over the data-parallel
group; the receiver sums the data-parallel copies in rank order straight into the flat gradient
of its shard (:attr:`~.adamw._FlatGroup.value`'s ``grad``). A rank sends and receives (N-1)/N
of its AdamW gradient bytes (N = DP): a reduce-scatter. The all-gather of the updated shard
(:meth:`~.adamw.ZeroAdamW.step`) is the other (N-1)/N, so AdamW moves the all-reduce bound
instead of 1.5x it.

The shards are cut along each group's flat index space, not along DDP's buckets, so a bucket's
AdamW part falls unevenly on the ranks; an ``all_to_all_single`` with per-rank sizes carries that
(a ``reduce_scatter_tensor`` needs equal parts, and gloo has none), and summing in rank order
makes the result the same for any bucketing. Tensor-parallel pieces of a parameter travel
only over the data-parallel group of the ranks holding the same piece.

At DP = 2 the sum a + b equals the all-reduce's bit for bit; with more data-parallel ranks the
order is fixed (rank order) but may differ from the all-reduce's.

Trade-off: the optimizer no longer finds reduced AdamW gradients in ``param.main_grad`` (each
rank keeps its own contribution there): gradient norms and clipping read the shards
(:meth:`ShardReduce.grad_pieces`), and the shard layout stays the one of :mod:`.adamw`, so
checkpoints do not change.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from wallwm_pretrain.optim.distributed.adamw import ZeroAdamW
from wallwm_pretrain.optim.tp_matrices import is_tp_sharded


class ShardReduce:
    """Reduce-scatter of a :class:`~.adamw.ZeroAdamW`'s gradients (see the module docstring).

    Args:
        adamw: the optimizer whose shards receive the gradients; marked :attr:`~.adamw.ZeroAdamW.scattered`.
        buffers: the megatron ``DistributedDataParallel`` wrappers holding the gradients
            (``param.main_grad``) of ``adamw``'s parameters.

    Raises:
        ValueError: an AdamW parameter that no DDP buffer holds (its gradient would never arrive).
    """

    def __init__(self, adamw: ZeroAdamW, buffers: Sequence, param_order: Sequence[str] = ()) -> None:
        """Args:
            adamw: the ZeRO-1 AdamW whose shards receive the gradients.
            buffers: the megatron DDP modules whose bucket sync runs the reduce-scatter.
            param_order: parameter names in the order the global gradient norm sums their
                squares (the optimizer set's); names not listed come after, in shard order.
        """
        self.adamw = adamw
        rank = {n: i for i, n in enumerate(param_order)}
        pieces = [(gi, i, dst, n) for gi, f in enumerate(adamw.flat) for i, _, dst, n in f.overlaps()]
        # fixed for the run (the shard layout does not change): sorted once, not every step
        self._norm_pieces = sorted(pieces, key=lambda q: rank.get(adamw.flat[q[0]].names[q[1]], len(rank)))
        self.where: dict[int, tuple[int, int, int]] = {}  # id(param) -> (group, offset, numel)
        for gi, f in enumerate(adamw.flat):
            for p, off, n in zip(f.params, f.offsets, f.sizes):
                self.where[id(p)] = (gi, off, n)
        held = {id(p) for ddp in buffers for p in ddp.module.parameters() if p.requires_grad}
        missing = [n for f in adamw.flat for n, p in zip(f.names, f.params) if id(p) not in held]
        if missing:
            raise ValueError(
                f"optim.muon_reduce=home reduce-scatters AdamW gradients out of megatron DDP buffers, but "
                f"{len(missing)} AdamW parameters are in none (first 3: {missing[:3]}); use muon_reduce=all_reduce"
            )
        adamw.scattered = True

    def owns(self, p: Tensor) -> bool:
        """Whether ``p`` is one of the AdamW parameters reduced here."""
        return id(p) in self.where

    def start(self, params: list[Tensor], works: list, finishers: list) -> None:
        """Start the reduce-scatter of ``params``' gradients (one bucket's AdamW part).

        Every data-parallel rank calls this with the same parameters in the same order (DDP's
        buckets are built alike on all of them).

        Args:
            params: AdamW parameters of one bucket, with their gradients in ``main_grad``.
            works: receives the communication handle to wait for.
            finishers: receives the function that sums the received copies into the shard.
        """
        if not params:
            return
        za = self.adamw
        world, me = za.dp_size, za.dp_rank
        sends: list[list[Tensor]] = [[] for _ in range(world)]
        mine: list[tuple[int, int, int]] = []  # (group, start in the shard, length), in send order
        for p in params:
            gi, off, n = self.where[id(p)]
            f = za.flat[gi]
            grad = p.main_grad.reshape(-1)
            for dst in range(world):
                lo, hi = f.bounds(dst)
                a, b = max(off, lo), min(off + n, hi)
                if a < b:
                    sends[dst].append(grad[a - off : b - off])
                    if dst == me:
                        mine.append((gi, a - lo, b - a))
        size = sum(n for _, _, n in mine)
        grad_dtype = params[0].main_grad.dtype

        def land(total: Tensor) -> None:
            off = 0
            for gi, start, n in mine:
                za.flat[gi].value.grad[start : start + n].copy_(total[off : off + n])
                off += n

        if world == 1:
            finishers.append(lambda: land(torch.cat(sends[0]) if sends[0] else torch.empty(0)))
            return
        send_sizes = [sum(t.numel() for t in chunks) for chunks in sends]
        device = params[0].main_grad.device
        flat = [t for chunks in sends for t in chunks]
        inp = torch.cat(flat) if flat else torch.empty(0, dtype=grad_dtype, device=device)
        out = torch.empty(world * size, dtype=grad_dtype, device=device)
        works.append(dist.all_to_all_single(out, inp, [size] * world, send_sizes, group=za.dp_group, async_op=True))

        def finish() -> None:
            copies = out.split(size) if size else []
            if not copies:
                return
            total = copies[0].clone()
            for c in copies[1:]:  # data-parallel rank order
                total += c
            land(total)

        finishers.append(finish)

    def grad_pieces(self, tp_rank: int) -> list[Tensor]:
        """Views of this rank's reduced shard gradients that count towards the global norm, in
        ``param_order``.

        Each element is counted once in the run: on the data-parallel rank of its shard, and
        for a parameter that tensor parallelism does not split, on tensor-parallel rank 0.
        """
        out = []
        for gi, i, dst, n in self._norm_pieces:
            f = self.adamw.flat[gi]
            if is_tp_sharded(f.params[i]) or tp_rank == 0:
                out.append(f.value.grad[dst : dst + n])
        return out

    def shard_grads(self) -> list[Tensor]:
        """This rank's whole flat shard gradients (what clipping scales)."""
        return [f.value.grad for f in self.adamw.flat]

    def clear(self) -> None:
        """Zero the shard gradients (with ``zero_grad``)."""
        for f in self.adamw.flat:
            f.value.grad.zero_()
