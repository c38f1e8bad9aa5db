"""One rank of a TP/PP/DP equivalence run: three optimizer steps of the small WallWM, results to disk.

``tests/parallel/test_equivalence.py`` and ``test_pipeline.py`` start :func:`run_rank` once per
rank (gloo, file rendezvous); the single-process reference is the same function with world size
1. Every rank draws the noise of the whole global batch from the same seeded generator and keeps
its own rows, so each sample sees the same noise as in the single-process run.

Two training paths: :func:`train` (``parallelize_model``: one forward per step, TP x DP) and
:func:`train_pipeline` (the trainer's path: model chunks, megatron's schedules, microbatches).
"""

from __future__ import annotations

import os
import warnings

import torch

warnings.filterwarnings("ignore")

import sys  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.config import ActionPretrainConfig, ModelConfig, OptimConfig  # noqa: E402
from wallwm_pretrain.model import WallWM, build_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))  # the tiny Wan config and batches
from _wan_wallwm_tiny import CFG as WAN_CFG  # noqa: E402
from _wan_wallwm_tiny import wan_batch  # noqa: E402

# the small model of tests/model/test_wallwm.py
K = 4
CFG = ModelConfig(hidden_size=32, num_layers=2, num_heads=4, ffn_hidden_size=64, image_size=16, patch_size=8,
                  frame_stride=K, caption_max_bytes=15)  # captions of at most 16 tokens
GLOBAL_BATCH = 4
STEPS = 3
# warmup 1 so that all three steps run at (near) peak lr and move the weights visibly;
# clipping at 0.5 is active (the norms are ~1-3), so the global norm's clip factor matters.
# replicated Muon with fused weights whole: the TP-gathered optimizer these layouts are compared on
OPTIM = OptimConfig(lr=0.02, adamw_lr=0.003, weight_decay=0.01, warmup_steps=1, min_lr_ratio=0.1, grad_clip=0.5,
                    muon_mode="replicated", muon_split_fused=False)


def global_batch(step: int, t: int = 12, history: int = 0):
    """Seeded batch with unequal lengths, so ranks hold different numbers of real elements;
    ``history`` latent frames (``history * K`` control steps, drawn last) before the T steps."""
    g = torch.Generator().manual_seed(1000 + step)
    b = GLOBAL_BATCH
    frames = torch.randint(0, 256, (b, t, 2, 16, 16, 3), dtype=torch.uint8, generator=g)
    actions = torch.randn(b, t, CFG.action_dim, generator=g)
    state = torch.randn(b, CFG.state_dim, generator=g)
    lengths = torch.tensor([t, 5, t - 3, 3])
    actions = actions * (torch.arange(t)[None, :, None] < lengths[:, None, None])
    caption = torch.randint(2, 258, (b, 10), generator=g)
    caption[:, 0] = 1
    caption[1, 4:] = 0
    caption[3, 7:] = 0
    remaining = lengths.float() + torch.tensor([0.0, 20.0, 3.0, 11.0])  # steps to each event's end
    if history:
        past = torch.randint(0, 256, (b, history * K, *frames.shape[2:]), dtype=torch.uint8, generator=g)
        frames = torch.cat([past, frames], dim=1)
    return frames, actions, state, lengths, caption, remaining


# Context parallelism (``options["cp_data"]``): one view of 24x24 pixels in 8x8 patches (P = 9
# tokens per latent frame) and K_p = 3 over T = 9 steps: 27 video and 9 action tokens per
# sample, neither divisible by 2 or 4, so every split pads; unequal lengths pad the samples too.
CP_CFG = replace(CFG, frame_stride=3, num_views=1, image_size=24)
CP_STEPS = 9


def cp_batch(step: int) -> Batch:
    """A seeded batch of :data:`CP_CFG`'s shapes with unequal event lengths and captions."""
    g = torch.Generator().manual_seed(3000 + step)
    b, t = GLOBAL_BATCH, CP_STEPS
    lengths = torch.tensor([t, 5, 7, 2])
    actions = torch.randn(b, t, CFG.action_dim, generator=g) * (torch.arange(t)[None, :, None] < lengths[:, None, None])
    caption = torch.randint(2, 258, (b, 10), generator=g)
    caption[:, 0] = 1
    caption[1, 4:] = 0
    return Batch(torch.randint(0, 256, (b, t, 1, 24, 24, 3), dtype=torch.uint8, generator=g), actions,
                 torch.randn(b, CFG.state_dim, generator=g), lengths, caption,
                 lengths.float() + torch.tensor([0.0, 7.0, 3.0, 11.0]))


def break_exchange(how: str) -> None:
    """The negative controls of the context-parallel tests: the all-to-all of every split
    attention replaced by a no-op (``noop``: each rank keeps its own chunks) or its received
    chunks put in the wrong order (``swap``)."""
    from wallwm_pretrain.model import sequence_split

    real = sequence_split._all_to_all
    if how == "noop":
        sequence_split._all_to_all = lambda x, group: x.clone()
    elif how == "swap":
        sequence_split._all_to_all = lambda x, group: real(x, group).flip(0)
    else:
        raise ValueError(f"unknown broken exchange {how!r}")


def _layout(p: torch.Tensor) -> dict:
    return {
        "sharded": bool(getattr(p, "tensor_model_parallel", False)),
        "dim": int(getattr(p, "partition_dim", -1)),
        "stride": int(getattr(p, "partition_stride", 1)),
    }


def _snapshot(model: WallWM) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def conditioner_config(vlm: str) -> ModelConfig:
    """The text conditioner's heads on make-tiny's VLM at ``vlm`` (``options["conditioner"]``)."""
    from wallwm_pretrain.config import ConditionerConfig

    heads = ConditionerConfig(vlm=vlm, hidden_size=32, num_heads=2, caption_tokens=12, align_tokens=8, text_dim=16)
    return replace(CFG, kind="conditioner", image_size=32, conditioner=heads)


def conditioner_batch(step: int):
    """A seeded conditioner batch: views, states, unequal prompts, captions and text-state lengths."""
    from wallwm_pretrain.batch import ConditionerBatch

    g = torch.Generator().manual_seed(2000 + step)
    b = GLOBAL_BATCH
    words = ["reach for the red cube", "grasp the green cube", "lift the blue cube", "open the drawer"]
    valid = torch.arange(10)[None, :] < torch.tensor([10, 4, 7, 2])[:, None]
    return ConditionerBatch(
        observation=torch.randint(0, 256, (b, 2, 32, 32, 3), dtype=torch.uint8, generator=g),
        state=torch.randn(b, CFG.state_dim, generator=g),
        remaining=torch.tensor([3.0, 17.0, 8.0, 1.0]) + step,
        lengths=torch.ones(b, dtype=torch.int64),
        task=[f"put the cube away {i}" for i in range(b)],
        done=[[], words[:1], words[:3], words[(step + 1) % 4:]],
        caption=[words[(i + step) % 4] for i in range(b)],
        text_states=torch.randn(b, 10, 16, generator=g) * valid[..., None],
        text_valid=valid,
    )


def model_config(options: dict) -> ModelConfig:
    """The small model, or with ``wan`` the tiny Wan-tower model of tests/model/_wan_wallwm_tiny.py,
    or with ``conditioner`` (a VLM folder) the text conditioner."""
    if options.get("conditioner"):
        return replace(conditioner_config(options["conditioner"]), train_parts=options.get("train_parts", ["all"]))
    base = WAN_CFG if options.get("wan") else CP_CFG if options.get("cp_data") else CFG
    if options.get("anchor_draws"):  # action pretraining's anchor-noise mapping, K action draws
        base = replace(base, action_pretrain=ActionPretrainConfig(mapping="anchor", draws=options["anchor_draws"]),
                       video_loss_weight=0.0)
    return replace(
        base, num_layers=options.get("num_layers", base.num_layers), recompute=options.get("recompute", "none"),
        train_parts=options.get("train_parts", ["all"]),
        video_loss_weight=options.get("video_loss_weight", base.video_loss_weight),
    )


def step_batch(step: int, options: dict) -> Batch:
    """The global batch of a step (latents and text states on the Wan path); with ``history``
    a unified-mode window of that many history latent frames."""
    if options.get("conditioner"):
        return conditioner_batch(step)
    m = options.get("history", 0)
    if options.get("cp_data") and options.get("wan"):  # 1 x 3 patches per latent frame: 3 (3 + M) video tokens
        return wan_batch(1000 + step, t=9, history=m, latent_hw=(2, 6))
    if options.get("cp_data"):
        return cp_batch(step)
    if options.get("wan"):
        return wan_batch(1000 + step, history=m)
    return Batch(*global_batch(step, history=m), history=m)


def train(ctx, gather_tp_matrices: bool = True, overlap: bool = False, bucket_size: int | None = None,
          cfg: ModelConfig = CFG) -> dict:
    """Build, wrap and train the model for STEPS steps on this rank's rows; return a record."""
    from _ddp_reference import parallelize_model, unwrap

    from wallwm_pretrain.optim import LocalMatrices, ReplicatedOptimizerSet, build_optimizer, split_parameters
    from wallwm_pretrain.parallel.state import optimizer_groups

    torch.manual_seed(0)
    model = build_model(cfg, pg_collection=ctx.pg_collection)
    model = parallelize_model(model, ctx, overlap_grad_reduce=overlap, bucket_size=bucket_size)
    bare = unwrap(model)
    if gather_tp_matrices:
        optim = build_optimizer(bare, OPTIM, 10, optimizer_groups(ctx), grad_buffers=[model])
    else:  # the negative control: each TP slice orthogonalised on its own
        named = {n: p for n, p in bare.named_parameters() if p.requires_grad}
        optim = ReplicatedOptimizerSet(named, split_parameters(bare), OPTIM, 10, "float32", optimizer_groups(ctx),
                                       matrices=LocalMatrices(), grad_buffers=[model])
    per_rank = GLOBAL_BATCH // ctx.dp
    lo, hi = ctx.dp_rank * per_rank, (ctx.dp_rank + 1) * per_rank
    record = {"init": _snapshot(bare), "layout": {n: _layout(p) for n, p in bare.named_parameters()}}
    record["buckets"] = sum(len(b.buckets) for b in model.buffers)
    record["grad_buffer_device"] = str(model.buffers[0].grad_data.device)
    record.update(loss=[], loss_video=[], loss_action=[], loss_time=[], grad_norm=[])
    for step in range(STEPS):
        data = global_batch(step)
        noise = bare.sample_noise(Batch(*data), torch.Generator().manual_seed(500 + step)).rows(lo, hi)
        out = model(Batch(*data).rows(lo, hi), noise=noise)
        out["loss"].backward()
        optim.finish_grad_sync()
        if step == 0:
            record["grads0"] = {n: p.main_grad.clone() for n, p in bare.named_parameters()}
        record["grad_norm"].append(optim.clip_grad_norm(OPTIM.grad_clip))
        optim.step()
        optim.zero_grad()
        for key in ("loss", "loss_video", "loss_action", "loss_time"):
            record[key].append(float(out[key]))
    record["final"] = _snapshot(bare)
    record["muon_ns_calls"] = optim.optimizers["muon"].ns_calls
    return record


def _snapshot_chunks(chunks) -> dict:
    return {n: p.detach().clone() for c in chunks for n, p in c.named_parameters()}


def train_pipeline(ctx, options: dict, out_dir: str) -> dict:
    """The trainer's path: this rank's chunks, megatron's schedule, ``microbatches`` per step.

    Options: ``microbatches``; ``load`` (a canonical state file to start from, whose step
    index follows); ``save`` (write the canonical state after the steps, then run one more
    step and record it as ``after``).
    """
    from wallwm_pretrain.optim import build_optimizer
    from wallwm_pretrain.checkpoint.canonical import canonical_checkpoint, load_canonical
    from wallwm_pretrain.parallel.pipeline import PipelineSchedule, build_pipeline_chunks, parallelize_chunks
    from wallwm_pretrain.parallel.state import optimizer_groups

    cfg = model_config(options)
    chunks = build_pipeline_chunks(cfg, ctx, seed=0)
    if options.get("train_parts"):  # a training stage: the trainer freezes before wrapping, so here too
        from wallwm_pretrain.model.freeze import apply_train_parts

        apply_train_parts(chunks, cfg)
    models = parallelize_chunks(chunks, ctx, overlap_grad_reduce=options.get("overlap", False))
    optim_cfg = OPTIM
    if options.get("muon_mode"):  # distributed Muon (owner/gather) instead of the replicated reference
        optim_cfg = replace(OPTIM, muon_mode=options["muon_mode"], muon_split_fused=True)
    optim = build_optimizer(chunks, optim_cfg, 10, optimizer_groups(ctx), grad_buffers=models)
    schedule = PipelineSchedule(models, ctx, options.get("microbatches", 1))
    per_rank = GLOBAL_BATCH // ctx.dp
    lo, hi = ctx.dp_rank * per_rank, (ctx.dp_rank + 1) * per_rank
    record = {"init": _snapshot_chunks(chunks)}
    record["layout"] = {n: _layout(p) for c in chunks for n, p in c.named_parameters()}
    keys = schedule.loss_keys
    record.update({k: [] for k in keys}, grad_norm=[])
    first = 0
    if options.get("load"):
        state = torch.load(options["load"], weights_only=False)
        load_canonical(models, optim, state["model"], state["optimizer"], ctx)
        first = state["step"]

    def step(index: int) -> dict:
        data = step_batch(index, options)
        noise = chunks[0].sample_noise(data, torch.Generator().manual_seed(500 + index)).rows(lo, hi)
        for m in models:
            m.train()
        out = schedule.run(data.rows(lo, hi), noise)
        optim.finish_grad_sync()
        if index == 0:
            record["grads0"] = {n: p.main_grad.clone() for c in chunks for n, p in c.named_parameters()
                                if p.requires_grad}
        values = {k: float(out[k]) for k in keys}
        values["grad_norm"] = optim.clip_grad_norm(optim_cfg.grad_clip)
        optim.step()
        optim.zero_grad()
        return values

    for index in range(first, first + options.get("steps", STEPS)):
        for key, value in step(index).items():
            record[key].append(value)
    optim.finish_param_sync()  # distributed Muon returns the last updates behind the next forward
    record["final"] = _snapshot_chunks(chunks)
    record["muon_ns_calls"] = getattr(optim.optimizers["muon"], "ns_calls", None)
    in_buffers = {id(p) for m in models for b in m.buffers for p in b.params}
    record["bucketed"] = sorted(n for c in chunks for n, p in c.named_parameters() if id(p) in in_buffers)
    record["optimized"] = sorted(n for group in optim.split.__dict__.values() for n in group)
    muon = optim.optimizers["muon"]
    record["muon_plan"] = sorted({m.name for m in muon.plan}) if hasattr(muon, "plan") else None
    if options.get("save"):
        model_state, optim_state = canonical_checkpoint(models, optim, ctx)
        if ctx.rank == 0:
            torch.save({"model": model_state, "optimizer": optim_state, "step": first + STEPS},
                       os.path.join(out_dir, "canonical.pt"))
        record["after_loss"] = step(first + STEPS)["loss"]
        record["after"] = _snapshot_chunks(chunks)
    return record


def run_rank(rank: int, world: int, tp: int, rdzv: str, out_dir: str, options: dict) -> None:
    """One rank: join the group, train (and the per-shard control when TP-only), save a record."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch.distributed as dist

    from wallwm_pretrain.parallel import init_parallel, shutdown_parallel

    torch.set_num_threads(1)  # several ranks share two cores
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    ctx = init_parallel(tp, options.get("pp", 1), "cpu", seed=0, vpp=options.get("vpp", 1), cp=options.get("cp", 1))
    if options.get("break_exchange"):
        break_exchange(options["break_exchange"])
    result = {"ctx": {"tp_rank": ctx.tp_rank, "dp_rank": ctx.dp_rank, "pp_rank": ctx.pp_rank, "tp": ctx.tp,
                      "dp": ctx.dp, "pp": ctx.pp, "cp": ctx.cp, "cp_rank": ctx.cp_rank}}
    if options.get("pipeline"):
        result["run"] = train_pipeline(ctx, options, out_dir)
    else:
        result["run"] = train(ctx, overlap=options.get("overlap", False), bucket_size=options.get("bucket_size"),
                              cfg=model_config(options))
    if options.get("per_shard_control"):
        result["per_shard"] = train(ctx, gather_tp_matrices=False)
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    shutdown_parallel()
