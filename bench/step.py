"""Training-step throughput per parallel layout, as ratios to TP1 x PP1 x DP1 measured in the same run.

    python bench/step.py --config configs/smoke.yaml
    python bench/step.py --layouts tp1 tp2 pp2 dp2 --steps 10 --warmup 2

Every layout trains the same model (the config's, e.g. the smoke model) on the same synthetic
global batch (``--batch`` events of ``--event-steps`` control steps, all real: no padding), cut
into ``--microbatches`` microbatches per data-parallel rank, through the trainer's path (model
chunks in megatron DDP, megatron-core's schedule, Muon + AdamW step). A layout is a string such
as ``tp2``, ``pp2dp2`` or ``tp2pp2``, optionally followed by ``:m<N>`` (its own microbatch count)
and ``:full`` / ``:selective`` (activation recomputation). Each layout runs in fresh processes
(gloo on CPU, NCCL on GPUs) that share the machine's ``--threads`` cores evenly.

Per layout it prints the median step time (rank 0, between barriers; the best of
``--repeats`` passes over all layouts, every other pass in reverse order so that no layout
always runs first or last on a shared machine), samples/s, tokens/s (video tokens F * P +
action tokens T per sample, the towers' sequence) and the ratio of its samples/s to the
baseline's (the first layout). On a GPU it adds model FLOPs utilisation from
the analytical formula in ``wallwm_pretrain/model/flops.py`` (3x the forward's matmul FLOPs
per sample, recomputation not counted) over ``--peak-tflops`` per GPU.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _ranks import run_ranks  # bench/, the script's own folder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.step_metrics import PEAK_TFLOPS  # noqa: E402  dense bf16 peaks by device name, for MFU

DEFAULT_LAYOUTS = ["tp1", "tp1:m1", "tp1:selective", "tp1:full", "tp2", "pp2", "dp2", "tp2dp2", "tp2pp2", "pp2dp2"]


def parse_layout(text: str, microbatches: int) -> dict:
    """``tp2pp2:m8:full`` -> {tp: 2, pp: 2, dp: 1, vpp: 1, microbatches: 8, recompute: full}."""
    head, *extras = text.split(":")
    sizes = {"tp": 1, "pp": 1, "dp": 1, "vpp": 1}
    if not re.fullmatch(r"((tp|pp|dp|vpp)\d+)+", head):
        raise SystemExit(f"bad layout {text!r}: expected e.g. tp2, pp2dp2, tp2pp2:m8:full")
    for key, value in re.findall(r"(vpp|tp|pp|dp)(\d+)", head):
        sizes[key] = int(value)
    layout = dict(sizes, microbatches=microbatches, recompute="none", name=text)
    for extra in extras:
        if re.fullmatch(r"m\d+", extra):
            layout["microbatches"] = int(extra[1:])
        elif extra in ("none", "full", "selective"):
            layout["recompute"] = extra
        else:
            raise SystemExit(f"bad layout option {extra!r} in {text!r}: use m<N>, full or selective")
    layout["world"] = sizes["tp"] * sizes["pp"] * sizes["dp"]
    return layout


# Synthetic batches have no shards to take the model's data dims from (``auto``): the smoke
# world's, unless the config or an override sets them.
SYNTHETIC_DIMS = ["model.action_dim=4", "model.state_dim=8", "model.num_views=2", "model.image_size=32"]


def synthetic_config(config, overrides=()):
    from wallwm_pretrain.config import AUTO, DATA_DIMS, load_config

    cfg = load_config(config, overrides)
    given = [f"model.{k}" for k in DATA_DIMS if getattr(cfg.model, k) != AUTO]
    fill = [o for o in SYNTHETIC_DIMS if o.split("=")[0] not in given]
    return load_config(config, fill + list(overrides))


def synthetic_batch(cfg, batch: int, steps: int, caption_len: int, device):
    import torch

    g = torch.Generator().manual_seed(0)
    m = cfg.model
    size = (batch, steps, m.num_views, m.image_size, m.image_size, 3)
    frames = torch.randint(0, 256, size, dtype=torch.uint8, generator=g)
    actions = torch.randn(batch, steps, m.action_dim, generator=g)
    state = torch.randn(batch, m.state_dim, generator=g)
    lengths = torch.full((batch,), steps)
    caption = torch.randint(2, 258, (batch, caption_len), generator=g)
    caption[:, 0] = 1
    remaining = lengths.float()  # every event ends with its sample: the time head's target
    return [x.to(device) for x in (frames, actions, state, lengths, caption, remaining)]


def run_rank(rank: int, layout: dict, args: argparse.Namespace, rdzv: str, out: str) -> None:
    """One rank of one layout: build, warm up, time ``args.steps`` steps; rank 0 writes times."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(layout["world"]), LOCAL_RANK=str(rank))
    import contextlib
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    import torch.distributed as dist

    from wallwm_pretrain.parallel import init_parallel, shutdown_parallel
    from wallwm_pretrain.optim import build_optimizer
    from wallwm_pretrain.parallel.pipeline import PipelineSchedule, build_pipeline_chunks, parallelize_chunks
    from wallwm_pretrain.parallel.state import optimizer_groups

    torch.set_num_threads(max(1, args.threads // layout["world"]))
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{rdzv}", rank=rank,
                            world_size=layout["world"])
    overrides = [f"parallel.tp={layout['tp']}", f"parallel.pp={layout['pp']}", f"parallel.vpp={layout['vpp']}",
                 f"train.microbatches={layout['microbatches']}", f"model.recompute={layout['recompute']}",
                 f"data.batch_size={args.batch // layout['dp']}", f"train.device={args.device}"]
    cfg = synthetic_config(args.config, overrides)
    ctx = init_parallel(layout["tp"], layout["pp"], args.device, seed=0, vpp=layout["vpp"])
    chunks = build_pipeline_chunks(cfg.model, ctx, seed=0)
    models = parallelize_chunks(chunks, ctx)
    optim = build_optimizer(chunks, cfg.optim, 10_000, optimizer_groups(ctx), grad_buffers=models)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    schedule = PipelineSchedule(models, ctx, layout["microbatches"], autocast)
    data = synthetic_batch(cfg, args.batch, args.event_steps, args.caption_len, ctx.device)
    per_rank = args.batch // ctx.dp
    mine = [x[ctx.dp_rank * per_rank:(ctx.dp_rank + 1) * per_rank] for x in data]
    rng = torch.Generator(device=ctx.device)
    times = []
    for step in range(args.warmup + args.steps):
        dist.barrier()
        t0 = time.perf_counter()
        rng.manual_seed(step * 65_537 + ctx.dp_rank)
        noise = chunks[0].sample_noise(Batch(*mine), rng)
        schedule.run(Batch(*mine), noise)
        optim.clip_grad_norm(cfg.optim.grad_clip)
        optim.step()
        optim.zero_grad()
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    if rank == 0:
        record = {"times": times, "memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
        if cuda:
            record["device_name"] = torch.cuda.get_device_name()
        Path(out).write_text(json.dumps(record))
    shutdown_parallel()


def measure(layout: dict, args: argparse.Namespace) -> dict:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        procs = [ctx.Process(target=run_rank, args=(r, layout, args, os.path.join(tmp, "rdzv"), out))
                 for r in range(layout["world"])]
        run_ranks(procs, args.timeout, f"layout {layout['name']}")
        return json.loads(Path(out).read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/smoke.yaml")
    parser.add_argument("--layouts", nargs="+", default=DEFAULT_LAYOUTS, help="first = baseline")
    parser.add_argument("--batch", type=int, default=8, help="global batch (events per step)")
    parser.add_argument("--microbatches", type=int, default=4, help="per data-parallel rank, unless :m<N>")
    parser.add_argument("--event-steps", type=int, default=32, help="control steps per event")
    parser.add_argument("--caption-len", type=int, default=32, help="caption tokens per event")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per layout")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="cores shared by a layout's ranks")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="per GPU, for MFU (default: by device name)")
    parser.add_argument("--repeats", type=int, default=1, help="passes over all layouts; the best counts")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)

    from wallwm_pretrain.model.flops import SampleShape, train_flops

    cfg = synthetic_config(args.config)
    shape = SampleShape.of(cfg.model, args.event_steps, cfg.model.frame_stride, args.caption_len)
    tokens_per_sample = shape.video_tokens + shape.action_tokens
    flops_per_sample = train_flops(cfg.model, shape)
    layouts = [parse_layout(text, args.microbatches) for text in args.layouts]
    print(f"model {args.config}: {cfg.model.num_layers} coupled layers, hidden {cfg.model.hidden_size}; "
          f"global batch {args.batch} x {args.event_steps} steps; {tokens_per_sample} tower tokens and "
          f"{flops_per_sample / 1e9:.3f} GFLOP (model, fwd+bwd) per sample; {args.threads} threads; "
          f"{args.steps} timed steps after {args.warmup}, best of {args.repeats}", flush=True)
    best: dict[str, tuple[float, dict]] = {}
    for rep in range(args.repeats):
        for layout in layouts if rep % 2 == 0 else layouts[::-1]:
            result = measure(layout, args)
            step_s = statistics.median(result["times"])
            print(json.dumps({"pass": rep, "layout": layout["name"], "step_s": round(step_s, 4)}), flush=True)
            if layout["name"] not in best or step_s < best[layout["name"]][0]:
                best[layout["name"]] = (step_s, result)
    rows = []
    base = args.batch / best[layouts[0]["name"]][0]
    for layout in layouts:
        step_s, result = best[layout["name"]]
        samples_s = args.batch / step_s
        row = {"layout": layout["name"], "world": layout["world"], "micro": layout["microbatches"],
               "step_s": step_s, "samples_s": samples_s, "tokens_s": samples_s * tokens_per_sample,
               "ratio": samples_s / base}
        if args.device == "cuda":
            name = result.get("device_name", "")
            peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), 0)
            row["mfu"] = flops_per_sample * samples_s / (peak * 1e12 * layout["world"]) if peak else float("nan")
            row["memory_gib"] = result["memory_gib"]
        rows.append(row)
    header = "| layout | processes | microbatches | step (s) | samples/s | tokens/s | ratio |"
    if args.device == "cuda":
        header += " MFU | peak mem (GiB) |"
    print("\n" + header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        line = (f"| {r['layout']} | {r['world']} | {r['micro']} | {r['step_s']:.3f} | {r['samples_s']:.1f} | "
                f"{r['tokens_s']:.0f} | {r['ratio']:.2f} |")
        if args.device == "cuda":
            line += f" {r['mfu']:.3f} | {r['memory_gib']:.2f} |"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
