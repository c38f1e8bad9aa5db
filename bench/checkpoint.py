"""Checkpoint saves at 4 processes: sharded vs gathered, asynchronous vs synchronous.

    python bench/checkpoint.py --layout tp2dp2 --rounds 3

A ~100M-parameter WallWM (hidden 512, 6 coupled layers, FFN 2048: the smoke config scaled up),
distributed Muon in owner mode + ZeRO-1 AdamW with state after one step, gloo on the CPU.
Each variant runs in fresh processes (so no variant inherits another's allocator state):

- ``gathered`` / ``sharded``: one save from a barrier to the end of the commit on every rank;
  time, and the peak resident memory of the busiest process during the save (``VmHWM`` after
  resetting it through ``/proc/self/clear_refs``) above its resident memory before.
- ``sync`` / ``async`` (sharded): ``--rounds`` rounds of one training step then one save; the
  training time blocked per save (the ``save`` call on the training thread: the whole write
  for ``sync``; copy off the accelerator and start the writer for ``async``), and the wall
  time of all rounds including the last write's flush.

Ratios are sharded / gathered and async / sync, from the same invocation.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _ranks import run_ranks  # bench/, the script's own folder

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = ["model.hidden_size=512", "model.num_layers=6", "model.ffn_hidden_size=2048", "model.num_heads=8"]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def run_rank(rank: int, world: int, tp: int, pp: int, variant: str, args, rdzv: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import warnings

    warnings.filterwarnings("ignore")
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from step import synthetic_batch, synthetic_config
    from wallwm_pretrain import checkpoint as ckpt
    from wallwm_pretrain.batch import Batch
    from wallwm_pretrain.checkpoint.background import BackgroundSave
    from wallwm_pretrain.optim import build_optimizer
    from wallwm_pretrain.parallel import init_parallel, shutdown_parallel
    from wallwm_pretrain.checkpoint.canonical import canonical_checkpoint
    from wallwm_pretrain.parallel.pipeline import PipelineSchedule, build_pipeline_chunks, parallelize_chunks
    from wallwm_pretrain.checkpoint.rank_pieces import rank_pieces
    from wallwm_pretrain.parallel.state import optimizer_groups

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    cfg = synthetic_config(args.config, MODEL + [f"parallel.tp={tp}", f"parallel.pp={pp}", "train.device=cpu"])
    ctx = init_parallel(tp, pp, "cpu", seed=0)
    chunks = build_pipeline_chunks(cfg.model, ctx, seed=0)
    models = parallelize_chunks(chunks, ctx)
    optim = build_optimizer(chunks, cfg.optim, 10_000, optimizer_groups(ctx), grad_buffers=models)
    schedule = PipelineSchedule(models, ctx, 1)
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=1800))
    data = synthetic_batch(cfg, ctx.dp, args.event_steps, 16, ctx.device)
    mine = Batch(*[x[ctx.dp_rank : ctx.dp_rank + 1] for x in data])
    rng = torch.Generator()
    run_dir = Path(out).parent / "run"
    writer = BackgroundSave()

    def train_step(step: int) -> None:
        rng.manual_seed(step)
        schedule.run(mine, chunks[0].sample_noise(mine, rng))
        optim.clip_grad_norm(1.0)
        optim.step()
        optim.zero_grad()

    def save(step: int, how: str) -> None:
        if how == "gathered":
            model_state, optim_state = canonical_checkpoint(models, optim, ctx)
            if rank == 0:
                ckpt.save_checkpoint(run_dir, step, model=model_state, optimizer=optim_state, trainer={"step": step},
                                     config_yaml="x: 1\n", keep_last=1)
            dist.barrier(group=group)
            return
        writer.wait()
        pieces, stage = rank_pieces(models, optim, ctx)
        pieces = ckpt.copy_off(pieces, how == "async")
        tmp, final = ckpt.begin_sharded_save(run_dir, step, rank, world, group)

        def write():
            return ckpt.finish_sharded_save(tmp, final, rank=rank, world=world, group=group, pieces=pieces, stage=stage,
                                            trainer={"step": step} if rank == 0 else None, config_yaml="x: 1\n",
                                            keep_last=1)

        if how == "async":
            writer.start(write)
        else:
            write()

    train_step(0)  # optimizer state exists from here on
    record: dict = {"rank": rank}
    if variant in ("gathered", "sharded"):
        dist.barrier()
        before = _rss_kib("VmRSS")
        record["peak_reset"] = _reset_peak()
        t0 = time.perf_counter()
        save(1, variant)
        record["seconds"] = time.perf_counter() - t0
        record["rss_before_gib"] = before / 2**20
        record["peak_gib"] = _rss_kib("VmHWM") / 2**20
    else:
        blocked = []
        dist.barrier()
        t0 = time.perf_counter()
        for step in range(1, args.rounds + 1):
            train_step(step)
            t = time.perf_counter()
            save(step, variant)
            blocked.append(time.perf_counter() - t)
        writer.wait()
        dist.barrier()
        record["blocked"] = blocked
        record["total"] = time.perf_counter() - t0
    Path(out).with_name(f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    shutdown_parallel()


def measure(variant: str, world: int, tp: int, pp: int, args) -> list[dict]:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        out = os.path.join(tmp, "out", "result.json")
        os.makedirs(os.path.dirname(out))
        procs = [ctx.Process(target=run_rank, args=(r, world, tp, pp, variant, args, os.path.join(tmp, "rdzv"), out))
                 for r in range(world)]
        run_ranks(procs, args.timeout, f"variant {variant}")
        return [json.loads(Path(out).with_name(f"rank{r}.json").read_text()) for r in range(world)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/smoke.yaml")
    parser.add_argument("--layout", choices=("tp2dp2", "pp2dp2"), default="tp2dp2")
    parser.add_argument("--rounds", type=int, default=3, help="step + save rounds per sync/async variant")
    parser.add_argument("--event-steps", type=int, default=8, help="control steps of the one event per rank")
    parser.add_argument("--tmp", default=None, help="folder for the checkpoints (default: the system's)")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    tp, pp = (2, 1) if args.layout == "tp2dp2" else (1, 2)

    from step import synthetic_config
    from wallwm_pretrain.model import WallWM

    cfg = synthetic_config(args.config, MODEL)
    params = sum(p.numel() for p in WallWM(cfg.model).parameters())
    print(f"model: {params / 1e6:.1f}M parameters ({' '.join(MODEL)}); layout {args.layout}, 4 processes, gloo, "
          f"{os.cpu_count()} cores", flush=True)
    saves = {v: measure(v, 4, tp, pp, args) for v in ("gathered", "sharded")}
    print("\nsave           time s   busiest process: peak RSS GiB (rise during the save, MiB)")
    for v, recs in saves.items():
        t = max(r["seconds"] for r in recs)
        busiest = max(recs, key=lambda r: r["peak_gib"] - r["rss_before_gib"])
        print(f"{v:<12} {t:8.2f}   rank {busiest['rank']}: {busiest['peak_gib']:.2f} "
              f"(+{(busiest['peak_gib'] - busiest['rss_before_gib']) * 1024:.0f})")
    if not all(r["peak_reset"] for recs in saves.values() for r in recs):
        print("note: /proc/self/clear_refs could not reset the peak; peaks include the build")
    rise = {v: max(r["peak_gib"] - r["rss_before_gib"] for r in recs) for v, recs in saves.items()}
    time_ratio = max(r["seconds"] for r in saves["sharded"]) / max(r["seconds"] for r in saves["gathered"])
    print(f"ratio sharded/gathered: time {time_ratio:.2f}, busiest peak rise {rise['sharded'] / rise['gathered']:.3f}, "
          f"busiest peak {max(r['peak_gib'] for r in saves['sharded']) / max(r['peak_gib'] for r in saves['gathered']):.2f}")

    runs = {v: measure(v, 4, tp, pp, args) for v in ("sync", "async")}
    print(f"\n{args.rounds} rounds of step + save   blocked per save s (median, slowest rank)   all rounds s")
    blocked = {}
    for v, recs in runs.items():
        blocked[v] = max(statistics.median(r["blocked"]) for r in recs)
        total = max(r["total"] for r in recs)
        print(f"{v:<31} {blocked[v]:10.3f}   {total:25.2f}")
    total_ratio = max(r["total"] for r in runs["async"]) / max(r["total"] for r in runs["sync"])
    print(f"ratio async/sync: blocked per save {blocked['async'] / blocked['sync']:.3f}, all rounds {total_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
