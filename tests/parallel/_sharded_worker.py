"""One rank of a sharded-checkpoint run: train the small WallWM, save or load sharded, record.

``tests/parallel/test_sharded_checkpoint.py`` starts :func:`run_rank` once per rank (gloo, file
rendezvous). The saving run writes the sharded checkpoint exactly as the trainer does
(``rank_pieces`` -> ``copy_off`` -> ``begin_sharded_save`` -> ``finish_sharded_save``), once
synchronously and once on the background thread, and records the canonical state gathered by
the older, independent path (``checkpoint.canonical``). A loading run of another layout reads its
share from the sharded files and records the canonical state gathered the same way, so the
two records must be equal tensor for tensor.
"""

from __future__ import annotations

import os
import signal
import warnings
from datetime import timedelta
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

from dataclasses import replace  # noqa: E402

import _equivalence_worker as eq  # noqa: E402

from wallwm_pretrain.batch import Batch  # noqa: E402

# distributed Muon in owner mode with fused weights split (the trainer's default), ZeRO-1 AdamW
OPTIM = replace(eq.OPTIM, muon_mode="owner", muon_split_fused=True)


def _canonical(models, optim, ctx) -> dict | None:
    from wallwm_pretrain.checkpoint.optim.by_name import by_name
    from wallwm_pretrain.checkpoint.canonical import canonical_checkpoint

    model_state, optim_state = canonical_checkpoint(models, optim, ctx)
    if ctx.rank != 0:
        return None
    return {"model": model_state, "optimizer": by_name(optim_state)}


def save(run_dir: Path, step: int, models, optim, ctx, group, background: bool, config: str = "x: 1\n") -> None:
    """The trainer's sharded save (``Trainer.save``), with a trainer state of the test's own."""
    from wallwm_pretrain import checkpoint as ckpt
    from wallwm_pretrain.checkpoint.background import BackgroundSave
    from wallwm_pretrain.checkpoint.rank_pieces import rank_pieces

    pieces, stage = rank_pieces(models, optim, ctx)
    pieces = ckpt.copy_off(pieces, background)
    tmp, final = ckpt.begin_sharded_save(run_dir, step, ctx.rank, ctx.world_size, group)
    trainer = {"step": step, "layout": [ctx.tp, ctx.pp, ctx.dp]} if ctx.rank == 0 else None

    def write():
        return ckpt.finish_sharded_save(tmp, final, rank=ctx.rank, world=ctx.world_size, group=group, pieces=pieces,
                                        stage=stage, trainer=trainer, config_yaml=config, keep_last=0)

    if not background:
        write()
        return
    live = [p for chunk in models for p in chunk.parameters()]
    kept = [p.detach().clone() for p in live]
    writer = BackgroundSave()
    writer.start(write)
    # training goes on meanwhile: the live weights change, the written copy must not
    for p in live:
        p.data.add_(1.0)
    writer.wait()
    for p, k in zip(live, kept):
        p.data.copy_(k)


def run_rank(rank: int, world: int, tp: int, pp: int, rdzv: str, out_dir: str, options: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch.distributed as dist

    from wallwm_pretrain import checkpoint as ckpt
    from wallwm_pretrain.optim import build_optimizer
    from wallwm_pretrain.parallel import init_parallel, shutdown_parallel
    from wallwm_pretrain.parallel.pipeline import PipelineSchedule, build_pipeline_chunks, parallelize_chunks
    from wallwm_pretrain.checkpoint.rank_pieces import load_rank_pieces
    from wallwm_pretrain.parallel.state import optimizer_groups

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    ctx = init_parallel(tp, pp, "cpu", seed=0, cp=options.get("cp", 1))
    chunks = build_pipeline_chunks(eq.CFG, ctx, seed=0)
    models = parallelize_chunks(chunks, ctx)
    mode_ = options.get("muon_mode", OPTIM.muon_mode)
    optim_cfg = replace(OPTIM, muon_mode=mode_, muon_split_fused=mode_ != "replicated")
    optim = build_optimizer(chunks, optim_cfg, 10, optimizer_groups(ctx), grad_buffers=models)
    schedule = PipelineSchedule(models, ctx, 1)
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=options.get("timeout_s", 60)))
    per_rank = eq.GLOBAL_BATCH // ctx.dp
    lo, hi = ctx.dp_rank * per_rank, (ctx.dp_rank + 1) * per_rank

    def step(index: int) -> float:
        data = eq.global_batch(index)
        noise = chunks[0].sample_noise(Batch(*data), torch.Generator().manual_seed(500 + index)).rows(lo, hi)
        out = schedule.run(Batch(*data).rows(lo, hi), noise)
        optim.clip_grad_norm(OPTIM.grad_clip)
        optim.step()
        optim.zero_grad()
        return float(out["loss"])

    out = Path(out_dir)
    record: dict = {}
    mode = options["mode"]
    if mode == "save":
        for i in range(2):
            step(i)
        save(out / "sync", 2, models, optim, ctx, group, background=False)
        if options.get("async", True):
            save(out / "async", 2, models, optim, ctx, group, background=True)
        record["canonical"] = _canonical(models, optim, ctx)
    elif mode == "load":
        reader = ckpt.sharded_reader(options["path"])
        read, counts = reader.read, {}

        def counting_read(name, offsets, sizes):  # elements this rank reads, per tensor
            counts[name] = counts.get(name, 0) + int(torch.Size(sizes).numel())
            return read(name, offsets, sizes)

        reader.read = counting_read
        load_rank_pieces(models, optim, reader, reader.model_extra, reader.optimizer, ctx)
        record["canonical"] = _canonical(models, optim, ctx)
        record["elements_read"] = counts
        record["shapes"] = {n: reader.shape(n) for n in reader.tensors}
    elif mode == "kill":
        step(0)
        save(out / "run", 1, models, optim, ctx, group, background=False)
        step(1)
        _arm_kill(options, rank)
        save(out / "run", 2, models, optim, ctx, group, background=options.get("background", False))
    torch.save(record, out / f"rank{rank}.pt")
    dist.barrier()
    shutdown_parallel()


def _arm_kill(options: dict, rank: int) -> None:
    """``kill -9`` this rank at a chosen point of the next sharded save."""
    from wallwm_pretrain.checkpoint import sharded

    if rank != options["kill_rank"]:
        return
    if options["kill_at"] == "piece_file":  # half of this rank's file written, nothing reported
        original = sharded.write_rank_file

        def write_then_die(path, r, pieces):
            original(path, r, pieces)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

        sharded.write_rank_file = write_then_die
    elif options["kill_at"] == "before_manifest":  # rank 0: index and trainer state written
        original = sharded.write_manifest

        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        sharded.write_manifest = die
