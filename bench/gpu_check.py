"""The Python parts of the GPU check (``bench/gpu_check.sh``) and its one result file.

    python bench/gpu_check.py mfu --json R.json --size gpu --optimizer adamw
    python bench/gpu_check.py attention --json R.json --size gpu
    python bench/gpu_check.py inference --json R.json --size gpu --mode eager
    python bench/gpu_check.py smoke --json R.json --part smoke-test --runs RUNS --run smoke --stop 200
    python bench/gpu_check.py record --json R.json --part NAME --status ok --seconds 12.3
    python bench/gpu_check.py summary --json R.json      # Muon's step over AdamW's, MFUs, latencies
    python bench/gpu_check.py table --json R.json

Every part appends one record or more (``{"part": ..., "status": ..., ...}``) to the JSON file's
``records`` list, rewriting the file at once, so that a part killed at its time budget leaves the
earlier ones in place; ``table`` prints them as a Markdown table. ``--size tiny`` (the CPU dry
run) and ``--size gpu`` (one H100 or H200) pick the shapes:

- **mfu**: the Wan path's dual-tower model (the 5B preset ``configs/wallwm_wan22_5b.yaml``: Wan2.2
  TI2V-5B's width 3072, 24 heads, FFN 14336, with the action tower at 1024) cut to ``--layers``
  coupled layers (10 by default: what fits one 80 GB GPU with AdamW's two moments in fp32), one
  view, 31 latent frames of 44 x 80 (704 x 1280 video through Wan2.2's VAE: 27,280 video tokens),
  512 text tokens, 124 control steps, batch 1, ``model.recompute=full``, bf16 autocast. Built and
  trained as the trainer does it (megatron-core DDP, the pipeline schedule at PP 1, the run's
  optimizer set: ``--optimizer muon`` = Muon + AdamW in owner mode, ``adamw`` = every parameter
  in AdamW through the same set). Records the median step time, tokens/s, MFU from the planner's
  FLOPs (``python -m wallwm_pretrain.plan``: FlopCounterMode on the meta forward, x3) over
  ``train.peak_tflops`` (or the GPU's dense bf16 peak by name), the optimizer's share of the step
  (the clip, step and zero_grad calls only: owner-mode Muon reduces gradients to their homes during
  backward and returns updates before the next forward, so Muon's whole cost is the step over
  AdamW's, ``summary``'s ``muon_step_over_adamw``),
  the attention kernels of one profiled step, and the peak GPU memory against the planner's
  prediction for the same config and optimizer.
- **attention**: the attention core (``model/attention_core.fused_attention``, what every tower
  calls) at the same training shapes, forward + backward in bf16: which SDPA kernel torch runs
  (the ATen op in the profiler: flash, memory-efficient, cuDNN or math) with the key-padding mask
  the towers pass and without it, and each backend's time where it accepts the call.
- **inference**: the *Wan tower's denoising forward per chunk*, NOT a policy: eval/policy.py does
  not serve Wan checkpoints yet. The whole 30-layer 5B-preset model (random weights; fp32 weights
  under bf16 autocast as in training, since the model is not written for bf16 weights; eval, no
  gradients) denoises one unified-mode chunk -- 2 clean history latent frames, the clean anchor
  and 3 future latent frames (16 control steps at K_p = 4) of one 704 x 1280 view (6 x 880 = 5,280
  video tokens), 512 text tokens -- by Euler steps of ``WanWallWM.denoise`` on both towers' noise; per-chunk latency
  at 1, 2, 4 and 10 steps, ``--mode eager``, ``compile`` (torch.compile of the denoiser) or
  ``cudagraph`` (torch.compile mode reduce-overhead: CUDA graphs). The VAE encode of the
  observation, the text encoder and the action post-processing are not included.
- **smoke**: reads the two invocations of a smoke run (``make smoke-train``): losses fall,
  samples/s, peak memory (the trainer's log), and whether the resumed run is exact against a
  straight run of the same steps (``--straight``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GIB = 2**30


# --------------------------------------------------------------------------- the result file
def load(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"records": []}


def append(path: Path, record: dict) -> dict:
    """Add ``record`` to the file's records (written to a temporary file, then renamed)."""
    data = load(path)
    record = {k: _finite(v) for k, v in record.items()}
    data["records"].append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
    print("gpu-check record: " + json.dumps(record), flush=True)
    return record


def _finite(v):
    """JSON has no NaN: a non-finite float is stored as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


# --------------------------------------------------------------------------- shapes
@dataclasses.dataclass(frozen=True)
class Shape:
    overrides: tuple[str, ...]
    latent_hw: tuple[int, int]
    frames: int  # latent frames (history + anchor + future) of one sample
    steps: int  # control steps (action tokens)
    text: int  # text tokens
    history: int = 0


# the model dims the bench sets itself (no shards to read them from)
DIMS = ("model.num_views=1", "model.action_dim=7", "model.state_dim=8", "model.image_size=32")
TINY_WAN = ("model.wan.num_attention_heads=2", "model.wan.attention_head_dim=12", "model.wan.in_channels=4",
            "model.wan.out_channels=4", "model.wan.text_dim=16", "model.wan.freq_dim=16", "model.wan.ffn_dim=48",
            "model.wan.rope_max_seq_len=64", "model.hidden_size=16", "model.num_heads=2",
            "model.ffn_hidden_size=32")


def train_shape(size: str, layers: int) -> Shape:
    if size == "tiny":
        return Shape(DIMS + TINY_WAN + (f"model.num_layers={layers}", "data.batch_size=1"), (4, 4), 3, 12, 8)
    return Shape(DIMS + (f"model.num_layers={layers}", "data.batch_size=1"), (44, 80), 31, 124, 512)


def chunk_shape(size: str, layers: int) -> Shape:
    """Unified mode's chunk: 2 history latent frames, then ceil(steps / K_p) frames from the anchor
    on (16 steps at K_p = 4: the anchor and 3 future frames)."""
    if size == "tiny":
        return Shape(DIMS + TINY_WAN + (f"model.num_layers={layers}",), (4, 4), 2 + 1, 4, 8, history=2)
    return Shape(DIMS + (f"model.num_layers={layers}",), (44, 80), 2 + 4, 16, 512, history=2)


def load_cfg(shape: Shape, extra: list[str]):
    from wallwm_pretrain.config import load_config

    return load_config([str(REPO / "configs" / "wallwm_wan22_5b.yaml")], list(shape.overrides) + list(extra))


def make_batch(cfg, shape: Shape, device, batch: int = 1, seed: int = 0):
    """A synthetic Wan-path batch: every control step real (no padding), all text tokens valid."""
    import torch

    from wallwm_pretrain.batch import Batch

    g = torch.Generator().manual_seed(seed)
    m = cfg.model
    t = shape.steps
    out = Batch(
        frames=torch.zeros(batch, t, 1, 1, 1, 3, dtype=torch.uint8),
        actions=torch.randn(batch, t, int(m.action_dim), generator=g),
        state=torch.randn(batch, int(m.state_dim), generator=g),
        lengths=torch.full((batch,), t),
        caption=torch.ones(batch, m.caption_max_bytes + 1, dtype=torch.long),
        remaining=torch.full((batch,), float(t)),
        latents=torch.randn(batch, int(m.num_views), m.wan.in_channels, shape.frames, *shape.latent_hw, generator=g),
        text_states=torch.randn(batch, shape.text, m.wan.text_dim, generator=g),
        text_valid=torch.ones(batch, shape.text, dtype=torch.bool),
        history=shape.history,
    )
    return dataclasses.replace(out, **{f.name: getattr(out, f.name).to(device) for f in dataclasses.fields(out)
                                       if hasattr(getattr(out, f.name), "to")})


def device_info(device) -> dict:
    import torch

    info = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / GIB
    return info


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device) -> float:
    from wallwm_pretrain.step_metrics import peak_memory_gib

    return peak_memory_gib(device)


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


SDPA_OPS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_backward": "flash",
    "aten::_scaled_dot_product_efficient_attention": "memory-efficient",
    "aten::_scaled_dot_product_efficient_attention_backward": "memory-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_cudnn_attention_backward": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (cpu)",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward": "flash (cpu)",
}


@contextlib.contextmanager
def sdpa_kernels(counts: dict):
    """Count the SDPA kernels that run inside (profiler's ATen op names), into ``counts``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        yield
    for ev in prof.key_averages():
        if ev.key in SDPA_OPS:
            key = ev.key.removeprefix("aten::_scaled_dot_product_")
            counts[key] = counts.get(key, 0) + ev.count


# --------------------------------------------------------------------------- mfu
def planner(cfg, shape: Shape, adamw_only: bool) -> dict:
    """The planner's FLOPs per sample and its memory prediction for this config (pp rank 0)."""
    from wallwm_pretrain.plan.__main__ import rank_memory
    from wallwm_pretrain.plan.measure import measure_forward, meta_batch, meta_model
    from wallwm_pretrain.plan.memory import Layout

    model_cfg = dataclasses.replace(cfg.model, recompute="none")
    micro = cfg.data.batch_size // cfg.train.microbatches
    measured = measure_forward(meta_model(model_cfg), meta_batch(model_cfg, micro, shape.steps, shape.latent_hw,
                                                                  shape.text))
    mem = rank_memory(cfg, measured, Layout(1, 1, 1), 0, adamw_only=adamw_only)
    return {"forward_flops_per_sample": measured.flops / micro, "memory": mem}


def run_mfu(args) -> int:
    import torch
    import torch.distributed as dist

    from wallwm_pretrain.optim import build_optimizer
    from wallwm_pretrain.parallel import init_parallel, shutdown_parallel
    from wallwm_pretrain.parallel.pipeline import (
        PipelineSchedule,
        build_pipeline_chunks,
        parallelize_chunks,
    )
    from wallwm_pretrain.parallel.state import optimizer_groups
    from wallwm_pretrain.step_metrics import peak_tflops

    shape = train_shape(args.size, args.layers)
    cfg = load_cfg(shape, [f"model.recompute={args.recompute}", f"train.peak_tflops={args.peak_tflops}"]
                   + args.overrides)
    t0 = time.perf_counter()
    plan = planner(cfg, shape, adamw_only=args.optimizer == "adamw")
    plan_s = time.perf_counter() - t0
    ctx = init_parallel(1, 1, args.device, seed=0)
    dev = ctx.device
    cuda = dev.type == "cuda"
    t0 = time.perf_counter()
    chunks = build_pipeline_chunks(cfg.model, ctx, seed=0)
    if args.optimizer == "adamw":  # the baseline: every parameter to AdamW, through the same optimizer set
        for chunk in chunks:
            for p in chunk.parameters():
                p.use_adamw = True
    models = parallelize_chunks(chunks, ctx)
    optim = build_optimizer(chunks, cfg.optim, 1000, optimizer_groups(ctx), grad_buffers=models)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    schedule = PipelineSchedule(models, ctx, 1, autocast)
    batch = make_batch(cfg, shape, dev)
    sync(dev)
    build_s = time.perf_counter() - t0
    reset_peak(dev)
    rng = torch.Generator(device=dev)
    step_s, opt_s, losses, kernels = [], [], [], {}
    for step in range(args.warmup + args.steps + 1):
        profiled = step == args.warmup + args.steps  # one more step, under the profiler: its kernels
        with sdpa_kernels(kernels) if profiled else contextlib.nullcontext():
            sync(dev)
            t_start = time.perf_counter()
            rng.manual_seed(step)
            noise = chunks[0].sample_noise(batch, rng)
            out = schedule.run(batch, noise)
            sync(dev)
            t_fb = time.perf_counter()
            optim.clip_grad_norm(cfg.optim.grad_clip)
            optim.step()
            optim.zero_grad()
            sync(dev)
            t_end = time.perf_counter()
        if args.warmup <= step < args.warmup + args.steps:
            step_s.append(t_end - t_start)
            opt_s.append(t_end - t_fb)
        loss = out.get("loss") if isinstance(out, dict) else None
        if loss is not None:
            losses.append(float(loss))
    optim.finish_param_sync()
    peak_mem = peak_gib(dev)
    med = statistics.median(step_s)
    tokens = shape.frames * (shape.latent_hw[0] // 2) * (shape.latent_hw[1] // 2) + shape.steps  # video + action
    train_flops = 3 * plan["forward_flops_per_sample"]
    analytical = chunks[0].train_flops(batch)
    peak = peak_tflops(dev, cfg.train.peak_tflops)
    mem = plan["memory"]
    record = {
        "part": f"mfu-{args.optimizer}", "status": "ok", **device_info(dev),
        "layers": cfg.model.num_layers, "recompute": cfg.model.recompute, "optimizer": args.optimizer,
        "params": sum(p.numel() for c in chunks for p in c.parameters()),
        "tokens_per_sample": tokens, "latent_frames": shape.frames, "latent_hw": list(shape.latent_hw),
        "text_tokens": shape.text, "control_steps": shape.steps,
        "steps_timed": len(step_s), "step_s_median": med, "step_s_all": step_s,
        "optimizer_s_median": statistics.median(opt_s), "optimizer_share": statistics.median(opt_s) / med,
        "tokens_per_s": tokens / med, "samples_per_s": 1 / med,
        "planner_train_flops_per_sample": train_flops, "analytical_train_flops_per_sample": analytical,
        "achieved_tflops": train_flops / med / 1e12, "peak_tflops": peak,
        "mfu": (train_flops / med / (peak * 1e12)) if peak else None,
        "mfu_analytical": (analytical / med / (peak * 1e12)) if peak else None,
        "losses": losses, "losses_finite": all(math.isfinite(x) for x in losses),
        "sdpa_kernels_in_step": kernels,
        "peak_memory_gib": peak_mem, "memory_kind": "cuda max allocated" if dev.type == "cuda" else "peak rss",
        "planner_memory_gib": mem["total"] / GIB,
        "planner_memory_parts_gib": {k: v / GIB for k, v in mem.items() if k != "params"},
        "planner_note": "fp32 activations (bf16 autocast keeps most at half); recompute=full counts kept inputs + "
                        "one layer's activations; Newton-Schulz buffers and the allocator's cache not counted",
        "build_s": build_s, "planner_s": plan_s,
    }
    append(args.json, record)
    dist.barrier()
    shutdown_parallel()
    return 0


# --------------------------------------------------------------------------- attention
def run_attention(args) -> int:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from wallwm_pretrain.model.attention_core import fused_attention

    dev = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = train_shape(args.size, 1)
    cfg = load_cfg(shape, [])
    w, m = cfg.model.wan, cfg.model
    s_video = shape.frames * (shape.latent_hw[0] // 2) * (shape.latent_hw[1] // 2)
    # (name, s_q, s_k, heads, head_dim): the call sites of one coupled layer at the training shapes
    sites = [("video self", s_video, s_video, w.num_attention_heads, w.attention_head_dim),
             ("video-text cross", s_video, shape.text, w.num_attention_heads, w.attention_head_dim),
             ("action self", shape.steps, shape.steps, m.num_heads, m.hidden_size // m.num_heads),
             ("action-video coupling", shape.steps, s_video, m.num_heads, m.hidden_size // m.num_heads)]
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "memory-efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    g = torch.Generator(device=dev).manual_seed(0)

    def call(sq, sk, heads, hd, masked):
        q = torch.randn(sq, 1, heads, hd, device=dev, dtype=dtype, generator=g, requires_grad=True)
        k = torch.randn(sk, 1, heads, hd, device=dev, dtype=dtype, generator=g, requires_grad=True)
        v = torch.randn(sk, 1, heads, hd, device=dev, dtype=dtype, generator=g, requires_grad=True)
        valid = torch.ones(1, sk, dtype=torch.bool, device=dev) if masked else None
        return lambda: fused_attention(q, k, v, valid).float().sum().backward()

    def timed(fn, reps):
        fn()
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(dev)
        return (time.perf_counter() - t0) / reps

    for name, sq, sk, heads, hd in sites:
        for masked in (True, False):
            fn = call(sq, sk, heads, hd, masked)
            chosen: dict = {}
            with sdpa_kernels(chosen):
                fn()
                sync(dev)
            rec = {"part": "attention", "status": "ok", "site": name, "masked": masked, "s_q": sq, "s_k": sk,
                   "heads": heads, "head_dim": hd, "dtype": str(dtype).removeprefix("torch."), **device_info(dev),
                   "kernels_chosen": chosen, "fwd_bwd_ms_default": timed(fn, args.reps) * 1e3}
            forced = {}
            if name == "video self":  # what each backend costs at the biggest call (where it accepts it)
                for bname, backend in backends.items():
                    if bname == "math" and cuda and sq * sk > 2**26:
                        forced[bname] = "skipped: the math kernel holds the [s_q, s_k] score matrix"
                        continue
                    try:
                        with sdpa_kernel([backend]):
                            forced[bname] = round(timed(fn, args.reps) * 1e3, 4)
                    except RuntimeError as exc:
                        forced[bname] = "refused: " + str(exc).splitlines()[0][:160]
                rec["fwd_bwd_ms_forced"] = forced
            append(args.json, rec)
    return 0


# --------------------------------------------------------------------------- inference
def run_inference(args) -> int:
    import torch

    from wallwm_pretrain.model import build_model
    from wallwm_pretrain.model.flow_matching import FlowNoise
    from wallwm_pretrain.model.wan.flow import per_token_timesteps
    from wallwm_pretrain.parallel import init_parallel, shutdown_parallel

    shape = chunk_shape(args.size, args.layers)
    cfg = load_cfg(shape, args.overrides)
    ctx = init_parallel(1, 1, args.device, seed=0)
    dev = ctx.device
    cuda = dev.type == "cuda"
    # as the trainer runs it: fp32 weights under bf16 autocast (the model makes some tensors in fp32
    # itself -- timestep and sinusoidal embeddings -- and is not written for bf16 weights); one
    # autocast region per chunk, so each weight is cast once per chunk, not once per step
    bf16 = args.precision == "bf16" or (args.precision == "auto" and cuda)
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    t0 = time.perf_counter()
    with torch.device(dev):
        model = build_model(cfg.model)
    model = model.eval()
    batch = make_batch(cfg, shape, dev)
    build_s = time.perf_counter() - t0
    g = torch.Generator(device=dev).manual_seed(0)
    noise = FlowNoise(torch.ones(1, device=dev), torch.randn(batch.latents.shape, device=dev, generator=g),
                      torch.ones(1, device=dev), torch.randn(batch.actions.shape, device=dev, generator=g))
    with torch.no_grad():
        base = model.flow_inputs(batch, noise)  # latents 0..M clean, the rest pure noise (t = 1)
    b, _, _, n, hh, ww = base.xt_video.shape
    pt, ph, pw = model.wan.patch_size
    clean = shape.history + 1
    denoise = model.denoise
    if args.mode in ("compile", "cudagraph"):
        denoise = torch.compile(model.denoise, mode="reduce-overhead" if args.mode == "cudagraph" else None,
                                dynamic=False)

    def chunk(steps: int):
        """Euler steps of both towers' flow from t = 1 to 0; the clean frames stay clean."""
        with autocast():
            return _chunk(steps)

    def _chunk(steps: int):
        xv, xa = base.xt_video.clone(), base.xt_action.clone()
        ts = torch.linspace(1.0, 0.0, steps + 1, device=dev)
        for i in range(steps):
            t, dt = ts[i].reshape(1), ts[i + 1] - ts[i]
            inputs = dataclasses.replace(
                base, xt_video=xv, xt_action=xa, t_action=t.expand(b),
                timestep=per_token_timesteps(t.expand(b), (n // pt, hh // ph, ww // pw), clean_frames=clean))
            vel_v, vel_a = denoise(inputs)
            xv = torch.cat([xv[:, :, :, :clean], (xv + dt * vel_v.float())[:, :, :, clean:]], dim=3)
            xa = xa + dt * vel_a.float()
        return xv, xa

    reset_peak(dev)
    rec = {"part": f"inference-{args.mode}", "status": "ok", **device_info(dev), "mode": args.mode,
           "what": "WanWallWM.denoise Euler steps for one chunk (both towers), random weights; no VAE, "
                   "no text encoder, no policy server",
           "layers": cfg.model.num_layers, "precision": "fp32 weights, bf16 autocast" if bf16 else "fp32",
           "params": sum(p.numel() for p in model.parameters()), "latent_frames": shape.frames,
           "history_frames": shape.history, "latent_hw": list(shape.latent_hw), "control_steps": shape.steps,
           "text_tokens": shape.text, "build_s": build_s, "latency_ms": {}, "latency_ms_all": {}}
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = chunk(1)  # warm-up (and compilation)
        sync(dev)
        rec["first_call_s"] = time.perf_counter() - t0
        rec["finite"] = bool(torch.isfinite(out[0]).all() and torch.isfinite(out[1]).all())
        for steps in args.denoise_steps:
            chunk(steps)  # warm this step count once
            times = []
            for _ in range(args.reps):
                sync(dev)
                t0 = time.perf_counter()
                chunk(steps)
                sync(dev)
                times.append(time.perf_counter() - t0)
            rec["latency_ms"][str(steps)] = statistics.median(times) * 1e3
            rec["latency_ms_all"][str(steps)] = [x * 1e3 for x in times]
    rec["peak_memory_gib"] = peak_gib(dev)
    rec["weights_gib"] = sum(p.numel() * p.element_size() for p in model.parameters()) / GIB
    chunk_s = shape.steps / 10.0  # 10 Hz control: a chunk of 16 steps lasts 1.6 s
    rec["chunk_duration_at_10hz_s"] = chunk_s
    append(args.json, rec)
    shutdown_parallel()
    return 0


# --------------------------------------------------------------------------- smoke runs
def run_smoke(args) -> int:
    from wallwm_pretrain.checkpoint import find_latest, load_checkpoint

    def history(run: Path) -> list[float]:
        state = load_checkpoint(find_latest(run)).trainer
        return [v for _, v in json.loads(state["history"])["loss"]]

    run = args.runs / args.run
    summary = json.loads((run / "summary.json").read_text())
    losses = history(run)
    k = max(1, min(10, len(losses) // 3))  # the first and last k steps (10 of a full smoke run)
    rec = {"part": args.part, "status": "ok", "steps": len(losses), "stop": args.stop, "window": k,
           "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k,
           "samples_per_s_resumed": summary["samples_per_s"], "resumed_from": summary["resumed_from"]}
    rec["losses_fall"] = rec["loss_last"] < rec["loss_first"]
    rec["losses_finite"] = all(math.isfinite(x) for x in losses)
    log = Path(args.log) if args.log else None
    if log and log.exists():
        text = log.read_text(errors="replace")
        rates = [float(x.split(" samples/s")[0].split("| ")[-1]) for x in text.splitlines() if " samples/s |" in x]
        mems = [float(x.split(" GiB")[0].split(" ")[-1]) for x in text.splitlines()
                if ("cuda peak " in x or "peak rss " in x) and " GiB" in x]
        if rates:
            rec["samples_per_s_logged_median"] = statistics.median(rates)
        if mems:
            rec["peak_memory_gib_logged"] = max(mems)
            rec["memory_kind"] = "cuda max allocated" if "cuda peak" in text else "peak rss"
    if args.straight:
        straight = history(args.runs / args.straight)
        n = min(len(straight), len(losses))
        before = [abs(a - b) for a, b in zip(straight[: args.stop], losses[: args.stop])]
        after = [abs(a - b) for a, b in zip(straight[args.stop:n], losses[args.stop:n])]
        rec.update(resume_compared_steps=len(after), resume_bit_exact=straight[:n] == losses[:n],
                   max_abs_diff_before_stop=max(before, default=0.0), max_abs_diff_after_resume=max(after, default=0.0))
        # GPU kernels need not be deterministic (atomics in attention backward): where the steps
        # before the stop already differ between the two runs, that difference is the floor the
        # steps after the resume are read against, not zero
        rec["resume_exact"] = rec["resume_bit_exact"] or (
            rec["max_abs_diff_before_stop"] > 0 and rec["max_abs_diff_after_resume"] <= rec["max_abs_diff_before_stop"])
    if args.planner_dims:
        rec["planner_memory_gib"] = smoke_planner(run, args.planner_dims)
    # a few steps of a dry run need not lower the loss: --require-fall on the GPU's full runs only
    fine = rec["losses_finite"] and rec.get("resume_exact", True) and (rec["losses_fall"] or not args.require_fall)
    rec["status"] = "ok" if fine else "failed"
    append(args.json, rec)
    return 0 if rec["status"] == "ok" else 1


def smoke_planner(run: Path, steps: int) -> float | None:
    """The planner's total for a run's saved config (``steps`` control steps per sample)."""
    from wallwm_pretrain.config import load_config
    from wallwm_pretrain.plan.__main__ import rank_memory
    from wallwm_pretrain.plan.measure import measure_forward, meta_batch, meta_model
    from wallwm_pretrain.plan.memory import Layout

    cfg = load_config([str(run / "config.yaml")], [])
    model_cfg = dataclasses.replace(cfg.model, recompute="none")
    micro = cfg.data.batch_size // cfg.train.microbatches
    steps = -(-steps // cfg.model.frame_stride) * cfg.model.frame_stride
    latent_hw = None
    text = 512
    if cfg.model.video_tower == "wan":
        return None  # the latent size and text length live in the shards, not the config
    measured = measure_forward(meta_model(model_cfg), meta_batch(model_cfg, micro, steps, latent_hw, text))
    return rank_memory(cfg, measured, Layout(1, 1, 1), 0)["total"] / GIB


# --------------------------------------------------------------------------- summary
def summary(args) -> int:
    """One record of the headline figures, from the parts' records: Muon's step over AdamW's
    (same shapes, separate processes), both MFUs, the eager latency per chunk."""
    recs = load(args.json)["records"]
    detail = {r["part"]: r for r in recs if r.get("stage") != "run" and "part" in r}
    rec = {"part": "summary", "status": "ok"}
    adamw, muon = detail.get("mfu-adamw"), detail.get("mfu-muon")
    if adamw and muon:
        rec["muon_step_over_adamw"] = muon["step_s_median"] / adamw["step_s_median"]
        rec["mfu_adamw"], rec["mfu_muon"] = adamw["mfu"], muon["mfu"]
        rec["tokens_per_s_adamw"], rec["tokens_per_s_muon"] = adamw["tokens_per_s"], muon["tokens_per_s"]
    else:
        rec["status"] = "incomplete"
    for mode in ("eager", "cudagraph", "compile"):
        inf = detail.get(f"inference-{mode}")
        if inf:
            rec[f"latency_ms_{mode}"] = inf["latency_ms"]
    append(args.json, rec)
    return 0


# --------------------------------------------------------------------------- table
def table(args) -> int:
    data = load(args.json)
    lines = ["| part | status | s | figures |", "|---|---|---|---|"]
    for r in data["records"]:
        keys = [k for k in ("site", "masked", "kernels_chosen", "fwd_bwd_ms_default", "losses_fall", "loss_first", "loss_last", "resume_bit_exact", "resume_exact",
                            "samples_per_s_logged_median", "step_s_median", "tokens_per_s", "mfu", "optimizer_share",
                            "sdpa_kernels_in_step", "latency_ms", "muon_step_over_adamw", "mfu_adamw", "mfu_muon",
                            "latency_ms_eager", "latency_ms_cudagraph", "peak_memory_gib", "peak_memory_gib_logged",
                            "planner_memory_gib", "gpu", "note") if k in r]
        fig = "; ".join(f"{k} {_short(r[k])}" for k in keys)
        lines.append(f"| {r['part']} | {r['status']} | {_short(r.get('seconds', ''))} | {fig} |")
    text = "\n".join(lines)
    print(text)
    if args.md:
        Path(args.md).write_text(text + "\n")
    return 0


def _short(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_short(x)}" for k, x in v.items()) + "}"
    return str(v)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--json", type=Path, required=True)
        p.add_argument("--size", choices=("tiny", "gpu"), default="gpu")
        p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))

    p = sub.add_parser("mfu")
    common(p)
    p.add_argument("--optimizer", choices=("adamw", "muon"), required=True)
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--recompute", default="full", choices=("none", "selective", "full"))
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=0.0, help="0 = the GPU's dense bf16 peak by name")
    p.add_argument("overrides", nargs="*")
    p = sub.add_parser("attention")
    common(p)
    p.add_argument("--reps", type=int, default=3)
    p = sub.add_parser("inference")
    common(p)
    p.add_argument("--mode", choices=("eager", "compile", "cudagraph"), default="eager")
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--denoise-steps", type=int, nargs="+", default=[1, 2, 4, 10])
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="bf16: fp32 weights under bf16 autocast (the trainer's); auto: bf16 on a GPU")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("overrides", nargs="*")
    p = sub.add_parser("smoke")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--part", required=True)
    p.add_argument("--runs", type=Path, required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--straight", default="")
    p.add_argument("--stop", type=int, required=True)
    p.add_argument("--log", default="")
    p.add_argument("--require-fall", action="store_true", help="fail unless the loss falls")
    p.add_argument("--planner-dims", type=int, default=0, help="control steps per sample for the planner (0 = none)")
    p = sub.add_parser("record")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--part", required=True)
    p.add_argument("--status", required=True)
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--note", default="")
    p.add_argument("--field", action="append", default=[], metavar="KEY=JSON")
    p = sub.add_parser("summary")
    p.add_argument("--json", type=Path, required=True)
    p = sub.add_parser("table")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--md", default="")
    args = parser.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore")
    if args.cmd == "record":
        rec = {"part": args.part, "status": args.status}
        if args.seconds is not None:
            rec["seconds"] = args.seconds
        if args.note:
            rec["note"] = args.note
        for f in args.field:
            k, _, v = f.partition("=")
            try:
                rec[k] = json.loads(v)
            except json.JSONDecodeError:
                rec[k] = v
        append(args.json, rec)
        return 0
    return {"mfu": run_mfu, "attention": run_attention, "inference": run_inference, "smoke": run_smoke,
            "summary": summary, "table": table}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
