"""Distributed Muon: optimizer step time, Newton-Schulz scaling, training-step cost of Muon.

    python bench/muon.py step --world 2          # (a) owner vs gather vs ZeRO-1 AdamW vs DeepSpeed ZeRO-2 Muon
    python bench/muon.py scaling --worlds 1 2 4  # (b) Newton-Schulz time vs processes, PNG with the 1/world line
    python bench/muon.py train                   # (c) smoke-model training step, Muon vs AdamW, one process

(a) and (b) run a stack of transformer-shaped matrices (per layer: QKV 3h x h, proj h x h, gated
fc1 2f x h, fc2 h x f; h=256, f=1024, 4 layers) plus an embedding and norms for AdamW, on gloo
processes with file rendezvous, one thread each. Gradients are seeded and identical on every
rank (as after the data-parallel all-reduce). All contenders of a table run in the same
processes, interleaved round by round; every time is the maximum over ranks (the step ends when
the slowest rank does), median over rounds. Ratios are against ``owner`` of the same run.

DeepSpeed computes its Muon update while it flattens the reduced gradient partitions, partly
inside ``engine.backward``; its row therefore also reports the whole iteration (forward,
backward with its reduce-scatter, step) next to ours (forward, backward, a flat all-reduce
emulating DDP, step). Its Newton-Schulz is the ``standard`` quintic under ``torch.compile``,
forced to fp32 here (``is_bf16_supported`` patched to False) to match ours.
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
    return OptimizerGroups(stage=None, tp=None, dp=None, tp_rank=0, tp_size=1, dp_rank=rank, dp_size=world)


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


def _deepspeed_engine(model: nn.Module):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    type(get_accelerator()).is_bf16_supported = lambda self: False  # fp32 Newton-Schulz, as ours
    cfg = {
        "train_micro_batch_size_per_gpu": BATCH,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "Muon", "params": {"lr": OPTIM.lr, "momentum": OPTIM.momentum,
                                                 "weight_decay": OPTIM.weight_decay, "ns_method": "standard"}},
        "zero_optimization": {"stage": 2},
        "gradient_clipping": 0.0,
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    return engine


def _step_worker(rank: int, world: int, rdzv: str, out: str, rounds: int, with_deepspeed: bool) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("BENCH_PORT", "29533"))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    contenders: dict[str, dict] = {}
    for name, mode, overlap in (("owner", "owner", True), ("owner_sync", "owner", False), ("gather", "gather", True),
                                ("adamw", "adamw", True)):
        torch.manual_seed(0)
        model = BenchNet()
        contenders[name] = {"model": model, "opt": _our_set(model, mode, overlap)}
    deepspeed_error = None
    if with_deepspeed:
        try:
            torch.manual_seed(0)
            contenders["deepspeed"] = {"engine": _deepspeed_engine(BenchNet())}
        except Exception as exc:  # reported in the table instead of a number
            deepspeed_error = f"{type(exc).__name__}: {exc}"
    times: dict[str, dict[str, list[float]]] = {k: {"step": [], "iteration": []} for k in contenders}
    fb: list[float] = []
    for r in range(rounds + 2):  # two warm-up rounds (torch.compile, first-touch allocations)
        for name, c in contenders.items():
            if name == "deepspeed":
                engine = c["engine"]

                def iteration():
                    loss = engine(_tokens(r))
                    engine.backward(loss)
                    engine.step()

                t_it = _timed(iteration)
                t_step = float("nan")
            else:
                model, opt = c["model"], c["opt"]
                _seed_grads(model, r)
                t_step = _timed(opt.step)
                opt.zero_grad()

                def iteration():
                    model(_tokens(r)).backward()
                    _flat_all_reduce(model)
                    opt.step()
                    opt.zero_grad()

                t_it = _timed(iteration)
            if r >= 2:
                times[name]["step"].append(t_step)
                times[name]["iteration"].append(t_it)
        model = contenders["owner"]["model"]

        def fwd_bwd():
            model(_tokens(r)).backward()

        t = _timed(fwd_bwd)
        contenders["owner"]["opt"].zero_grad()
        if r >= 2:
            fb.append(t)
    state = {k: c["opt"].state_numel() for k, c in contenders.items() if "opt" in c}
    if rank == 0:
        Path(out).write_text(json.dumps({"times": times, "fwd_bwd": fb, "state": state, "deepspeed_error": deepspeed_error}))
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


def run_step(world: int, rounds: int, with_deepspeed: bool) -> None:
    res = _launch(_step_worker, world, rounds, with_deepspeed)
    med = {k: {kind: statistics.median(v) if v and v[0] == v[0] else float("nan") for kind, v in t.items()}
           for k, t in res["times"].items()}
    fb = statistics.median(res["fwd_bwd"])
    base_step, base_it = med["owner"]["step"], med["owner"]["iteration"]
    print(f"\n(a) optimizer step, DP={world} (gloo, 1 thread/rank), {rounds} rounds; fwd+bwd alone {fb * 1e3:.1f} ms\n")
    print("| optimizer | step (ms) | step / owner | iteration (ms) | iteration - fwd/bwd (ms) | vs owner | state elems/rank |")
    print("|---|---|---|---|---|---|---|")
    labels = {"owner": "Muon owner (ours)", "owner_sync": "Muon owner, no overlap", "gather": "Muon gather (Moonlight-style)",
              "adamw": "AdamW ZeRO-1 (ours)", "deepspeed": "DeepSpeed ZeRO-2 Muon"}
    for k, m in med.items():
        state = res["state"].get(k)
        state_txt = f"{state['muon'] + state['adamw']:,}" if state else "n/a"
        step_txt = f"{m['step'] * 1e3:.1f} | {m['step'] / base_step:.2f}" if m["step"] == m["step"] else "in backward | -"
        over = m["iteration"] - fb
        print(f"| {labels[k]} | {step_txt} | {m['iteration'] * 1e3:.1f} | {over * 1e3:.1f} | "
              f"{over / (base_it - fb):.2f} | {state_txt} |")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("step", help="(a) optimizer step: owner vs gather vs ZeRO-1 AdamW vs DeepSpeed")
    a.add_argument("--world", type=int, default=2)
    a.add_argument("--rounds", type=int, default=7)
    a.add_argument("--no-deepspeed", action="store_true")
    b = sub.add_parser("scaling", help="(b) Newton-Schulz time vs processes")
    b.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    b.add_argument("--rounds", type=int, default=7)
    b.add_argument("--png", type=Path, default=Path("docs/muon_ns_scaling.png"))
    c = sub.add_parser("train", help="(c) smoke-model training step, Muon vs AdamW")
    c.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    if args.what == "step":
        run_step(args.world, args.rounds, not args.no_deepspeed)
    elif args.what == "scaling":
        run_scaling(args.worlds, args.rounds, args.png)
    else:
        run_train(args.steps)


if __name__ == "__main__":
    main()
