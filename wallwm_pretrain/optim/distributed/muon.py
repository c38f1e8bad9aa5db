"""Distributed Muon: each logical matrix is orthogonalised once, on its home rank.

Single-process Muon (``wallwm_pretrain.optim.muon``) run on every rank of a pipeline rank's DP x TP group does
the same Newton-Schulz work DP x TP times over and keeps DP copies of the momentum. Here every
logical matrix (a whole weight, or Q, K, V, gate, up of a fused one; see :mod:`.plan`)
has one home among the pipeline rank's ranks. Per step and bucket of matrices:

1. *to the home* (tensor-parallel pieces only): the ranks of the home's data-parallel replica
   send their pieces of the (already data-parallel-reduced) gradient to the home, which joins
   them along the partition dimension, undoing megatron's stride. Replicated matrices need no
   transfer: every rank holds the reduced gradient.
2. the home advances the momentum (kept only there, for the whole matrix), takes the Nesterov
   look-ahead and orthogonalises, batching same-shape matrices into one Newton-Schulz call;
3. *back*: the home sends every rank its piece of the result (all_to_all over the TP x DP group);
   each rank applies decoupled weight decay and the update scaled by the logical shape.

Both transfers are one ``all_to_all_single`` per bucket, started asynchronously so that the
transfer of bucket k+1 (to the home) and of bucket k-1 (back) run while bucket k is
orthogonalised.

With ``home_grads`` (``optim.muon_reduce=home``, gradients in megatron DDP buffers) step 1 is
gone: the gradients were reduced straight to their homes during backward
(:mod:`.home_reduce`). With ``defer_return`` step 3's transfers are left in flight when
:meth:`DistMuon.step` returns: a rank applies a bucket's update when something needs its
parameters (:meth:`DistMuon.finish_param_sync`, called by the forward pre-hooks of the modules
that hold them, by the next step, and before checkpoints), so the return overlaps the next
forward.

Every operation on matrix values is elementwise, a concatenation, or the same Newton-Schulz
arithmetic as single-process Muon, so in fp32 on CPU the result equals single-process Muon on
the same logical matrices bit for bit (tested; batched calls are used only where ATen's batched
and 2-D matmuls agree, see ``BATCH_MIN_SIDE``). The home's sum of the data-parallel copies is
the all-reduce's sum at DP = 2 (a + b); with more data-parallel ranks its order may differ. GPU batched kernels
may round differently from 2-D ones: there the equality is to rounding, not to the bit.

With ``tp_ns="sharded"`` (``optim.muon_tp_ns``) a tensor-parallel matrix split along its long
side by more than tp x its short side is not joined: the TP ranks at its home's data-parallel
index each keep their piece's momentum and orthogonalise together (:mod:`.sharded_ns`), so
steps 1 and 3 move only pieces within a TP column; equal to single-process Muon to rounding.

Modes: ``owner`` (above; momentum memory per rank ~ 1/(DP*TP) of the whole model's);
``gather`` (every rank all-gathers the TP pieces of the momentum update and orthogonalises every
matrix: the Moonlight-style baseline and today's TP-gathered behaviour, momentum kept per local
piece); ``local`` (each rank orthogonalises its own pieces, no communication: right for
replicated matrices, wrong for TP pieces; the negative control of the tests).

Trade-off: owner mode sends each rank the result for all its pieces (same volume as the
gradient all-reduce's all-gather half) and makes each step wait for the slowest home; the LPT
plan keeps the slowest home within 4/3 of the best possible assignment of the flops.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from wallwm_pretrain.optim.muon import adamw_rms_scale, apply_update, momentum_update, muon_defaults
from wallwm_pretrain.optim.newton_schulz import newton_schulz, resolve_ns_dtype
from wallwm_pretrain.optim.distributed.layout import FusedLayout
from wallwm_pretrain.optim.groups import OptimizerGroups
from wallwm_pretrain.optim.distributed.muon_state import MomentumState
from wallwm_pretrain.optim.distributed.plan import (
    DEFAULT_BUCKET_ELEMS,
    LogicalMatrix,
    assign_homes,
    bucketize,
    fingerprint,
    logical_matrices,
)
from wallwm_pretrain.optim.distributed.transfers import Pending, start_all_to_all
from wallwm_pretrain.optim.distributed.sharded_ns import TP_NS_MODES, keeps_pieces, sharded_newton_schulz
from wallwm_pretrain.optim.tp_matrices import restride, unstride

MODES = ("owner", "gather", "local")
# Same-shape matrices whose smaller side is below this are orthogonalised one at a time: ATen's
# CPU batched matmul sums tiny products (sides <= 11 measured) in another order than its 2-D
# matmul, which would break bit-equality with single-process Muon, and batching such small
# matrices saves nothing worth having.
BATCH_MIN_SIDE = 16


class DistMuon(MomentumState, torch.optim.Optimizer):
    """Muon over a pipeline rank's DP x TP ranks (see the module docstring).

    Every rank of the TP x DP group constructs it with its own pieces of the same parameters (same
    names, in the same order) and calls :meth:`step` together.

    Attributes:
        plan: the logical matrices in LPT order, with their homes.
        buckets: the plan cut into transfer units.
        ns_calls: Newton-Schulz orthogonalisations made on this rank, per logical matrix key.
        ns_batched: how many of them ran inside a batched (stacked) call.
        momentum: momentum buffers held by this rank, per logical matrix key.
    """

    def __init__(
        self,
        named_params: dict[str, Tensor],
        groups: OptimizerGroups,
        mode: str = "owner",
        fused: Optional[dict[str, FusedLayout]] = None,
        split_fused: bool = True,
        bucket_elems: int = DEFAULT_BUCKET_ELEMS,
        overlap: bool = True,
        grad_fn: Optional[Callable[[Tensor], Optional[Tensor]]] = None,
        home_grads: Optional[dict[str, Tensor]] = None,
        defer_return: bool = False,
        tp_ns: str = "gather",
        **hyper,
    ) -> None:
        """Create the optimizer (a collective over ``groups.tp_dp``: it checks the plan).

        Args:
            named_params: this rank's Muon parameters (2-D; TP pieces carry megatron's marks).
            groups: the pipeline rank's process groups and this rank's coordinates.
            mode: ``owner``, ``gather`` or ``local``.
            fused: fused row layouts by parameter name (:func:`.layout.fused_layouts`).
            split_fused: orthogonalise the logical matrices of fused weights separately.
            bucket_elems: elements per transfer bucket.
            overlap: start the next bucket's transfer before orthogonalising the current one.
            grad_fn: where a parameter's reduced gradient is (default ``p.grad``); a missing
                gradient counts as zero, as DDP's zeroed buffers do.
            home_grads: owner mode with reduce-to-home: the dict (filled by
                :class:`~.home_reduce.HomeReduce`) of whole reduced gradients of the matrices
                this rank is home of; ``None``: gradients are already reduced on every rank.
            defer_return: leave the return transfers in flight after :meth:`step` (owner mode);
                the caller must call :meth:`finish_param_sync` before parameters are read.
            tp_ns: owner mode with tensor parallelism: ``gather`` (the home joins the TP pieces
                and orthogonalises the whole matrix) or ``sharded`` (matrices for which
                :func:`~.sharded_ns.sharded_ns_saves_bytes` holds stay in pieces on the TP ranks
                at the home's data-parallel index, see :mod:`.sharded_ns`; to rounding, not to
                the bit, against single-process Muon) or ``sharded_all`` (every split matrix).
            hyper: Muon's hyper-parameters, the keyword arguments of
                :class:`~wallwm_pretrain.optim.muon.Muon` (``lr``, ``weight_decay``, ``momentum``,
                ``nesterov``, ``ns_steps``, ``ns_dtype``, ``ns_coefficients``, ``eps``,
                ``ns_norm_scale``), with the same defaults and checks (``muon_defaults``).

        Raises:
            ValueError: a bad hyper-parameter or mode, a parameter that is not 2-D, or ranks of
                the TP x DP group that computed different plans (different parameters or shapes).
        """
        if mode not in MODES:
            raise ValueError(f"distributed Muon mode must be one of {MODES}, got {mode!r}")
        if tp_ns not in TP_NS_MODES:
            raise ValueError(f"optim.muon_tp_ns must be one of {TP_NS_MODES}, got {tp_ns!r}")
        defaults = muon_defaults(**hyper)
        for name, p in named_params.items():
            if p.ndim != 2:
                raise ValueError(f"Muon only takes 2-D parameters, got {name} of shape {tuple(p.shape)}")
        super().__init__(list(named_params.values()), defaults)
        self.params = dict(named_params)
        self.groups = groups
        self.mode = mode
        self.split_fused = split_fused
        self.overlap = overlap
        self.fused = {n: f for n, f in (fused or {}).items() if n in self.params}
        self._grad_fn = grad_fn or (lambda p: p.grad)
        matrices = logical_matrices(self.params, self.fused, groups.tp_size, split_fused)
        self.plan = assign_homes(matrices, groups.tp_dp_size)
        self.buckets = bucketize(self.plan, bucket_elems)
        self.momentum: dict[str, Tensor] = {}
        self.home_grads = home_grads
        self.defer_return = defer_return and mode == "owner"
        self._returns: list[tuple[set[str], Pending]] = []  # in flight: (parameter names, transfer)
        self.ns_calls: Counter[str] = Counter()
        self.ns_batched = 0
        self._coords, self.tp_dp_rank = self._exchange_coordinates()
        self._rank_of = {c: r for r, c in enumerate(self._coords)}
        # matrices orthogonalised in their TP pieces (owner mode, optim.muon_tp_ns=sharded)
        self.tp_ns = tp_ns
        self.sharded_keys: frozenset[str] = frozenset(
            m.key for m in self.plan
            if mode == "owner" and keeps_pieces(tp_ns, m.rows, m.cols, m.tp_dim, groups.tp_size)
        )

    # -- layout -------------------------------------------------------------------------
    def _exchange_coordinates(self) -> tuple[list[tuple[int, int]], int]:
        g = self.groups
        mine = (g.dp_rank, g.tp_rank, fingerprint(self.plan))
        if g.tp_dp_size == 1:
            return [(g.dp_rank, g.tp_rank)], 0
        everyone: list = [None] * g.tp_dp_size
        dist.all_gather_object(everyone, mine, group=g.tp_dp)
        prints = {fp for _, _, fp in everyone}
        if len(prints) != 1:
            raise ValueError(
                f"distributed Muon: the {g.tp_dp_size} ranks of a TP x DP group computed {len(prints)} different "
                "ownership plans; they must hold the same parameter names and shapes"
            )
        coords = [(d, t) for d, t, _ in everyone]
        if sorted(coords) != sorted((d, t) for d in range(g.dp_size) for t in range(g.tp_size)):
            raise ValueError(f"TP x DP ranks do not cover dp {g.dp_size} x tp {g.tp_size} exactly once: {coords}")
        return coords, dist.get_rank(group=g.tp_dp)

    def holds(self, m: LogicalMatrix, rank: int) -> bool:
        """Whether TP x DP rank ``rank`` keeps ``m``'s momentum and orthogonalises it (its home,
        or for a sharded matrix every TP rank at the home's data-parallel index)."""
        if m.key in self.sharded_keys:
            return self._coords[rank][0] == self._coords[m.home][0]
        return rank == m.home

    def destination(self, m: LogicalMatrix, src: int) -> int:
        """The TP x DP rank that receives rank ``src``'s gradient piece of ``m``."""
        if m.key in self.sharded_keys:
            return self._rank_of[(self._coords[m.home][0], self._coords[src][1])]
        return m.home

    def _local(self, m: LogicalMatrix, t: Tensor) -> Tensor:
        """This rank's piece of ``m`` inside a tensor laid out like its parameter."""
        return t if m.part < 0 else self.fused[m.name].local.part(t, m.part)

    def _target(self, m: LogicalMatrix) -> Tensor:
        """Writable view of this rank's piece of ``m`` in the parameter."""
        p = self.params[m.name]
        return p if m.part < 0 else self.fused[m.name].local.part_view(p, m.part)

    def _cut(self, m: LogicalMatrix, full: Tensor, tp_rank: int) -> Tensor:
        if m.tp_dim is None:
            return full
        return restride(full, m.tp_dim, m.stride, tp_rank, self.groups.tp_size)

    def _join(self, m: LogicalMatrix, pieces: list[Tensor]) -> Tensor:
        return unstride(pieces, m.tp_dim, m.stride) if m.tp_dim is not None else pieces[0]

    def _ns(self, mats: list[Tensor], group: dict) -> list[Tensor]:
        """Orthogonalise ``mats``, one batched call per shape."""
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for i, x in enumerate(mats):
            by_shape[tuple(x.shape)].append(i)
        out: list[Optional[Tensor]] = [None] * len(mats)
        kw = dict(
            steps=group["ns_steps"],
            dtype=group["ns_dtype"],
            coefficients=group["ns_coefficients"],
            eps=group["eps"],
            norm_scale=group.get("ns_norm_scale", 1.0),
            gram=group.get("ns_gram", False),
        )
        for shape, idx in by_shape.items():
            if len(idx) == 1 or min(shape) < BATCH_MIN_SIDE:
                for i in idx:
                    out[i] = newton_schulz(mats[i], **kw)
            else:
                for i, o in zip(idx, newton_schulz(torch.stack([mats[i] for i in idx]), **kw)):
                    out[i] = o
                self.ns_batched += len(idx)
        return out  # type: ignore[return-value]

    def state_numel(self) -> int:
        """Elements of momentum held by this rank."""
        return sum(t.numel() for t in self.momentum.values())

    # -- step ---------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        """One Muon update of every parameter (a collective over the TP x DP group in owner/gather mode).

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.finish_param_sync()  # the previous step's updates land before this one starts
        group = self.param_groups[0]
        grads = {}
        for name, p in self.params.items():
            g = self._grad_fn(p)
            grads[name] = torch.zeros_like(p) if g is None else g
        # Weight decay with the unscaled lr, before any update lands: elementwise, so the order
        # against other matrices' updates cannot change a bit.
        for p in self.params.values():
            p.mul_(1.0 - group["lr"] * group["weight_decay"])
        if self.mode == "owner":
            self._step_owner(grads, group)
        elif self.mode == "gather":
            self._step_gather(grads, group)
        else:
            self._step_local(grads, group)
        return loss

    @torch.no_grad()
    def finish_param_sync(self, names: Optional[set[str]] = None) -> None:
        """Apply the updates still in flight (all, or those touching parameters ``names``)."""
        if not self._returns:
            return
        keep = []
        for touched, pending in self._returns:
            if names is None or touched & names:
                pending.result()
            else:
                keep.append((touched, pending))
        self._returns = keep

    @property
    def params_in_flight(self) -> set[str]:
        """Parameters whose update has not landed yet."""
        return {n for touched, _ in self._returns for n in touched}

    def _pipeline(self, start: Callable[[int], Pending], compute: Callable[[int, dict], Optional[Pending]]) -> None:
        """Run ``start`` (a transfer) one bucket ahead of ``compute`` when overlapping; a
        compute may return a transfer of its own, finished one bucket later (or, deferring,
        by :meth:`finish_param_sync`)."""
        n = len(self.buckets)
        started: list[Optional[Pending]] = [None] * n
        later: Optional[Pending] = None
        for k in range(n):
            if started[k] is None:
                started[k] = start(k)
            if self.overlap and k + 1 < n:
                started[k + 1] = start(k + 1)
            back = compute(k, started[k].result())  # type: ignore[union-attr]
            started[k] = None
            if self.defer_return:
                if back is not None:
                    self._returns.append(({m.name for m in self.buckets[k]}, back))
                continue
            if later is not None:
                later.result()
            later = back
            if not self.overlap and later is not None:
                later.result()
                later = None
        if later is not None:
            later.result()

    def _a2a(self, chunks_by_dst: list[list[Tensor]], recv_sizes: list[int], dtype: torch.dtype, device) -> tuple:
        """Start one all_to_all_single over the pipeline rank's ranks; returns (work, received segments)."""
        return start_all_to_all(chunks_by_dst, recv_sizes, dtype, device, self.groups.tp_dp)

    def _step_owner(self, grads: dict[str, Tensor], group: dict) -> None:
        g = self.groups
        me, my_dp, tp = self.tp_dp_rank, g.dp_rank, g.tp_size
        device = next(iter(self.params.values())).device if self.params else torch.device("cpu")
        grad_dtype = torch.float32
        if grads:
            grad_dtype = next(iter(grads.values())).dtype
        ns_dtype = resolve_ns_dtype(group["ns_dtype"])
        lr, mu, nesterov = group["lr"], group["momentum"], group["nesterov"]

        pieces_kept = self.sharded_keys

        def to_home(k: int) -> Pending:
            bucket = self.buckets[k]
            owned = [m for m in bucket if self.holds(m, me)]
            if self.home_grads is not None:  # reduced to this home during backward
                reduced = self.home_grads
                return Pending(None, lambda: {
                    m.key: reduced[m.key] if m.key in reduced
                    else torch.zeros(m.piece_shape(tp) if m.key in pieces_kept else (m.rows, m.cols),
                                     dtype=grad_dtype, device=device)  # no gradient: zero
                    for m in owned
                })
            sharded_owned = [m for m in owned if m.tp_dim is not None and m.key not in pieces_kept]
            local = {m.key: self._local(m, grads[m.name]) for m in owned
                     if m.tp_dim is None or m.key in pieces_kept}
            if tp == 1 or g.tp_dp_size == 1 or not any(m.tp_dim is not None and m.key not in pieces_kept for m in bucket):
                return Pending(None, lambda: local)
            # Pieces travel from the home's own data-parallel replica (its TP peers).
            chunks = [
                [self._local(m, grads[m.name]) for m in bucket
                 if m.tp_dim is not None and m.key not in pieces_kept and m.home == dst
                 and self._coords[dst][0] == my_dp]
                for dst in range(g.tp_dp_size)
            ]
            per_src = sum(m.piece_numel(tp) for m in sharded_owned)
            recv = [per_src if self._coords[src][0] == my_dp else 0 for src in range(g.tp_dp_size)]
            work, out = self._a2a(chunks, recv, grad_dtype, device)

            def finish() -> dict:
                segments = out.split(recv)
                split_sizes = [m.piece_numel(tp) for m in sharded_owned]
                by_src = {src: segments[src].split(split_sizes) for src in range(g.tp_dp_size) if recv[src]}
                full = dict(local)
                for i, m in enumerate(sharded_owned):
                    pieces = [by_src[self._rank_of[(my_dp, t)]][i].view(m.piece_shape(tp)) for t in range(tp)]
                    full[m.key] = self._join(m, pieces)
                return full

            return Pending(work, finish)

        def orthogonalise_and_send(k: int, full: dict) -> Pending:
            bucket = self.buckets[k]
            owned = [m for m in bucket if self.holds(m, me)]
            updates = {}
            for m in owned:
                grad = full[m.key]
                if m.key not in self.momentum:
                    self.momentum[m.key] = torch.zeros_like(grad, memory_format=torch.contiguous_format)
                updates[m.key] = momentum_update(self.momentum[m.key], grad, mu, nesterov)
            whole = [m for m in owned if m.key not in pieces_kept]
            split = [m for m in owned if m.key in pieces_kept]
            orthos = dict(zip((m.key for m in whole), self._ns([updates[m.key] for m in whole], group)))
            if split:  # a collective over this TP group: its ranks hold the same split matrices
                orthos.update(zip((m.key for m in split), sharded_newton_schulz(
                    [updates[m.key] for m in split], [m.tp_dim for m in split], g.tp,
                    steps=group["ns_steps"], dtype=group["ns_dtype"], coefficients=group["ns_coefficients"],
                    eps=group["eps"], norm_scale=group.get("ns_norm_scale", 1.0),
                )))
            self.ns_calls.update(m.key for m in owned)

            def apply(pieces: dict[str, Tensor]) -> dict:
                for m in bucket:
                    apply_update(self._target(m), pieces[m.key], lr, adamw_rms_scale(m.rows, m.cols))
                return {}

            if g.tp_dp_size == 1:
                return Pending(None, lambda: apply(orthos))
            my_tp = self._coords[me][1]
            chunks = [
                [orthos[m.key] if m.key in pieces_kept else self._cut(m, orthos[m.key], self._coords[dst][1])
                 for m in owned if m.key not in pieces_kept or self._coords[dst][1] == my_tp]
                for dst in range(g.tp_dp_size)
            ]
            # what TP x DP rank src sends this rank: its home matrices, and its pieces of split ones
            from_src = [
                [m for m in bucket
                 if self.holds(m, src) and (m.key not in pieces_kept or self._coords[src][1] == my_tp)]
                for src in range(g.tp_dp_size)
            ]
            recv = [sum(m.piece_numel(tp) for m in ms) for ms in from_src]
            work, out = self._a2a(chunks, recv, ns_dtype, device)

            def finish() -> dict:
                segments = out.split(recv)
                pieces = {}
                for src in range(g.tp_dp_size):
                    mine = from_src[src]
                    for m, piece in zip(mine, segments[src].split([m.piece_numel(tp) for m in mine])):
                        pieces[m.key] = piece
                return apply(pieces)

            return Pending(work, finish)

        self._pipeline(to_home, orthogonalise_and_send)

    def _piece_updates(self, bucket: list[LogicalMatrix], grads: dict[str, Tensor], group: dict) -> dict[str, Tensor]:
        """Momentum on this rank's pieces (gather/local modes): piece-wise, as today's Muon."""
        out = {}
        for m in bucket:
            grad = self._local(m, grads[m.name])
            if m.key not in self.momentum:
                self.momentum[m.key] = torch.zeros_like(grad, memory_format=torch.contiguous_format)
            out[m.key] = momentum_update(self.momentum[m.key], grad, group["momentum"], group["nesterov"])
        return out

    def _step_gather(self, grads: dict[str, Tensor], group: dict) -> None:
        g = self.groups
        tp = g.tp_size

        def gather(k: int) -> Pending:
            bucket = self.buckets[k]
            updates = self._piece_updates(bucket, grads, group)
            sharded = [m for m in bucket if m.tp_dim is not None]
            if tp == 1 or not sharded:
                return Pending(None, lambda: updates)
            flat = torch.cat([updates[m.key].reshape(-1) for m in sharded])
            slots = [torch.empty_like(flat) for _ in range(tp)]
            work = dist.all_gather(slots, flat, group=g.tp, async_op=True)

            def finish() -> dict:
                sizes = [m.piece_numel(tp) for m in sharded]
                parts = [s.split(sizes) for s in slots]
                full = dict(updates)
                for i, m in enumerate(sharded):
                    full[m.key] = self._join(m, [parts[t][i].view(m.piece_shape(tp)) for t in range(tp)])
                return full

            return Pending(work, finish)

        def orthogonalise(k: int, full: dict) -> None:
            bucket = self.buckets[k]
            orthos = self._ns([full[m.key] for m in bucket], group)
            self.ns_calls.update(m.key for m in bucket)
            for m, o in zip(bucket, orthos):
                apply_update(self._target(m), self._cut(m, o, g.tp_rank), group["lr"], adamw_rms_scale(m.rows, m.cols))
            return None

        self._pipeline(gather, orthogonalise)

    def _step_local(self, grads: dict[str, Tensor], group: dict) -> None:
        for bucket in self.buckets:
            updates = self._piece_updates(bucket, grads, group)
            orthos = self._ns([updates[m.key] for m in bucket], group)
            self.ns_calls.update(m.key for m in bucket)
            for m, o in zip(bucket, orthos):
                # Scaled by the piece's own shape: this mode knows nothing beyond its pieces.
                apply_update(self._target(m), o, group["lr"], adamw_rms_scale(*o.shape))
