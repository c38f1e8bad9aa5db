"""Distributed Muon: optimizer step, iteration and bytes, Newton-Schulz scaling and Gram form, training-step cost.

    python bench/muon.py step --world 2           # (a) DP=2: owner before/after vs gather vs ZeRO-1 AdamW
    python bench/muon.py step --world 4 --tp 2    # (a) TP2 x DP2
    python bench/muon.py scaling --worlds 1 2 4   # (b) Newton-Schulz time vs processes, PNG with the 1/world line
    python bench/muon.py train                    # (c) smoke-model training step, Muon vs AdamW, one process
    python bench/muon.py gram                     # (d) Newton-Schulz on the stack: standard vs Gram form
    python bench/muon.py tp-bytes                 # (e) bytes of Newton-Schulz on TP pieces vs the gather (arithmetic)

(a) runs a stack of transformer-shaped matrices (per layer: QKV 3h x h, proj h x h, gated fc1
2f x h, fc2 h x f; h=256, f=1024, 4 layers) as megatron tensor-parallel layers, plus an
embedding and norms for AdamW, each contender in its own megatron DDP (gradients reduced while
backward runs, buckets of 1 Mi elements), on gloo processes with file rendezvous, one thread
each. Owner mode runs twice: ``before`` (``optim.muon_reduce=all_reduce``: every gradient
all-reduced, the update returned within the step) and ``after`` (``home``: Muon gradients
reduced to their homes during backward, the update landing before each layer's next forward),
and once more ``after`` with the Gram Newton-Schulz; at TP > 1 also ``after`` with
``optim.muon_tp_ns=sharded`` (Newton-Schulz on the TP pieces of the matrices where that saves
bytes) and ``sharded_all`` (on the pieces of every split matrix). ZeRO-1 AdamW (every parameter)
runs twice: with ``home`` (gradients reduce-scattered into the shards during backward, then the
all-gather: the baseline of every ratio) and with ``all_reduce`` (the path before: all-reduce,
then all-gather). Per round and contender:

- *step*: seeded gradients in the DDP buffers, then what follows a backward: the gradient
  reduction, the optimizer step and the parameters' return, all waited for; the bytes this
  rank sends and receives in it are counted by wrapping the ``torch.distributed`` collectives
  (``collective_bytes.py``) and divided by the all-reduce bound 2(N-1)/N x this rank's
  gradient bytes (N = DP);
- *iteration*: ``--iters`` consecutive forward + backward + step, the last return waited for
  inside the timed block, per iteration: the return of one step overlaps the next forward.

All contenders run in the same processes, interleaved round by round; every time is the
maximum over ranks (the step ends when the slowest rank does), median over rounds. After the
run the script checks that owner mode before and after, and AdamW with and without the
reduce-scatter, hold the same parameters bit for bit (at DP > 2 the sums' order may differ).

DeepSpeed's ZeRO-1 and ZeRO-2 AdamW (same stack as plain layers, DP only) reduce their
gradients inside ``engine.backward`` / ``engine.step``; their bytes are counted over one whole
forward + backward + step per round (the collectives called are printed under the table).

(b) uses the same stack as plain ``nn.Linear`` layers and seeded gradients identical on every
rank (as after the data-parallel all-reduce). DeepSpeed (``--no-deepspeed`` to skip; DP only)
computes its Muon update while it flattens the reduced gradient partitions, partly inside
``engine.backward``; its row reports the iteration only. Its Newton-Schulz is the ``standard``
quintic under ``torch.compile``, forced to fp32 (``is_bf16_supported`` patched to False).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.config import OptimConfig  # noqa: E402

HIDDEN, FFN, LAYERS, VOCAB, BATCH, SEQ = 256, 1024, 4, 1000, 4, 64
OPTIM = OptimConfig(lr=0.02, adamw_lr=0.003, weight_decay=0.01, warmup_steps=1, min_lr_ratio=0.1, grad_clip=0.0)


class BenchNet(nn.Module):
    """Transformer-shaped matrices (no attention core: the optimizer is what is timed)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, HIDDEN)
        self.emb.weight.use_adamw = True
        self.layers = nn.ModuleList()
        for _ in range(LAYERS):
            layer = nn.Module()
            layer.norm1, layer.norm2 = nn.LayerNorm(HIDDEN), nn.LayerNorm(HIDDEN)
            layer.qkv = nn.Linear(HIDDEN, 3 * HIDDEN, bias=False)
            layer.proj = nn.Linear(HIDDEN, HIDDEN, bias=False)
            layer.fc1 = nn.Linear(HIDDEN, 2 * FFN, bias=False)
            layer.fc2 = nn.Linear(FFN, HIDDEN, bias=False)
            self.layers.append(layer)
        for p in self.parameters():  # DeepSpeed's split marker
            p.use_muon = p.ndim == 2 and not getattr(p, "use_adamw", False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb(tokens)
        for layer in self.layers:
            q, k, v = layer.qkv(layer.norm1(x)).chunk(3, -1)
            x = x + layer.proj(q * torch.sigmoid(k) + v)
            gate, up = layer.fc1(layer.norm2(x)).chunk(2, -1)
            x = x + layer.fc2(nn.functional.silu(gate) * up)
        return x.pow(2).mean()


def _tokens(step: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(step))


def _seed_grads(model: nn.Module, step: int) -> None:
    g = torch.Generator().manual_seed(10_000 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)


def _max_over_ranks(seconds: float) -> float:
    t = torch.tensor([seconds])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _timed(fn) -> float:
    if dist.is_initialized():
        dist.barrier()
    t0 = time.perf_counter()
    fn()
    return _max_over_ranks(time.perf_counter() - t0)


def _world_groups():
    from wallwm_pretrain.optim.groups import OptimizerGroups

    world, rank = dist.get_world_size(), dist.get_rank()
    return OptimizerGroups(tp_dp=None, tp=None, dp=None, tp_rank=0, tp_size=1, dp_rank=rank, dp_size=world)


BUCKET_ELEMS = 1 << 20  # ~4 buckets here, so transfers can overlap Newton-Schulz


def _our_set(model: nn.Module, mode: str, overlap: bool = True):
    from wallwm_pretrain.optim import ParamSplit, split_parameters
    from wallwm_pretrain.optim.distributed.optimizer_set import DistributedOptimizerSet

    split = split_parameters(model)
    if mode == "adamw":  # everything to ZeRO-1 AdamW
        split = ParamSplit([], split.muon + split.adamw_decay, split.adamw_no_decay)
    return DistributedOptimizerSet(dict(model.named_parameters()), split, OPTIM, 1000, "float32", _world_groups(),
                                mode="owner" if mode == "adamw" else mode, bucket_elems=BUCKET_ELEMS, overlap=overlap)


def _flat_all_reduce(model: nn.Module) -> None:
    grads = [p.grad for p in model.parameters()]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    off = 0
    for g in grads:
        g.copy_(flat[off : off + g.numel()].view_as(g))
        off += g.numel()


def _deepspeed_engine(model: nn.Module, optimizer: str = "Muon", stage: int = 2):
    """DeepSpeed's ZeRO-2 Muon (``optimizer="Muon"``) or ZeRO-``stage`` AdamW (``"AdamW"``, every
    parameter; stage 1 is the peer of our ZeRO-1 AdamW) over ``model``."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    type(get_accelerator()).is_bf16_supported = lambda self: False  # fp32 Newton-Schulz, as ours
    if optimizer == "Muon":
        opt = {"type": "Muon", "params": {"lr": OPTIM.lr, "momentum": OPTIM.momentum,
                                          "weight_decay": OPTIM.weight_decay, "ns_method": "standard"}}
    else:
        opt = {"type": "AdamW", "params": {"lr": OPTIM.adamw_lr, "betas": list(OPTIM.adamw_betas),
                                           "eps": OPTIM.adamw_eps, "weight_decay": OPTIM.weight_decay}}
    cfg = {
        "train_micro_batch_size_per_gpu": BATCH,
        "gradient_accumulation_steps": 1,
        "optimizer": opt,
        "zero_optimization": {"stage": stage},
        "gradient_clipping": 0.0,
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    return engine


class TPBenchNet(nn.Module):
    """:class:`BenchNet`'s matrices as megatron tensor-parallel layers (QKV and fc1 column-parallel,
    fc1 with stride 2 as a gated FFN; proj and fc2 row-parallel), so the same stack runs at any TP."""

    def __init__(self, config) -> None:
        from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

        super().__init__()
        init = config.init_method
        self.emb = nn.Embedding(VOCAB, HIDDEN)
        self.emb.weight.use_adamw = True
        self.layers = nn.ModuleList()
        for _ in range(LAYERS):
            layer = nn.Module()
            layer.norm1, layer.norm2 = nn.LayerNorm(HIDDEN), nn.LayerNorm(HIDDEN)
            layer.qkv = ColumnParallelLinear(HIDDEN, 3 * HIDDEN, config=config, init_method=init, bias=False,
                                             gather_output=False)
            layer.proj = RowParallelLinear(HIDDEN, HIDDEN, config=config, init_method=init, bias=False,
                                           input_is_parallel=True, skip_bias_add=False)
            layer.fc1 = ColumnParallelLinear(HIDDEN, 2 * FFN, config=config, init_method=init, bias=False,
                                             gather_output=False, stride=2)
            layer.fc2 = RowParallelLinear(FFN, HIDDEN, config=config, init_method=init, bias=False,
                                          input_is_parallel=True, skip_bias_add=False)
            self.layers.append(layer)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb(tokens)
        for layer in self.layers:
            q, k, v = layer.qkv(layer.norm1(x))[0].chunk(3, -1)
            x = x + layer.proj(q * torch.sigmoid(k) + v)[0]
            gate, up = layer.fc1(layer.norm2(x))[0].chunk(2, -1)
            x = x + layer.fc2(nn.functional.silu(gate) * up)[0]
        return x.pow(2).mean()


def _bench_config():
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=4, ffn_hidden_size=FFN,
                             use_cpu_initialization=True, params_dtype=torch.float32, add_bias_linear=False)


# name: (muon_mode, optim.muon_reduce, ns_variant, optim.muon_tp_ns); adamw = every parameter to ZeRO-1 AdamW
# (muon_reduce=home: gradients reduce-scattered into the shards; all_reduce: the path before)
CONTENDERS = {
    "owner_before": ("owner", "all_reduce", "quintic", "gather"),
    "owner_home": ("owner", "home", "quintic", "gather"),
    "owner_home_gram": ("owner", "home", "gram", "gather"),
    "owner_home_sharded": ("owner", "home", "quintic", "sharded"),
    "owner_home_sharded_all": ("owner", "home", "quintic", "sharded_all"),
    "gather": ("gather", "all_reduce", "quintic", "gather"),
    "adamw": ("adamw", "home", "quintic", "gather"),
    "adamw_all_reduce": ("adamw", "all_reduce", "quintic", "gather"),
}
TP_ONLY = ("owner_home_sharded", "owner_home_sharded_all")  # the same as owner_home without TP
LABELS = {
    "owner_before": "Muon owner, all-reduce then return in the step (before)",
    "owner_home": "Muon owner, reduce to home + return behind forward (after)",
    "owner_home_gram": "Muon owner, reduce to home, Gram Newton-Schulz",
    "owner_home_sharded": "Muon owner, reduce to home, Newton-Schulz on TP pieces where it saves bytes (tp_ns=sharded)",
    "owner_home_sharded_all": "Muon owner, reduce to home, Newton-Schulz on all TP pieces (tp_ns=sharded_all)",
    "gather": "Muon gather (Moonlight-style)",
    "adamw": "AdamW ZeRO-1 (ours), reduce-scatter + all-gather",
    "adamw_all_reduce": "AdamW ZeRO-1 (ours before), all-reduce + all-gather",
    "deepspeed": "DeepSpeed ZeRO-2 Muon",
    "deepspeed_adamw": "DeepSpeed ZeRO-1 AdamW",
    "deepspeed_adamw_z2": "DeepSpeed ZeRO-2 AdamW",
}


def _ddp_set(config, groups, mode: str, reduce: str, variant: str, tp_ns: str):
    """A :class:`TPBenchNet` in megatron DDP (gradients reduced while backward runs) and its set."""
    from dataclasses import replace

    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from wallwm_pretrain.optim import ParamSplit, split_parameters
    from wallwm_pretrain.optim.distributed.optimizer_set import DistributedOptimizerSet

    torch.manual_seed(0)
    net = TPBenchNet(config)
    ddp = DistributedDataParallel(config, DistributedDataParallelConfig(
        overlap_grad_reduce=True, bucket_size=BUCKET_ELEMS, use_distributed_optimizer=False), net)
    split = split_parameters(net)
    if mode == "adamw":
        split = ParamSplit([], split.muon + split.adamw_decay, split.adamw_no_decay)
    cfg = replace(OPTIM, ns_variant=variant)
    opt = DistributedOptimizerSet(dict(net.named_parameters()), split, cfg, 1000, "float32", groups,
                                  mode="owner" if mode == "adamw" else mode, bucket_elems=BUCKET_ELEMS,
                                  grad_buffers=[ddp], ns_variant=variant, reduce=reduce, tp_ns=tp_ns,
                                  modules=[net])
    return {"net": net, "ddp": ddp, "opt": opt}


def _seed_main_grads(net: nn.Module, step: int) -> None:
    g = torch.Generator().manual_seed(10_000 + step)
    for p in net.parameters():
        p.main_grad.copy_(torch.randn(p.shape, generator=g))


def _step_worker(rank: int, world: int, rdzv: str, out: str, tp: int, rounds: int, iters: int,
                 with_deepspeed: bool) -> None:
    import warnings

    warnings.filterwarnings("ignore")  # megatron's notes on missing Transformer Engine / Apex
    from collective_bytes import CollectiveBytes

    from wallwm_pretrain.parallel import init_parallel
    from wallwm_pretrain.parallel.state import optimizer_groups

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("BENCH_PORT", "29533"))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    ctx = init_parallel(tp, 1, "cpu", seed=0)
    groups = optimizer_groups(ctx)
    config = _bench_config()
    counter = CollectiveBytes()
    counter.install()
    contenders = {name: _ddp_set(config, groups, *spec) for name, spec in CONTENDERS.items()
                  if tp > 1 or name not in TP_ONLY}
    deepspeed_error = None
    if with_deepspeed and tp == 1:
        try:
            torch.manual_seed(0)
            contenders["deepspeed"] = {"engine": _deepspeed_engine(BenchNet())}
            torch.manual_seed(0)
            contenders["deepspeed_adamw"] = {"engine": _deepspeed_engine(BenchNet(), "AdamW", stage=1)}
            torch.manual_seed(0)
            contenders["deepspeed_adamw_z2"] = {"engine": _deepspeed_engine(BenchNet(), "AdamW", stage=2)}
        except Exception as exc:  # reported in the table instead of a number
            deepspeed_error = f"{type(exc).__name__}: {exc}"
    times = {k: {"step": [], "iteration": []} for k in contenders}
    traffic: dict[str, tuple[int, int]] = {}
    for r in range(rounds + 2):  # two warm-up rounds (first-touch allocations, DDP's first batch)
        for name, c in contenders.items():
            if name.startswith("deepspeed"):
                engine = c["engine"]
                if name != "deepspeed":  # AdamW reduces inside backward / step: count a whole iteration
                    with counter.window():
                        engine.backward(engine(_tokens(10_000 + r)))
                        engine.step()
                    traffic[name] = (counter.sent, counter.received, dict(counter.calls))

                def ds_iterations():
                    for i in range(iters):
                        loss = engine(_tokens(r * iters + i))
                        engine.backward(loss)
                        engine.step()

                t_it, t_step = _timed(ds_iterations) / iters, float("nan")
            else:
                net, ddp, opt = c["net"], c["ddp"], c["opt"]
                _seed_main_grads(net, r)

                def step():
                    # what follows a backward: the gradient reduction (started as if backward had
                    # just found every bucket ready), the optimizer step, the parameters' return
                    with counter.window():
                        ddp.start_grad_sync()
                        opt.step()
                        opt.finish_param_sync()

                t_step = _timed(step)
                traffic[name] = (counter.sent, counter.received)
                opt.zero_grad()

                def iterations():
                    # the return of step i lands during the forward of step i + 1; the last one is
                    # waited for inside the timed block
                    for i in range(iters):
                        ddp(_tokens(r * iters + i)).backward()
                        opt.step()
                        opt.zero_grad()
                    opt.finish_param_sync()

                t_it = _timed(iterations) / iters
            if r >= 2:
                times[name]["step"].append(t_step)
                times[name]["iteration"].append(t_it)
    counter.uninstall()
    grad_bytes = sum(p.numel() * p.element_size() for p in contenders["owner_home"]["net"].parameters())
    traffic_all = [None] * world
    dist.all_gather_object(traffic_all, traffic)
    same = {}
    for a, b in (("owner_before", "owner_home"), ("adamw_all_reduce", "adamw")):
        before, after = (dict(contenders[k]["net"].named_parameters()) for k in (a, b))
        same[b] = all(torch.equal(before[n], after[n]) for n in before)
    same_all = [None] * world
    dist.all_gather_object(same_all, same)
    state = {k: c["opt"].state_numel() for k, c in contenders.items() if "opt" in c}
    if rank == 0:
        Path(out).write_text(json.dumps({
            "times": times, "traffic": traffic_all, "grad_bytes": grad_bytes, "dp": ctx.dp, "tp": tp,
            "same_params": {k: all(s[k] for s in same_all) for k in same}, "state": state, "deepspeed_error": deepspeed_error,
        }))
    dist.barrier()
    dist.destroy_process_group()

def _scaling_worker(rank: int, world: int, rdzv: str, out: str, rounds: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = BenchNet()
    opt = _our_set(model, "owner")
    ns_seconds = [0.0]
    inner = opt.muon._ns

    def timed_ns(mats, group):
        t0 = time.perf_counter()
        result = inner(mats, group)
        ns_seconds[0] += time.perf_counter() - t0
        return result

    opt.muon._ns = timed_ns
    ns, step = [], []
    for r in range(rounds + 2):
        _seed_grads(model, r)
        ns_seconds[0] = 0.0
        t = _timed(opt.step)
        n = _max_over_ranks(ns_seconds[0])
        opt.zero_grad()
        if r >= 2:
            ns.append(n)
            step.append(t)
    if rank == 0:
        Path(out).write_text(json.dumps({"ns": ns, "step": step}))
    dist.barrier()
    dist.destroy_process_group()


def _launch(target, world: int, *extra) -> dict:
    """Run ``target(rank, world, rdzv, out, *extra)`` on ``world`` spawned ranks; rank 0's JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out, rdzv = os.path.join(tmp, "out.json"), os.path.join(tmp, "rdzv")
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=target, args=(r, world, rdzv, out, *extra)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode for p in procs):
            raise SystemExit(f"benchmark ranks failed: exit codes {[p.exitcode for p in procs]}")
        return json.loads(Path(out).read_text())


def run_step(world: int, tp: int, rounds: int, iters: int, with_deepspeed: bool) -> None:
    res = _launch(_step_worker, world, tp, rounds, iters, with_deepspeed)
    med = {k: {kind: statistics.median(v) if v and v[0] == v[0] else float("nan") for kind, v in t.items()}
           for k, t in res["times"].items()}
    dp = res["dp"]
    bound = 2 * (dp - 1) / dp * res["grad_bytes"]
    base_step = med["owner_before"]["step"]
    adamw, gather = med["adamw"], med["gather"]
    print(f"\n(a) optimizer step and iteration, TP={tp} x DP={dp} (gloo, 1 thread/rank), {rounds} rounds of "
          f"{iters} iterations; gradient bytes per rank {res['grad_bytes'] / 2**20:.2f} MiB, all-reduce bound "
          f"2(N-1)/N x that = {bound / 2**20:.2f} MiB (N = DP = {dp})\n")
    print("| optimizer | step (ms) | step / before | step / AdamW | step / gather | iteration (ms) | "
          "iteration / AdamW | iteration / gather | sent / bound | received / bound | state elems/rank |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k, m in med.items():
        state = res["state"].get(k)
        state_txt = f"{state['muon'] + state['adamw']:,}" if state else "n/a"
        step_txt = (f"{m['step'] * 1e3:.1f} | {m['step'] / base_step:.2f} | {m['step'] / adamw['step']:.2f} | "
                    f"{m['step'] / gather['step']:.2f}") if m["step"] == m["step"] else "in backward | - | - | -"
        if k in res["traffic"][0]:
            sent = max(t[k][0] for t in res["traffic"]) / bound  # the busiest rank
            recv = max(t[k][1] for t in res["traffic"]) / bound
            bytes_txt = f"{sent:.2f} | {recv:.2f}"
        else:
            bytes_txt = "n/a | n/a"
        print(f"| {LABELS[k]} | {step_txt} | {m['iteration'] * 1e3:.1f} | {m['iteration'] / adamw['iteration']:.2f} | "
              f"{m['iteration'] / gather['iteration']:.2f} | {bytes_txt} | {state_txt} |")
    print(f"\nowner mode before and after hold the same parameters bit for bit after the run: "
          f"{res['same_params']['owner_home']}; AdamW ZeRO-1 with and without the reduce-scatter: "
          f"{res['same_params']['adamw']}")
    for k in ("deepspeed_adamw", "deepspeed_adamw_z2"):
        if k in res["traffic"][0]:
            print(f"\n{LABELS[k]}: collectives of one iteration on rank 0: {res['traffic'][0][k][2]}")
    if res["deepspeed_error"]:
        print(f"\nDeepSpeed did not run: {res['deepspeed_error']}")

def run_scaling(worlds: list[int], rounds: int, png: Path | None) -> None:
    rows = {w: _launch(_scaling_worker, w, rounds) for w in worlds}
    base_ns = statistics.median(rows[worlds[0]]["ns"]) * worlds[0]
    print(f"\n(b) Newton-Schulz time per step vs processes (owner mode, {rounds} rounds, {os.cpu_count()} cores)\n")
    print("| processes | NS time, slowest rank (ms) | ideal T1/world (ms) | measured / ideal | whole step (ms) |")
    print("|---|---|---|---|---|")
    points = []
    for w, r in rows.items():
        ns, step = statistics.median(r["ns"]), statistics.median(r["step"])
        ideal = base_ns / w
        points.append((w, ns, ideal, step))
        print(f"| {w} | {ns * 1e3:.1f} | {ideal * 1e3:.1f} | {ns / ideal:.2f} | {step * 1e3:.1f} |")
    if png is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.4))
        ws = [p[0] for p in points]
        ax.plot(ws, [p[1] * 1e3 for p in points], "o-", label="Newton-Schulz, slowest rank")
        ax.plot(ws, [p[3] * 1e3 for p in points], "s--", label="whole optimizer step")
        ax.plot(ws, [p[2] * 1e3 for p in points], "k:", label="ideal T1 / world")
        ax.set_xlabel("processes (DP, owner mode)")
        ax.set_ylabel("ms per step")
        ax.set_xticks(ws)
        ax.set_title(f"Distributed Muon on {os.cpu_count()} CPU cores (gloo)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=120)
        print(f"\nplot: {png}")


def run_train(steps: int) -> None:
    """(c) One process, the smoke model: fwd + bwd + step with Muon (+AdamW) vs AdamW only."""
    from wallwm_pretrain.config import load_config
    from wallwm_pretrain.model import WallWM
    from wallwm_pretrain.optim import ParamSplit, ReplicatedOptimizerSet, split_parameters
    from wallwm_pretrain.parallel import init_parallel, shutdown_parallel
    from wallwm_pretrain.optim.distributed.layout import fused_layouts

    # synthetic batches: the smoke world's data dims (no shards to read them from)
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml",
                      ["model.action_dim=4", "model.state_dim=8", "model.num_views=2"])
    ctx = init_parallel(1, 1, "cpu", seed=0)
    t, b = cfg.data.max_frames, cfg.data.batch_size
    size = cfg.model.image_size

    def batch(step):
        g = torch.Generator().manual_seed(step)
        frames = torch.randint(0, 256, (b, t, 2, size, size, 3), dtype=torch.uint8, generator=g)
        actions = torch.randn(b, t, cfg.model.action_dim, generator=g)
        state = torch.randn(b, cfg.model.state_dim, generator=g)
        lengths = torch.full((b,), t)
        caption = torch.randint(2, 258, (b, cfg.model.caption_max_bytes + 1), generator=g)
        return frames, actions, state, lengths, caption

    setups = {}
    for name in ("muon", "muon_split", "adamw"):
        torch.manual_seed(0)
        # megatron's layers: fused_layouts recognises their fused QKV / KV / fc1 weights
        model = WallWM(cfg.model, pg_collection=ctx.pg_collection)
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        split = split_parameters(model)
        fused = None
        if name == "adamw":
            split = ParamSplit([], split.muon + split.adamw_decay, split.adamw_no_decay)
        elif name == "muon_split":
            fused = {n: f.whole for n, f in fused_layouts(model, 1).items()}
        setups[name] = (model, ReplicatedOptimizerSet(named, split, cfg.optim, cfg.train.steps, "float32",
                                                     fused=fused))
    times = {n: {"step": [], "total": []} for n in setups}
    for s in range(steps + 2):
        for name, (model, opt) in setups.items():
            data = batch(s)
            t0 = time.perf_counter()
            out = model(Batch(*data), generator=torch.Generator().manual_seed(s))
            out["loss"].backward()
            t1 = time.perf_counter()
            opt.step()
            opt.zero_grad()
            t2 = time.perf_counter()
            if s >= 2:
                times[name]["step"].append(t2 - t1)
                times[name]["total"].append(t2 - t0)
    shutdown_parallel()
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    muon_params = sum(p.numel() for n, p in setups["muon"][0].named_parameters() if n in setups["muon"][1].split.muon)
    total = sum(p.numel() for p in setups["muon"][0].parameters())
    print(f"\n(c) smoke model ({total / 1e6:.2f}M parameters, {muon_params / 1e6:.2f}M in Muon matrices), batch {b} x {t} "
          f"steps, one process, {torch.get_num_threads()} threads, {steps} steps\n")
    print("| optimizer | optimizer step (ms) | training step (ms) | training step / AdamW |")
    print("|---|---|---|---|")
    labels = {"muon": "Muon + AdamW (fused QKV/fc1 whole)", "muon_split": "Muon + AdamW (Q/K/V, gate/up split)",
              "adamw": "AdamW only"}
    for n, m in med.items():
        print(f"| {labels[n]} | {m['step'] * 1e3:.1f} | {m['total'] * 1e3:.1f} | {m['total'] / med['adamw']['total']:.3f} |")


def run_gram(rounds: int) -> None:
    """(d) Newton-Schulz on the benchmark's matrix stack: the standard quintic vs its Gram form."""
    from wallwm_pretrain.optim.newton_schulz import gram_is_cheaper, gram_newton_schulz_flops, newton_schulz, \
        newton_schulz_flops

    torch.set_num_threads(1)
    steps = OPTIM.ns_steps
    shapes = [(3 * HIDDEN, HIDDEN), (HIDDEN, HIDDEN), (2 * FFN, HIDDEN), (HIDDEN, FFN)]
    g = torch.Generator().manual_seed(0)
    stack = [torch.randn(shape, generator=g) for shape in shapes for _ in range(LAYERS)]
    times: dict[tuple, dict[str, list[float]]] = {s: {"quintic": [], "gram": []} for s in shapes}
    diffs = {s: 0.0 for s in shapes}
    for r in range(rounds + 1):  # one warm-up round
        for x in stack:
            shape = tuple(x.shape)
            for name, gram in (("quintic", False), ("gram", True)):
                t0 = time.perf_counter()
                out = newton_schulz(x, steps=steps, gram=gram)
                dt = time.perf_counter() - t0
                if r:
                    times[shape][name].append(dt)
                if gram:
                    diffs[shape] = max(diffs[shape], (out - newton_schulz(x, steps=steps)).abs().max().item())
    print(f"\n(d) Newton-Schulz ({steps} iterations, fp32, 1 thread) on the stack of (a): {LAYERS} of each shape, "
          f"{rounds} rounds\n")
    print("| shape | form used by gram | flops gram / standard | time standard (ms) | time gram (ms) | time ratio | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    total = {"quintic": 0.0, "gram": 0.0}
    flops = {"quintic": 0, "gram": 0}
    for shape, t in times.items():
        q, gm = statistics.median(t["quintic"]), statistics.median(t["gram"])
        cheaper = gram_is_cheaper(*shape, steps)
        f_std = newton_schulz_flops(*shape, steps=steps)
        f_gram = gram_newton_schulz_flops(*shape, steps) if cheaper else f_std
        total["quintic"] += LAYERS * q
        total["gram"] += LAYERS * gm
        flops["quintic"] += LAYERS * f_std
        flops["gram"] += LAYERS * f_gram
        print(f"| {shape[0]} x {shape[1]} | {'Gram' if cheaper else 'standard'} | {f_gram / f_std:.2f} | {q * 1e3:.2f} | "
              f"{gm * 1e3:.2f} | {gm / q:.2f} | {diffs[shape]:.1e} |")
    print(f"| whole stack | | {flops['gram'] / flops['quintic']:.2f} | {total['quintic'] * 1e3:.1f} | "
          f"{total['gram'] * 1e3:.1f} | {total['gram'] / total['quintic']:.2f} | |")


def _tp_bytes_rows(shapes: list[tuple[int, int, int, int]], tp: int, dp: int) -> list[tuple]:
    """Per shape (rows, cols, split dim, count): elements all ranks of the stage send for one
    matrix's reduction and return, over the data-parallel bound 2 (DP-1) x rows x cols, for
    the whole-matrix gather, the sharded Gram form (one all-reduce of the u x u Gram over TP)
    and a sharded standard quintic (one such all-reduce per iteration)."""
    steps = OPTIM.ns_steps
    s = tp * dp
    out = []
    for rows, cols, dim, count in shapes:
        mn = rows * cols
        u = cols if dim == 0 else rows  # the side that is not split: the Gram matrix is u x u
        bound = 2 * (dp - 1) * mn
        gather = 2 * (s - 1) * mn / tp
        gram = bound + 2 * (tp - 1) * u * u
        quintic = bound + steps * 2 * (tp - 1) * u * u
        out.append((rows, cols, dim, count, gather / bound, gram / bound, quintic / bound))
    return out


def _wan22_5b_tp_matrices() -> list[tuple[int, int, int, int]]:
    """The 5B preset's tensor-parallel Muon matrices (rows, cols, split dim, count), from the
    model built on the meta device (configs/wallwm_wan22_5b.yaml, one view): built at TP=1 the
    layers are local, so the split dim is read from the layer's name (the column- and
    row-parallel layers of model/wan and the action tower)."""
    from collections import Counter

    from wallwm_pretrain.config import load_config
    from wallwm_pretrain.optim import split_parameters
    from wallwm_pretrain.optim.distributed.layout import fused_layouts
    from wallwm_pretrain.optim.distributed.plan import logical_matrices
    from wallwm_pretrain.plan.measure import meta_model

    cfg = load_config("configs/wallwm_wan22_5b.yaml", ["model.num_views=1", "model.action_dim=7", "model.state_dim=8"])
    model = meta_model(cfg.model)
    named = dict(model.named_parameters())
    muon = {n: named[n] for n in split_parameters(model).muon}
    column = ("linear_q", "linear_k", "linear_v", "linear_qkv", "linear_kv", "linear_fc1")
    row = ("linear_proj", "linear_fc2")
    count: Counter = Counter()
    for m in logical_matrices(muon, fused_layouts(model, 1), 1, True):
        leaf = m.name.rsplit(".", 2)[-2]
        dim = 0 if leaf in column else 1 if leaf in row else None
        if dim is not None:
            count[(m.rows, m.cols, dim)] += 1
    return [(r, c, d, n) for (r, c, d), n in sorted(count.items(), key=lambda kv: -kv[0][0] * kv[0][1] * kv[1])]


def run_tp_bytes(tp: int, dps: list[int]) -> None:
    """(e) Byte arithmetic of Newton-Schulz on TP pieces against the whole-matrix gather."""
    stacks = {
        "bench stack of (a)": [(3 * HIDDEN, HIDDEN, 0, LAYERS), (HIDDEN, HIDDEN, 1, LAYERS),
                               (2 * FFN, HIDDEN, 0, LAYERS), (HIDDEN, FFN, 1, LAYERS)],
        "Wan2.2-5B preset": _wan22_5b_tp_matrices(),
    }
    for title, shapes in stacks.items():
        for dp in dps:
            rows = _tp_bytes_rows(shapes, tp, dp)
            print(f"\n(e) {title}, TP={tp} x DP={dp}: elements sent per matrix (all ranks) / DP all-reduce bound\n")
            print("| shape (split dim) | count | gather | sharded, Gram form (1 all-reduce) | sharded, quintic (5) "
                  "| tp_ns=sharded picks |")
            print("|---|---|---|---|---|---|")
            tot = {"bound": 0.0, "gather": 0.0, "gram": 0.0, "quintic": 0.0, "best": 0.0}
            for r, c, d, n, ga, gr, qu in rows:
                pick = "pieces" if gr < ga else "gather"
                print(f"| {r} x {c} ({d}) | {n} | {ga:.3f} | {gr:.3f} | {qu:.3f} | {pick} |")
                w = n * r * c
                tot["bound"] += w
                tot["gather"] += w * ga
                tot["gram"] += w * gr
                tot["quintic"] += w * qu
                tot["best"] += w * min(ga, gr)
            b = tot["bound"]
            print(f"| all TP matrices | | {tot['gather'] / b:.3f} | {tot['gram'] / b:.3f} | {tot['quintic'] / b:.3f} "
                  f"| {tot['best'] / b:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("step", help="(a) optimizer step and iteration: owner before/after vs gather vs ZeRO-1 AdamW, "
                                     "bytes per rank against the all-reduce bound")
    a.add_argument("--world", type=int, default=2, help="processes (TP x DP)")
    a.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    a.add_argument("--rounds", type=int, default=7, help="timed rounds (after 2 warm-up rounds)")
    a.add_argument("--iters", type=int, default=3, help="training iterations per timed block")
    a.add_argument("--no-deepspeed", action="store_true")
    b = sub.add_parser("scaling", help="(b) Newton-Schulz time vs processes")
    b.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    b.add_argument("--rounds", type=int, default=7)
    b.add_argument("--png", type=Path, default=Path("docs/muon_ns_scaling.png"))
    c = sub.add_parser("train", help="(c) smoke-model training step, Muon vs AdamW")
    c.add_argument("--steps", type=int, default=10)
    d = sub.add_parser("gram", help="(d) Newton-Schulz standard vs Gram form on the matrix stack")
    d.add_argument("--rounds", type=int, default=7)
    e = sub.add_parser("tp-bytes", help="(e) bytes of Newton-Schulz on TP pieces vs the whole-matrix gather")
    e.add_argument("--tp", type=int, default=2)
    e.add_argument("--dps", type=int, nargs="+", default=[2, 4, 32])
    args = parser.parse_args()
    if args.what == "step":
        run_step(args.world, args.tp, args.rounds, args.iters, not args.no_deepspeed)
    elif args.what == "tp-bytes":
        run_tp_bytes(args.tp, args.dps)
    elif args.what == "gram":
        run_gram(args.rounds)
    elif args.what == "scaling":
        run_scaling(args.worlds, args.rounds, args.png)
    else:
        run_train(args.steps)


if __name__ == "__main__":
    main()
