"""One rank of a ZeRO-1 AdamW proof run (every parameter to AdamW), and the single-process reference.

The model is megatron-core tensor-parallel layers built at the run's TP size (a column-parallel
linear with bias, a row-parallel one with a replicated bias), a LayerNorm, a plain linear head
and an embedding; all go to AdamW, as when a user marks every parameter ``use_adamw``. The
gradients are in megatron DDP buffers and the set comes from the public builder with
``optim.muon_reduce=home`` (reduce-scatter into the shards) or ``all_reduce``.

Values and gradients come from generators seeded by name (and step and data-parallel rank),
not from a forward pass: data-parallel rank d holds its own whole gradient of every parameter
at each step, cut to its tensor-parallel slice here (independently of the code under test).
DDP scales each by 1/dp (exact: a power of two) and the reduction sums them; the reference sums
the same products in data-parallel rank order, then runs ``torch.optim.AdamW`` with the
project's warmup + cosine schedule on whole tensors.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parents[1] / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from _dist_muon_worker import OPTIM, _config, cut, drawn, join, layout_of, whole_shape  # noqa: E402
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear  # noqa: E402
from torch import nn  # noqa: E402

from wallwm_pretrain.checkpoint.optim import as_source, gather_whole_state, optimizer_pieces  # noqa: E402
from wallwm_pretrain.optim import build_optimizer  # noqa: E402
from wallwm_pretrain.optim.schedule import build_scheduler  # noqa: E402
from wallwm_pretrain.parallel import init_parallel, shutdown_parallel  # noqa: E402
from wallwm_pretrain.parallel.state import optimizer_groups  # noqa: E402

STEPS = 10
BUCKET = 300  # DDP bucket elements: several buckets, each cut unevenly over the shards


class AdamWNet(nn.Module):
    """Odd sizes: at TP=1 661 decayed elements and 67 not, at TP2 419 decayed per rank, so the
    shards of 2 and 4 data-parallel ranks differ in size."""

    def __init__(self) -> None:
        super().__init__()
        cfg = _config(gqa=False)
        init = cfg.init_method
        self.emb = nn.Embedding(11, 9)
        self.col = ColumnParallelLinear(9, 22, config=cfg, init_method=init, bias=True, gather_output=False)
        self.row = RowParallelLinear(22, 13, config=cfg, init_method=init, bias=True, input_is_parallel=True,
                                     skip_bias_add=False)
        self.norm = nn.LayerNorm(13)
        self.head = nn.Linear(13, 6)
        for p in self.parameters():
            p.use_adamw = True


def grad_of(name: str, shape: tuple[int, ...], step: int, dp_rank: int) -> torch.Tensor:
    """Whole gradient of ``name`` that data-parallel rank ``dp_rank`` holds at ``step``."""
    return drawn(f"{name}@dp{dp_rank}", shape, step)


def reference(init: dict, groups: list[tuple[list[str], float]], dps: list[int], start: int = 0,
              end: int = STEPS) -> dict:
    """Single-process ``torch.optim.AdamW`` on whole tensors; ``dps[step]`` data-parallel ranks
    contribute to the gradient of ``step``, summed in rank order after DDP's 1/dp scaling."""
    params = {n: nn.Parameter(t.clone()) for n, t in init.items()}
    opt = torch.optim.AdamW([{"params": [params[n] for n in names], "weight_decay": wd} for names, wd in groups],
                            lr=OPTIM.adamw_lr, betas=tuple(OPTIM.adamw_betas), eps=OPTIM.adamw_eps)
    sched = build_scheduler(opt, OPTIM.warmup_steps, STEPS, OPTIM.min_lr_ratio)
    for step in range(start, end):
        dp = dps[step]
        for n, p in params.items():
            total = grad_of(n, tuple(p.shape), step, 0) * (1.0 / dp)
            for d in range(1, dp):
                total += grad_of(n, tuple(p.shape), step, d) * (1.0 / dp)
            p.grad = total
        opt.step()
        sched.step()
    return {n: p.detach().clone() for n, p in params.items()}


def run(ctx, options: dict) -> dict:
    from collective_bytes import CollectiveBytes
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    torch.manual_seed(0)
    net = AdamWNet()
    layouts = {n: layout_of(p, ctx.tp) for n, p in net.named_parameters()}
    values = torch.load(options["load"] + "/model.pt") if options.get("load") else None
    with torch.no_grad():
        for n, p in net.named_parameters():
            full = values[n] if values is not None else drawn(n, whole_shape(p, layouts[n], ctx.tp), -1)
            p.copy_(cut(full, layouts[n], ctx.tp_rank, ctx.tp))
    ddp = DistributedDataParallel(_config(gqa=False), DistributedDataParallelConfig(
        overlap_grad_reduce=True, bucket_size=BUCKET, use_distributed_optimizer=False), net)
    cfg = replace(OPTIM, muon_reduce=options.get("reduce", "home"))
    opt = build_optimizer(net, cfg, STEPS, optimizer_groups(ctx), grad_buffers=[ddp], device_type="cpu")
    if options.get("load"):
        optimizer_pieces(opt).load(*as_source(torch.load(options["load"] + "/optim.pt", weights_only=False)))
    split = opt.split
    record = {"layout": layouts, "init": {n: p.detach().clone() for n, p in net.named_parameters()},
              "groups": [(list(split.adamw_decay), cfg.weight_decay), (list(split.adamw_no_decay), 0.0)],
              "muon": list(split.muon), "scattered": opt.shards is not None, "buckets": len(ddp.bucket_groups)}
    counter = CollectiveBytes()
    start, end = options.get("start", 0), options.get("end", STEPS)
    for step in range(start, end):
        for n, p in net.named_parameters():
            whole = grad_of(n, whole_shape(p, layouts[n], ctx.tp), step, ctx.dp_rank)
            p.main_grad.copy_(cut(whole, layouts[n], ctx.tp_rank, ctx.tp))
        if step == start:  # count the bytes of one whole step: reduction, update, all-gather
            counter.install()
        with counter.window():
            ddp.start_grad_sync()  # as if backward had found every bucket ready
            opt.step()
        if step == start:
            counter.uninstall()
            record["sent"], record["received"] = counter.sent, counter.received
            record["calls"] = dict(counter.calls)
        opt.zero_grad()
    record["grad_bytes"] = sum(p.numel() * p.element_size() for p in net.parameters())
    record["final"] = {n: p.detach().clone() for n, p in net.named_parameters()}
    record["shard_sizes"] = [g["hi"] - g["lo"] for g in opt.adamw.sharded_state()["groups"]]
    if options.get("save"):
        canonical = gather_whole_state(opt)
        if ctx.rank == 0:
            torch.save(canonical, options["save"] + "/optim.pt")
    return record


def run_rank(rank: int, world: int, tp: int, rdzv: str, out_dir: str, options: dict) -> None:
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    ctx = init_parallel(tp, 1, "cpu", seed=0)
    result = {"ctx": {"rank": rank, "tp_rank": ctx.tp_rank, "dp_rank": ctx.dp_rank, "pp_rank": ctx.pp_rank,
                      "tp": ctx.tp, "dp": ctx.dp}, "run": run(ctx, options)}
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    shutdown_parallel()


def launch(tmp: Path, world: int, tp: int = 1, **options) -> list[dict]:
    """Run :func:`run_rank` on ``world`` forked ranks; return each rank's record."""
    import multiprocessing as mp

    from _launch import run_ranks

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["wallwm_pretrain.optim.distributed.optimizer_set", "megatron.core.tensor_parallel"])
    tmp.mkdir(parents=True, exist_ok=True)
    procs = [ctx.Process(target=run_rank, args=(r, world, tp, str(tmp / "rdzv"), str(tmp), options))
             for r in range(world)]
    run_ranks(procs, f"a world of {world} (tp={tp})")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]


def logical(records: list[dict], part: str = "final") -> dict[str, torch.Tensor]:
    """Whole tensors from the slices of data-parallel rank 0."""
    group = sorted((r for r in records if r["ctx"]["dp_rank"] == 0), key=lambda r: r["ctx"]["tp_rank"])
    return {n: join([r["run"][part][n] for r in group], lay) for n, lay in group[0]["run"]["layout"].items()}
