"""Reduce-to-home: each gradient summed over data-parallel ranks onto the rank that updates it only.

With ``optim.muon_reduce=home`` (owner mode, gradients in megatron DDP buffers) no gradient is
all-reduced. When megatron's DDP finds a bucket of gradients ready
(during backward with ``overlap_grad_reduce``, else in ``finish_grad_sync``) it calls the bucket
group's ``start_grad_sync``; :class:`HomeReduce` replaces that call, per bucket group, by:

- one ``all_to_all_single`` over the TP x DP group in which every rank sends its piece of each
  Muon matrix of the bucket to that matrix's home; the home sums the data-parallel copies (in
  data-parallel rank order) and joins the tensor-parallel pieces into the whole matrix (with
  ``optim.muon_tp_ns=sharded``, a matrix kept in pieces goes piece by piece to the TP rank of
  the same column at the home's data-parallel index instead, see :mod:`.sharded_ns`). A
  matrix that tensor parallel does not split is sent only by the ranks of the home's TP column
  (the other TP ranks hold the same gradient);
- one reduce-scatter over the data-parallel group of the bucket's AdamW gradients into the
  ZeRO-1 shards that update them (:mod:`.shard_reduce`); without a :class:`~.shard_reduce.ShardReduce`
  (or for a parameter it does not hold) an ``all_reduce``, copied back into the buffer.

Only the home ends up with a Muon matrix's reduced gradient (:attr:`HomeReduce.reduced`), only
the shard's rank with an AdamW element's; the DDP buffers keep each rank's own unreduced
contribution. A rank sends and receives (N-1)/N of its gradient bytes (N = TP x DP size for Muon,
homes balanced; DP for AdamW), half an all-reduce; the return of the orthogonalised update
(see :mod:`.muon`) and the all-gather of the AdamW shards are the other half.

At DP = 2 the sum a + b equals the all-reduce's bit for bit (addition commutes); with more
data-parallel ranks the order is fixed (rank order) but may differ from the all-reduce's.

Trade-off: this reaches into megatron's bucket groups (``start_grad_sync``, the buckets' params
and ``gradient_scaling_factor``), whose shape a megatron-core upgrade may change; the tests of
the DDP path fail if it does. Megatron's distributed optimizer and ``average_in_collective`` are
not supported here (the project uses neither).
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

if TYPE_CHECKING:
    from wallwm_pretrain.optim.distributed.muon import DistMuon
    from wallwm_pretrain.optim.distributed.shard_reduce import ShardReduce


class _Handle:
    """The communication of one bucket group: wait for it all, then finish (idempotent)."""

    def __init__(self, works: list, finishers: list[Callable[[], None]]) -> None:
        self.works, self.finishers = works, finishers
        self.done = False

    def wait(self) -> None:
        if self.done:
            return
        for work in self.works:
            work.wait()
        for finish in self.finishers:
            finish()
        self.done = True


class HomeReduce:
    """Reduce-to-home of distributed Muon's gradients inside megatron DDP (module docstring).

    Args:
        muon: the owner-mode optimizer (its plan, homes and TP x DP coordinates); ``None`` when
            every parameter goes to AdamW.
        buffers: the megatron ``DistributedDataParallel`` wrappers whose buffers hold the
            gradients of ``muon``'s parameters (and of the AdamW ones).
        shards: the reduce-scatter of the AdamW gradients into their ZeRO-1 shards; ``None``
            all-reduces them.

    Attributes:
        reduced: whole reduced gradient of every logical matrix this rank is home of, by key,
            once the step's buckets are reduced (:meth:`wait`).

    Raises:
        ValueError: a DDP configuration this path does not support.
    """

    def __init__(self, muon: Optional["DistMuon"], buffers: Sequence, shards: Optional["ShardReduce"] = None) -> None:
        self.muon, self.shards = muon, shards
        self.names = {id(p): n for n, p in muon.params.items()} if muon is not None else {}
        self.reduced: dict[str, Tensor] = {}
        self._pending: list[_Handle] = []
        for ddp in buffers:
            cfg = ddp.ddp_config
            if cfg.use_distributed_optimizer or cfg.average_in_collective:
                raise ValueError(
                    "optim.muon_reduce=home needs megatron DDP without its distributed optimizer and "
                    f"without average_in_collective (got use_distributed_optimizer={cfg.use_distributed_optimizer}, "
                    f"average_in_collective={cfg.average_in_collective})"
                )
            for group in list(ddp.bucket_groups) + list(ddp.expert_parallel_bucket_groups):
                # megatron calls group.start_grad_sync(...) when the group's gradients are ready
                group.start_grad_sync = partial(self._start, group)

    # -- per bucket group -----------------------------------------------------------------
    def _start(self, group, force_all_reduce: bool = False) -> None:
        if group.is_first_batch and group.grad_reduce_handle is not None:
            return  # megatron's rule: already dispatched in the first batch
        if group.grad_reduce_handle is not None:
            raise RuntimeError("a bucket group's gradient reduction started twice in one step")
        for bucket in group.buckets:  # what megatron does first: scale (1/dp, or 1 per token)
            if bucket.gradient_scaling_factor != 1.0:
                bucket.grad_data *= bucket.gradient_scaling_factor
        works: list = []
        finishers: list[Callable[[], None]] = []
        for bucket in group.buckets:
            muon, scattered, other = [], [], []
            for p in bucket.params_list:
                if id(p) in self.names:
                    muon.append(p)
                elif self.shards is not None and self.shards.owns(p):
                    scattered.append(p)
                else:
                    other.append(p)
            self._all_reduce(other, group.data_parallel_group, works, finishers)
            if scattered:
                self.shards.start(scattered, works, finishers)
            if muon:
                names = {self.names[id(p)] for p in muon}
                self._to_home([m for m in self.muon.plan if m.name in names], works, finishers)
        handle = _Handle(works, finishers)
        self._pending.append(handle)
        # with overlap megatron's finish_grad_sync waits on the handle; without, it expects none
        group.grad_reduce_handle = handle if group.ddp_config.overlap_grad_reduce else None

    @staticmethod
    def _all_reduce(params: list[Tensor], dp_group, works: list, finishers: list) -> None:
        if not params or dist.get_world_size(dp_group) == 1:
            return
        flat = torch.cat([p.main_grad.reshape(-1) for p in params])
        works.append(dist.all_reduce(flat, group=dp_group, async_op=True))

        def copy_back() -> None:
            off = 0
            for p in params:
                n = p.main_grad.numel()
                p.main_grad.view(-1).copy_(flat[off : off + n])
                off += n

        finishers.append(copy_back)

    def _senders(self, m, src: int) -> bool:
        """Whether TP x DP rank ``src`` sends its piece of ``m`` to the home."""
        coords = self.muon._coords
        return m.tp_dim is not None or coords[src][1] == coords[m.home][1]

    def _to_home(self, matrices: list, works: list, finishers: list) -> None:
        mu = self.muon
        g = mu.groups
        me, tp, world = mu.tp_dp_rank, g.tp_size, g.tp_dp_size
        grads = {m.name: mu.params[m.name].main_grad for m in matrices}
        mine = [m for m in matrices if mu.holds(m, me)]
        if world == 1:
            finishers.append(lambda: self.reduced.update({m.key: mu._local(m, grads[m.name]).clone() for m in mine}))
            return
        chunks = [
            [mu._local(m, grads[m.name]) for m in matrices if mu.destination(m, me) == dst and self._senders(m, me)]
            for dst in range(world)
        ]
        from_src = [[m for m in mine if self._senders(m, src) and mu.destination(m, src) == me] for src in range(world)]
        recv = [sum(m.piece_numel(tp) for m in ms) for ms in from_src]
        dtype = next(iter(grads.values())).dtype
        work, out = mu._a2a(chunks, recv, dtype, next(iter(grads.values())).device)
        works.append(work)

        def finish() -> None:
            parts: dict[str, dict[tuple[int, int], Tensor]] = defaultdict(dict)
            for src, (segment, ms) in enumerate(zip(out.split(recv), from_src)):
                for m, piece in zip(ms, segment.split([m.piece_numel(tp) for m in ms])):
                    parts[m.key][mu._coords[src]] = piece.view(m.piece_shape(tp))
            for m in mine:
                if m.key in mu.sharded_keys:  # kept in pieces: this rank's piece, summed over DP
                    copies = [parts[m.key][(d, mu._coords[me][1])] for d in range(g.dp_size)]
                    total = copies[0].clone()
                    for c in copies[1:]:  # data-parallel rank order
                        total += c
                    self.reduced[m.key] = total
                    continue
                columns = range(tp) if m.tp_dim is not None else [mu._coords[me][1]]
                pieces = []
                for t in columns:
                    copies = [parts[m.key][(d, t)] for d in range(g.dp_size)]
                    total = copies[0].clone()
                    for c in copies[1:]:  # data-parallel rank order
                        total += c
                    pieces.append(total)
                self.reduced[m.key] = mu._join(m, pieces)

        finishers.append(finish)

    # -- per step -------------------------------------------------------------------------
    def wait(self) -> None:
        """Finish every reduction started this step (after DDP's ``finish_grad_sync``)."""
        for handle in self._pending:
            handle.wait()
        self._pending = []

    def clear(self) -> None:
        """Forget this step's reduced gradients (with ``zero_grad``)."""
        self.wait()
        self.reduced.clear()
        if self.shards is not None:
            self.shards.clear()
