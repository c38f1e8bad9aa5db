"""One rank of a distributed-Muon proof run, and the launcher that starts a gloo group of them.

The model is a set of real megatron-core modules built at the run's TP size (so the partition
layout is megatron's own): per block a grouped-query self-attention (fused QKV, 4 heads in 2
query groups), a cross-attention (fused KV), a gated FFN (fc1 with stride 2) and a LayerNorm;
plus odd-sized column- and row-parallel linears (with biases), a replicated ``nn.Linear`` and an
embedding marked ``use_adamw``. Pipeline parallel is simulated: stage 0 builds the embedding and
block 0, stage 1 block 1 and the odd layers; megatron's own PP groups separate the stages.

Weights and gradients do not come from a forward pass: every parameter's whole (TP=1) value
and its gradient at each step are drawn from a generator seeded by name and step, and each rank
keeps its slice (cut here independently of the code under test). Every data-parallel rank sees
the same gradients, as after the data-parallel reduction.
"""

from __future__ import annotations

import copy
import os
import sys
import time
import warnings
import zlib
from pathlib import Path

from dataclasses import replace

import torch

warnings.filterwarnings("ignore")

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import torch.nn.functional as F  # noqa: E402
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear  # noqa: E402
from megatron.core.transformer.attention import (  # noqa: E402
    CrossAttention,
    CrossAttentionSubmodules,
    SelfAttention,
    SelfAttentionSubmodules,
)
from megatron.core.transformer.dot_product_attention import DotProductAttention  # noqa: E402
from megatron.core.transformer.enums import AttnMaskType  # noqa: E402
from megatron.core.transformer.identity_op import IdentityOp  # noqa: E402
from megatron.core.transformer.mlp import MLP, MLPSubmodules  # noqa: E402
from megatron.core.transformer.transformer_config import TransformerConfig  # noqa: E402
from torch import nn  # noqa: E402

from wallwm_pretrain.checkpoint.optim import as_source, gather_whole_state, optimizer_pieces  # noqa: E402
from wallwm_pretrain.config import OptimConfig  # noqa: E402
from wallwm_pretrain.optim import ReplicatedOptimizerSet, build_optimizer, split_parameters  # noqa: E402
from wallwm_pretrain.optim.distributed.layout import fused_layouts  # noqa: E402
from wallwm_pretrain.optim.distributed.optimizer_set import DistributedOptimizerSet  # noqa: E402
from wallwm_pretrain.parallel import init_parallel, shutdown_parallel  # noqa: E402
from wallwm_pretrain.parallel.state import optimizer_groups  # noqa: E402

HIDDEN, HEADS, GROUPS, FFN = 24, 4, 2, 36
STEPS = 10
OPTIM = OptimConfig(lr=0.02, adamw_lr=0.003, weight_decay=0.01, warmup_steps=1, min_lr_ratio=0.1, grad_clip=0.0)
BUCKET_ELEMS = 2000  # several buckets, so transfers of one overlap the work of another


def _config(gqa: bool):
    return TransformerConfig(
        num_layers=2,
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        num_query_groups=GROUPS if gqa else None,
        ffn_hidden_size=FFN,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        use_cpu_initialization=True,
        params_dtype=torch.float32,
    )


class Block(nn.Module):
    def __init__(self, layer: int) -> None:
        super().__init__()
        self.self_attn = SelfAttention(
            _config(gqa=True),
            SelfAttentionSubmodules(
                linear_qkv=ColumnParallelLinear,
                core_attention=DotProductAttention,
                linear_proj=RowParallelLinear,
                q_layernorm=IdentityOp,
                k_layernorm=IdentityOp,
            ),
            layer_number=layer,
            attn_mask_type=AttnMaskType.padding,
        )
        self.cross_attn = CrossAttention(
            _config(gqa=False),
            CrossAttentionSubmodules(
                linear_q=ColumnParallelLinear,
                linear_kv=ColumnParallelLinear,
                core_attention=DotProductAttention,
                linear_proj=RowParallelLinear,
            ),
            layer_number=layer,
            attn_mask_type=AttnMaskType.padding,
        )
        self.ffn = MLP(_config(gqa=False), MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear))
        self.norm = nn.LayerNorm(HIDDEN)


class Odd(nn.Module):
    """Odd sizes: a wide and a tall column-parallel weight, a row-parallel one, a replicated one."""

    def __init__(self) -> None:
        super().__init__()
        cfg = _config(gqa=False)
        init = cfg.init_method
        self.col = ColumnParallelLinear(37, 22, config=cfg, init_method=init, bias=True, gather_output=False)
        self.tall = ColumnParallelLinear(5, 34, config=cfg, init_method=init, bias=False, gather_output=False)
        self.row = RowParallelLinear(26, 13, config=cfg, init_method=init, bias=True, input_is_parallel=True, skip_bias_add=False)
        self.rep = nn.Linear(13, 7)


class Net(nn.Module):
    def __init__(self, stages: tuple[int, ...]) -> None:
        super().__init__()
        if 0 in stages:
            self.emb = nn.Embedding(11, HIDDEN)
            self.emb.weight.use_adamw = True
            self.block0 = Block(1)
        if 1 in stages:
            self.block1 = Block(2)
            self.odd = Odd()


# -- slicing, written independently of wallwm_pretrain.optim.tp_matrices ------------------
def layout_of(p: torch.Tensor, tp: int) -> dict:
    sharded = tp > 1 and bool(getattr(p, "tensor_model_parallel", False))
    return {
        "sharded": sharded,
        "dim": int(p.partition_dim) if sharded else -1,
        "stride": int(getattr(p, "partition_stride", 1)) if sharded else 1,
    }


def whole_shape(p: torch.Tensor, layout: dict, tp: int) -> tuple[int, ...]:
    shape = list(p.shape)
    if layout["sharded"]:
        shape[layout["dim"]] *= tp
    return tuple(shape)


def cut(full: torch.Tensor, layout: dict, tp_rank: int, tp: int) -> torch.Tensor:
    """Rank tp_rank's slice: of the stride * tp equal pieces, those numbered tp_rank mod tp."""
    if not layout["sharded"]:
        return full.clone()
    pieces = full.chunk(layout["stride"] * tp, layout["dim"])
    return torch.cat(pieces[tp_rank::tp], layout["dim"]).clone()


def join(slices: list[torch.Tensor], layout: dict) -> torch.Tensor:
    """Inverse of :func:`cut` from the slices of TP ranks 0..tp-1."""
    if not layout["sharded"] or len(slices) == 1:
        return slices[0]
    tp, stride, dim = len(slices), layout["stride"], layout["dim"]
    pieces = [s.chunk(stride, dim) for s in slices]
    return torch.cat([pieces[i % tp][i // tp] for i in range(stride * tp)], dim)


def drawn(name: str, shape: tuple[int, ...], step: int) -> torch.Tensor:
    """Whole value (step -1) or whole gradient at ``step`` of parameter ``name``."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()) * 1009 + step + 1)
    x = torch.randn(shape, generator=g)
    return 0.1 * x if step < 0 else x


# -- one rank -------------------------------------------------------------------------------
def _stages(pp: int, pp_rank: int) -> tuple[int, ...]:
    return (0, 1) if pp == 1 else (pp_rank,)


def _build(tp: int, pp_rank: int, pp: int, tp_rank: int, values: dict | None):
    torch.manual_seed(0)
    net = Net(_stages(pp, pp_rank))
    layouts = {n: layout_of(p, tp) for n, p in net.named_parameters()}
    with torch.no_grad():
        for n, p in net.named_parameters():
            full = values[n] if values is not None else drawn(n, whole_shape(p, layouts[n], tp), -1)
            p.copy_(cut(full, layouts[n], tp_rank, tp))
    return net, layouts


def _set_grads(net: nn.Module, layouts: dict, tp: int, tp_rank: int, step: int) -> None:
    for n, p in net.named_parameters():
        p.grad = cut(drawn(n, whole_shape(p, layouts[n], tp), step), layouts[n], tp_rank, tp)


def _snapshot(net: nn.Module) -> dict:
    return {n: p.detach().clone() for n, p in net.named_parameters()}


def reference(options: dict) -> dict:
    """Single-process Muon (Q/K/V, gate/up, K/V split) + AdamW, all stages in one model."""
    values = torch.load(options["load"] + "/model.pt") if options.get("load") else None
    net, layouts = _build(1, 0, 1, 0, values)
    fused = {n: f.whole for n, f in fused_layouts(net, 1).items()} if options.get("split_fused", True) else None
    opt = ReplicatedOptimizerSet(dict(net.named_parameters()), split_parameters(net), OPTIM, STEPS, "float32",
                                 fused=fused)
    record = {"init": _snapshot(net), "layout": layouts, "norms": [], "fused": sorted(fused or {})}
    record["fused_rows"] = {n: (f.names, f.sizes, f.groups) for n, f in (fused or {}).items()}
    if options.get("load"):
        opt.load_state_dict(torch.load(options["load"] + "/optim.pt", weights_only=False))
    start, end = options.get("start", 0), options.get("end", STEPS)
    for step in range(start, end):
        _set_grads(net, layouts, 1, 0, step)
        record["norms"].append(opt.clip_grad_norm(0.0))
        opt.step()
        opt.zero_grad()
        if step + 1 == options.get("save_at"):
            record["state_at_save"] = copy.deepcopy(opt.state_dict())  # live tensors otherwise
            record["at_save"] = _snapshot(net)
    record["final"] = _snapshot(net)
    record["ns_calls"] = opt.optimizers["muon"].ns_calls
    return record


def distributed(ctx, options: dict) -> dict:
    """The distributed set on this rank's slices, optionally resumed from / saved to canonical files."""
    groups = optimizer_groups(ctx)
    values = torch.load(options["load"] + "/model.pt") if options.get("load") else None
    net, layouts = _build(ctx.tp, ctx.pp_rank, ctx.pp, ctx.tp_rank, values)
    if options.get("ddp"):
        return _with_ddp(ctx, net, layouts, options)
    opt = DistributedOptimizerSet(
        dict(net.named_parameters()),
        split_parameters(net),
        OPTIM,
        STEPS,
        "float32",
        groups,
        mode=options.get("mode", "owner"),
        fused=fused_layouts(net, ctx.tp),
        split_fused=options.get("split_fused", True),
        bucket_elems=options.get("bucket_elems", BUCKET_ELEMS),
        overlap=options.get("overlap", True),
        tp_ns=options.get("tp_ns", "gather"),
    )
    if options.get("load"):
        optimizer_pieces(opt).load(*as_source(torch.load(options["load"] + "/optim.pt", weights_only=False)))
    record = {"init": _snapshot(net), "layout": layouts, "norms": [], "step_s": []}
    record["plan"] = {m.key: m.home for m in opt.muon.plan} if opt.muon else {}
    record["buckets"] = len(opt.muon.buckets) if opt.muon else 0
    start, end = options.get("start", 0), options.get("end", STEPS)
    for step in range(start, end):
        _set_grads(net, layouts, ctx.tp, ctx.tp_rank, step)
        record["norms"].append(opt.clip_grad_norm(0.0))
        t0 = time.perf_counter()
        opt.step()
        record["step_s"].append(time.perf_counter() - t0)
        opt.zero_grad()
        if step == 0:
            record["after_first"] = _snapshot(net)
    record["final"] = _snapshot(net)
    record["ns_calls"] = opt.ns_calls
    record["ns_batched"] = opt.muon.ns_batched if opt.muon else 0
    record["state_numel"] = opt.state_numel()
    record["stage_rank"] = opt.muon.tp_dp_rank if opt.muon else 0
    if options.get("save"):
        canonical = gather_whole_state(opt)
        if ctx.rank == 0:
            torch.save(canonical, options["save"] + "/optim.pt")
        record["shard"] = opt.state_dict()
    if options.get("reload_shard"):
        # same-layout reload of this rank's own share: the next step must not change
        again = opt.state_dict()
        opt.load_state_dict(again)
        record["reloaded_equal"] = _same(again, opt.state_dict())
    return record


def _with_ddp(ctx, net: nn.Module, layouts: dict, options: dict) -> dict:
    """The trainer's path: megatron DDP buffers (``main_grad``), built by the public builder.

    ``reduce`` picks ``optim.muon_reduce``: ``home`` (Muon gradients reduced to their homes
    inside DDP's bucket sync, updates landing before each module's next forward) or
    ``all_reduce`` (every gradient all-reduced, updates applied within the step)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp = DistributedDataParallel(_config(gqa=False), DistributedDataParallelConfig(use_distributed_optimizer=False), net)
    cfg = replace(OPTIM, muon_mode=options.get("mode", "owner"), muon_bucket_elems=BUCKET_ELEMS,
                  muon_reduce=options.get("reduce", "home"), grad_clip=options.get("grad_clip", 0.0),
                  muon_tp_ns=options.get("tp_ns", "gather"))
    opt = build_optimizer(net, cfg, STEPS, optimizer_groups(ctx), grad_buffers=[ddp], device_type="cpu")
    if options.get("load"):
        optimizer_pieces(opt).load(*as_source(torch.load(options["load"] + "/optim.pt", weights_only=False)))
    record = {"init": _snapshot(net), "layout": layouts, "norms": []}
    start, end = options.get("start", 0), options.get("end", STEPS)
    for step in range(start, end):
        # every data-parallel rank holds the same gradient; DDP scales by 1/dp and the reduction
        # sums, which at dp = 2 gives back exactly that gradient
        for n, p in net.named_parameters():
            p.main_grad.copy_(cut(drawn(n, whole_shape(p, layouts[n], ctx.tp), step), layouts[n], ctx.tp_rank, ctx.tp))
        counting = options.get("count_bytes") and step == start + 1
        if counting:  # this whole step: reductions, norm, update and its return
            counter = _collective_bytes()
            counter.install()
            window = counter.window()
            window.__enter__()
        record["norms"].append(opt.clip_grad_norm(cfg.grad_clip))
        if step == start:  # what the buffers hold once DDP's bucket sync is done
            muon = set(opt.split.muon)
            record["buffers"] = {
                n: "reduced" if torch.equal(p.main_grad, g) else "local" if torch.equal(p.main_grad, g / ctx.dp) else "other"
                for n, p in net.named_parameters()
                for g in [cut(drawn(n, whole_shape(p, layouts[n], ctx.tp), step), layouts[n], ctx.tp_rank, ctx.tp)]
            }
            record["muon_names"] = sorted(muon)
        opt.step()
        if counting:
            opt.finish_param_sync()
            window.__exit__(None, None, None)
            counter.uninstall()
            record["bytes"] = {"sent": counter.sent, "received": counter.received,
                               "grad": sum(p.numel() * p.element_size() for p in net.parameters())}
        if step == start and hasattr(net, "odd"):
            record.update(_forward_lands_the_update(opt, net))
        opt.zero_grad()
        assert all(float(p.main_grad.abs().sum()) == 0 for p in net.parameters())
    opt.finish_param_sync()
    record["final"] = _snapshot(net)
    record["ns_calls"] = opt.ns_calls
    record["home_reduce"] = opt.home is not None
    record["sharded_keys"] = sorted(opt.muon.sharded_keys) if opt.muon else []
    if options.get("save"):
        canonical = gather_whole_state(opt)
        if ctx.rank == 0:
            torch.save(canonical, options["save"] + "/optim.pt")
    return record


def _collective_bytes():
    """The byte counter of ``bench/collective_bytes.py`` (wraps the ``torch.distributed`` calls)."""
    bench = str(HERE.parents[1] / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    from collective_bytes import CollectiveBytes

    return CollectiveBytes()


def _forward_lands_the_update(opt, net: nn.Module) -> dict:
    """Right after a step: which updates are still in flight, and whether a module's forward
    (its pre-hook) lands its own and only its own."""
    module, name = net.odd.rep, "odd.rep.weight"
    flight = opt.muon.params_in_flight if opt.muon is not None else set()
    before = module.weight.detach().clone()
    module(torch.zeros(1, module.in_features))
    after_forward = module.weight.detach().clone()
    left = opt.muon.params_in_flight if opt.muon is not None else set()
    opt.finish_param_sync()
    return {
        "in_flight": sorted(flight),
        "in_flight_after_forward": sorted(left),
        "forward_changed_weight": not torch.equal(before, after_forward),
        "forward_landed_all": torch.equal(after_forward, module.weight),
        "probe": name,
    }


class TinyTP(nn.Module):
    """A small model with a forward, for the overlapped path: a gated FFN as megatron TP layers
    (fc1 column-parallel with stride 2, fc2 row-parallel), a replicated Muon matrix, AdamW parts."""

    def __init__(self) -> None:
        super().__init__()
        cfg = _config(gqa=False)
        self.emb = nn.Embedding(11, HIDDEN)
        self.emb.weight.use_adamw = True
        self.fc1 = ColumnParallelLinear(HIDDEN, 2 * FFN, config=cfg, init_method=cfg.init_method, bias=False,
                                        gather_output=False, stride=2)
        self.fc2 = RowParallelLinear(FFN, HIDDEN, config=cfg, init_method=cfg.init_method, bias=False,
                                     input_is_parallel=True, skip_bias_add=False)
        self.norm = nn.LayerNorm(HIDDEN)
        self.out = nn.Linear(HIDDEN, HIDDEN, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb(tokens)
        gate, up = self.fc1(x)[0].chunk(2, -1)
        x = x + self.fc2(F.silu(gate) * up)[0]
        return self.out(self.norm(x)).pow(2).mean()


def overlapped(ctx, options: dict) -> dict:
    """Real forward and backward on this data-parallel rank's own tokens, DDP reducing buckets
    while backward runs, for both ``optim.muon_reduce`` settings (same weights, same data)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    out = {}
    for reduce in ("home", "all_reduce"):
        torch.manual_seed(0)
        net = TinyTP()
        ddp = DistributedDataParallel(_config(gqa=False), DistributedDataParallelConfig(
            overlap_grad_reduce=True, bucket_size=500, use_distributed_optimizer=False), net)
        cfg = replace(OPTIM, muon_reduce=reduce, muon_bucket_elems=BUCKET_ELEMS)
        opt = build_optimizer(net, cfg, STEPS, optimizer_groups(ctx), grad_buffers=[ddp], device_type="cpu")
        record = {"init": _snapshot(net), "issued_in_backward": [], "groups": len(ddp.bucket_groups)}
        for step in range(4):
            tokens = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(100 * step + ctx.dp_rank))
            ddp(tokens).backward()
            # reductions the bucket groups started during backward (reduce-to-home only)
            record["issued_in_backward"].append(len(opt.home._pending) if opt.home is not None else -1)
            opt.step()
            opt.zero_grad()
        opt.finish_param_sync()
        record["final"] = _snapshot(net)
        out[reduce] = record
    return out


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def run_rank(rank: int, world: int, tp: int, pp: int, rdzv: str, out_dir: str, options: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch.distributed as dist

    torch.set_num_threads(1)  # several ranks share two cores; also one reduction order
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    ctx = init_parallel(tp, pp, "cpu", seed=0)
    result = {"ctx": {"rank": rank, "tp_rank": ctx.tp_rank, "dp_rank": ctx.dp_rank, "pp_rank": ctx.pp_rank,
                      "tp": ctx.tp, "dp": ctx.dp, "pp": ctx.pp}}
    if options.get("job") == "reference":
        result["run"] = reference(options)
    elif options.get("job") == "overlapped":
        result["run"] = overlapped(ctx, options)
    else:
        result["run"] = distributed(ctx, options)
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    shutdown_parallel()


# -- launcher -------------------------------------------------------------------------------
def launch(tmp: Path, world: int, tp: int = 1, pp: int = 1, **options) -> list[dict]:
    """Run :func:`run_rank` on ``world`` forked ranks; return each rank's record."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    # Effective only if no forkserver runs yet in this process; otherwise slower, not wrong.
    # Python 3.11's forkserver ignores the parent's sys.path while preloading, so this test
    # folder's modules cannot be preloaded; their heavy imports (megatron, the optimizer) can.
    ctx.set_forkserver_preload(
        ["wallwm_pretrain.optim.distributed.optimizer_set", "megatron.core.transformer.attention", "megatron.core.transformer.mlp"]
    )
    tmp.mkdir(parents=True, exist_ok=True)
    rdzv = tmp / "rdzv"
    if rdzv.exists():
        rdzv.unlink()
    procs = [ctx.Process(target=run_rank, args=(r, world, tp, pp, str(rdzv), str(tmp), options)) for r in range(world)]
    from _launch import run_ranks  # here, not at import: rank processes need not load it

    run_ranks(procs, f"a world of {world} (tp={tp}, pp={pp})")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]


def logical(records: list[dict], part: str = "final") -> dict[str, torch.Tensor]:
    """Whole tensors of every parameter from the slices of data-parallel rank 0 of each stage."""
    out: dict[str, torch.Tensor] = {}
    for pp in sorted({r["ctx"]["pp_rank"] for r in records}):
        group = sorted(
            (r for r in records if r["ctx"]["pp_rank"] == pp and r["ctx"]["dp_rank"] == 0),
            key=lambda r: r["ctx"]["tp_rank"],
        )
        for name, layout in group[0]["run"]["layout"].items():
            out[name] = join([r["run"][part][name] for r in group], layout)
    return out
