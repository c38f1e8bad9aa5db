"""AdamW for the non-matrix parameters of distributed Muon, with state sharded over DP (ZeRO-1).

Embeddings, heads, norms and biases are few elements but AdamW keeps two buffers per element.
Each AdamW param group's parameters are laid end to end in a flat index space of N elements,
cut into ``dp`` equal contiguous shards (the last padded); data-parallel rank r keeps the AdamW
state of shard r only, updates that shard with ``torch.optim.AdamW`` (the same elementwise code
as a single process, hence bit-identical results), and an all-gather over the data-parallel
group gives every rank all updated parameters. Tensor-parallel pieces of such parameters (a
vocab-parallel embedding, column-parallel biases) are sharded over the ranks that hold the same
piece, so nothing crosses tensor-parallel ranks.

Gradients reach the shard in one of two ways. By default the optimizer reads each parameter's
reduced gradient (all-reduced by the data-parallel wrapper) and copies the shard's part: the
all-reduce plus the all-gather move 1.5x the all-reduce bound. With :attr:`ZeroAdamW.scattered`
set (``optim.muon_reduce=home`` on megatron DDP buffers, see :mod:`.shard_reduce`) the
gradients were reduce-scattered straight into :attr:`_FlatGroup.value`'s ``grad`` while
backward ran, and the step reads nothing else: reduce-scatter plus all-gather, the bound.

Trade-off: every step copies the parameters (and, without the reduce-scatter, the gradients)
of the shard into flat buffers and all-gathers the parameters (one extra copy of these small
tensors), in exchange for 1/dp of the AdamW state per rank.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from wallwm_pretrain.optim.tp_matrices import is_tp_sharded, unstride


def _layout(p: Tensor, tp: int) -> dict:
    sharded = tp > 1 and is_tp_sharded(p)
    return {
        "shape": list(p.shape),
        "dim": int(p.partition_dim) if sharded else None,
        "stride": int(getattr(p, "partition_stride", 1)) if sharded else 1,
    }


class _FlatGroup:
    """One AdamW param group laid out flat, and this rank's shard of it."""

    def __init__(self, names: list[str], params: list[Tensor], dp_rank: int, dp_size: int) -> None:
        self.names, self.params = names, params
        self.sizes = [p.numel() for p in params]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(params))]
        self.total = sum(self.sizes)
        self.shard = max(1, math.ceil(self.total / dp_size))
        self.lo = min(self.total, dp_rank * self.shard)
        self.hi = min(self.total, self.lo + self.shard)
        ref = params[0]
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1:
            raise ValueError(f"AdamW group of {names[:3]}...: parameters must share one dtype, got {dtypes}")
        self.value = torch.zeros(self.shard, dtype=ref.dtype, device=ref.device)
        self.value.grad = torch.zeros_like(self.value)

    def bounds(self, dp_rank: int) -> tuple[int, int]:
        """The flat range ``[lo, hi)`` whose state data-parallel rank ``dp_rank`` keeps."""
        lo = min(self.total, dp_rank * self.shard)
        return lo, min(self.total, lo + self.shard)

    def overlaps(self):
        """(param index, start in the param, start in the shard, length) within [lo, hi)."""
        for i, (off, n) in enumerate(zip(self.offsets, self.sizes)):
            a, b = max(off, self.lo), min(off + n, self.hi)
            if a < b:
                yield i, a - off, a - self.lo, b - a

    def load_shard(self, grads: list[Optional[Tensor]]) -> None:
        """Copy the shard's parameter values and gradients (missing = zero) into flat buffers."""
        self.value.grad.zero_()
        for i, src, dst, n in self.overlaps():
            self.value[dst : dst + n].copy_(self.params[i].detach().reshape(-1)[src : src + n])
            g = grads[i]
            if g is not None:
                self.value.grad[dst : dst + n].copy_(g.reshape(-1)[src : src + n])

    def load_values(self) -> None:
        """Copy the shard's parameter values into the flat buffer (its gradient is left as is)."""
        for i, src, dst, n in self.overlaps():
            self.value[dst : dst + n].copy_(self.params[i].detach().reshape(-1)[src : src + n])

    def flat_of(self, tensors: list[Tensor]) -> Tensor:
        """This rank's shard (padded) of per-parameter tensors laid out like the params."""
        out = torch.zeros_like(self.value)
        for i, src, dst, n in self.overlaps():
            out[dst : dst + n].copy_(tensors[i].reshape(-1)[src : src + n])
        return out


class ZeroAdamW:
    """AdamW whose state is split over data-parallel ranks (see the module docstring).

    Attributes:
        inner: the ``torch.optim.AdamW`` over this rank's flat shards (one param group per
            AdamW group; schedulers attach to it).
        scattered: the shards' gradients arrive reduced in the flat buffers (set by
            :class:`~.shard_reduce.ShardReduce`); otherwise the step copies them from the
            parameters' reduced gradients.
    """

    def __init__(
        self,
        named_params: dict[str, Tensor],
        groups: list[tuple[list[str], float]],
        lr: float,
        betas: tuple[float, float],
        eps: float,
        dp_group: Optional[dist.ProcessGroup],
        dp_rank: int,
        dp_size: int,
        tp_size: int = 1,
        tp_rank: int = 0,
        pp_rank: int = 0,
        grad_fn: Optional[Callable[[Tensor], Optional[Tensor]]] = None,
    ) -> None:
        """Create the optimizer.

        Args:
            named_params: this rank's AdamW parameters by name.
            groups: ``(names, weight_decay)`` per param group; empty groups are skipped, as in
                ``OptimizerSet``.
            lr, betas, eps: AdamW hyper-parameters.
            dp_group, dp_rank, dp_size: the data-parallel group and this rank's place in it.
            tp_size, tp_rank, pp_rank: recorded for rebuilding whole tensors from the state.
            grad_fn: where a parameter's reduced gradient is (default ``p.grad``).
        """
        self.dp_group, self.dp_rank, self.dp_size = dp_group, dp_rank, dp_size
        self.tp_size, self.tp_rank, self.pp_rank = tp_size, tp_rank, pp_rank
        self._grad_fn = grad_fn or (lambda p: p.grad)
        self.flat = [
            _FlatGroup(names, [named_params[n] for n in names], dp_rank, dp_size) for names, _ in groups if names
        ]
        decays = [wd for names, wd in groups if names]
        self.inner = torch.optim.AdamW(
            [{"params": [f.value], "weight_decay": wd} for f, wd in zip(self.flat, decays)],
            lr=lr,
            betas=betas,
            eps=eps,
        )
        self.layouts = {n: _layout(p, tp_size) for f in self.flat for n, p in zip(f.names, f.params)}
        self.scattered = False

    @torch.no_grad()
    def step(self) -> None:
        """Update this rank's shards, then all-gather the parameters over data parallel."""
        for f in self.flat:
            if self.scattered:
                f.load_values()
            else:
                f.load_shard([self._grad_fn(p) for p in f.params])
        self.inner.step()
        for f in self.flat:
            if self.dp_size > 1:
                slots = [torch.empty_like(f.value) for _ in range(self.dp_size)]
                dist.all_gather(slots, f.value, group=self.dp_group)
                full = torch.cat(slots)
            else:
                full = f.value
            for p, off, n in zip(f.params, f.offsets, f.sizes):
                p.detach().view(-1).copy_(full[off : off + n])

    def state_numel(self) -> int:
        """Elements of AdamW state held by this rank."""
        return sum(t.numel() for s in self.inner.state.values() for t in s.values() if t.ndim > 0)

    def sharded_state(self) -> dict:
        """This rank's AdamW shards with the layout to rebuild whole tensors (no comm)."""
        groups = []
        for f in self.flat:
            st = self.inner.state.get(f.value, {})
            groups.append(
                {
                    "names": list(f.names),
                    "lo": f.lo,
                    "hi": f.hi,
                    "total": f.total,
                    "step": float(st["step"]) if "step" in st else None,
                    "exp_avg": st["exp_avg"][: f.hi - f.lo].to("cpu", copy=True) if st else None,
                    "exp_avg_sq": st["exp_avg_sq"][: f.hi - f.lo].to("cpu", copy=True) if st else None,
                }
            )
        return {
            "tp_rank": self.tp_rank,
            "tp_size": self.tp_size,
            "dp_rank": self.dp_rank,
            "pp_rank": self.pp_rank,
            "layouts": self.layouts,
            "groups": groups,
        }

    def load_sharded_state(self, state: dict) -> None:
        """Reload :meth:`sharded_state` of this rank under the same layout.

        Raises:
            ValueError: shards cut differently (another data-parallel size or parameter set).
        """
        self.inner.state.clear()
        for f, g in zip(self.flat, state["groups"]):
            if (g["names"], g["lo"], g["hi"]) != (f.names, f.lo, f.hi):
                raise ValueError(
                    f"AdamW shard [{g['lo']}, {g['hi']}) of {len(g['names'])} parameters does not match this "
                    f"rank's [{f.lo}, {f.hi}) of {len(f.names)}; load a checkpoint instead"
                )
            if g["exp_avg"] is None:
                continue
            pad = torch.zeros_like(f.value)
            n = f.hi - f.lo
            self.inner.state[f.value] = {
                "step": torch.tensor(g["step"], dtype=torch.float32),
                "exp_avg": pad.clone().index_copy_(0, torch.arange(n, device=pad.device), g["exp_avg"].to(pad)),
                "exp_avg_sq": pad.clone().index_copy_(0, torch.arange(n, device=pad.device), g["exp_avg_sq"].to(pad)),
            }


def merge_adamw_state(states: list[dict]) -> dict[str, dict[str, Tensor]]:
    """Whole (TP=1 layout) AdamW state per parameter from every rank's :meth:`ZeroAdamW.sharded_state`.

    Args:
        states: the sharded states of all ranks of all pipeline ranks (any order).

    Returns:
        ``{name: {"step": tensor, "exp_avg": ..., "exp_avg_sq": ...}}`` for groups with state.

    Raises:
        ValueError: shards that do not cover a group.
    """
    by_piece: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for s in states:
        by_piece[(s["pp_rank"], s["tp_rank"])].append(s)
    local: dict[str, dict[int, dict[str, Tensor]]] = defaultdict(dict)  # name -> tp rank -> state
    layouts: dict[str, dict] = {}
    steps: dict[str, float] = {}
    for (pp, tp_rank), shards in by_piece.items():
        shards = sorted(shards, key=lambda s: s["dp_rank"])
        layouts.update(shards[0]["layouts"])
        for gi, g0 in enumerate(shards[0]["groups"]):
            parts = [s["groups"][gi] for s in shards]
            if any(p["exp_avg"] is None for p in parts):
                continue
            covered = sorted((p["lo"], p["hi"]) for p in parts)
            ends = [lo for lo, _ in covered[1:]] == [hi for _, hi in covered[:-1]]
            if covered[0][0] != 0 or covered[-1][1] != g0["total"] or not ends:
                raise ValueError(f"AdamW shards of group {g0['names'][:3]}... cover {covered}, not [0, {g0['total']})")
            flat = {key: torch.cat([p[key] for p in sorted(parts, key=lambda p: p["lo"])]) for key in ("exp_avg", "exp_avg_sq")}
            off = 0
            for name in g0["names"]:
                shape = layouts[name]["shape"]
                n = math.prod(shape)
                local[name][tp_rank] = {k: v[off : off + n].view(shape) for k, v in flat.items()}
                steps[name] = g0["step"]
                off += n
    whole: dict[str, dict[str, Tensor]] = {}
    for name, per_tp in local.items():
        lay = layouts[name]
        out = {"step": torch.tensor(steps[name], dtype=torch.float32)}
        for key in ("exp_avg", "exp_avg_sq"):
            if lay["dim"] is None:
                out[key] = per_tp[min(per_tp)][key].clone()
            else:
                out[key] = unstride([per_tp[t][key] for t in sorted(per_tp)], lay["dim"], lay["stride"])
        whole[name] = out
    return whole
