"""Context parallelism on one long sample: bytes the Ulysses all-to-alls move, and peak memory per rank.

    python bench/context_parallel.py                      # 16,384 video tokens, CP 1 / 2 / 4
    python bench/context_parallel.py --image-size 64 --cps 1 2   # a quick look

One case = the small towers (``model.video_tower=small``) built over megatron's groups at
context-parallel size ``cp`` (gloo, one process per rank, one thread each), one sample of
``--steps`` control steps whose single view of ``--image-size`` pixels in ``--patch-size``
patches gives ``steps / K_p * (image / patch)^2`` video tokens (default 16 x 1024 = 16,384)
plus ``steps`` action tokens; one forward + backward, fp32, no optimizer.

Bytes: ``bench/collective_bytes.py`` wraps ``torch.distributed``'s collectives and counts, per
rank, the bytes of every all-to-all segment addressed to another rank, in one forward +
backward. The analytic count: per coupled layer, the video tower's self-attention exchanges
q, k, v and its output over the video tokens (4 tensors of ``S_v / cp x hidden``), the action
tower's self-attention the same over the action tokens (4 of ``S_a / cp x hidden``), the
coupling its queries and output over the action tokens and its keys and values over the video
tokens (2 + 2); backward exchanges the same again; a rank keeps ``1 / cp`` of each tensor, so
it sends ``(cp - 1) / cp`` of it: ``layers x 2 x 6 (S_v + S_a) / cp x hidden x 4 B x (cp - 1) / cp``
(lengths padded to a multiple of cp).

Memory, two figures per rank, as ``bench/attention.py`` measures them: the peak resident set
over the step (``ru_maxrss``) minus the resident set after a short warm-up step (glibc set to
give every large tensor its own mapping, ``MALLOC_MMAP_THRESHOLD_=65536``, so freed tensors
leave the resident set), and the bytes autograd keeps for backward at the end of the forward
(``torch.autograd.graph.saved_tensors_hooks``, each storage counted once): the activations the
memory plan models. The busiest rank of each CP size is reported, and its ratio to CP 1.
Beside them, the memory plan's activation figure for the same config and CP size
(``python -m wallwm_pretrain.plan``'s ``rank_memory``: a meta forward, layer activations / cp)
and its ratio to the measured bytes kept for backward.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _config(args):
    from wallwm_pretrain.config import ModelConfig

    return ModelConfig(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                       ffn_hidden_size=2 * args.hidden, image_size=args.image_size, patch_size=args.patch_size,
                       num_views=1, frame_stride=4, caption_max_bytes=15, action_dim=4, state_dim=8)


def _batch(cfg, steps: int):
    import torch

    from wallwm_pretrain.batch import Batch

    g = torch.Generator().manual_seed(0)
    caption = torch.randint(2, 258, (1, 12), generator=g)
    caption[:, 0] = 1
    return Batch(torch.randint(0, 256, (1, steps, 1, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8, generator=g),
                 torch.randn(1, steps, 4, generator=g), torch.randn(1, 8, generator=g), torch.tensor([steps - 3]),
                 caption, torch.tensor([float(steps)]))


def run_rank(rank: int, cp: int, args, rdzv: str, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(cp), LOCAL_RANK=str(rank))
    import torch
    import torch.distributed as dist

    from collective_bytes import CollectiveBytes
    from wallwm_pretrain.model import build_model
    from wallwm_pretrain.parallel import init_parallel, shutdown_parallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=cp)
    ctx = init_parallel(1, 1, "cpu", seed=0, cp=cp)
    cfg = _config(args)
    torch.manual_seed(0)
    model = build_model(cfg, pg_collection=ctx.pg_collection)

    def step(batch):
        noise = model.sample_noise(batch, torch.Generator().manual_seed(1))
        losses = model(batch, noise=noise)
        losses["loss"].backward()
        return losses

    step(_batch(cfg, 8))  # warm-up: thread pools, kernel dispatch, allocator
    model.zero_grad(set_to_none=True)
    dist.barrier()
    baseline = _rss_bytes()
    counter = CollectiveBytes()
    counter.install()
    kept: dict[int, int] = {}

    def pack(t):
        kept.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    batch = _batch(cfg, args.steps)
    start = time.perf_counter()
    with counter.window():
        noise = model.sample_noise(batch, torch.Generator().manual_seed(1))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            losses = model(batch, noise=noise)
        saved = sum(kept.values())
        losses["loss"].backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    record = {"rank": rank, "peak_delta": peak - baseline, "new_peak": peak > baseline, "saved": saved,
              "sent": counter.sent, "calls": dict(counter.calls), "seconds": seconds, "loss": float(losses["loss"].detach())}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    counter.uninstall()
    shutdown_parallel()


def analytic_sent(args, cp: int) -> float:
    """Bytes one rank sends in the all-to-alls of one forward + backward (module docstring)."""
    if cp == 1:
        return 0.0
    video = args.steps // 4 * (args.image_size // args.patch_size) ** 2
    pad = lambda n: -(-n // cp) * cp  # noqa: E731
    return args.layers * 2 * 6 * (pad(video) + pad(args.steps)) / cp * args.hidden * 4 * (cp - 1) / cp


def planned_activations(args, cp: int) -> float:
    """The memory plan's activation bytes per rank for this config at ``cp`` (meta device)."""
    from wallwm_pretrain.config import load_config
    from wallwm_pretrain.plan.__main__ import rank_memory
    from wallwm_pretrain.plan.measure import meta_batch, meta_model, measure_forward
    from wallwm_pretrain.plan.memory import Layout

    m = _config(args)
    keys = ("hidden_size", "num_layers", "num_heads", "ffn_hidden_size", "image_size", "patch_size", "num_views",
            "frame_stride", "caption_max_bytes", "action_dim", "state_dim")
    cfg = load_config(None, [f"model.{k}={getattr(m, k)}" for k in keys]
                      + [f"parallel.cp={cp}", "data.batch_size=1", f"data.max_frames={args.steps}"])
    measured = measure_forward(meta_model(cfg.model), meta_batch(cfg.model, 1, args.steps))
    return rank_memory(cfg, measured, Layout(1, 1, cp), 0)["activations"]


def measure(args, cp: int) -> list[dict]:
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # read by each spawned interpreter's glibc
    ctx = mp.get_context("spawn")
    from _ranks import run_ranks

    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=run_rank, args=(r, cp, args, str(Path(tmp) / "rdzv"), tmp)) for r in range(cp)]
        run_ranks(procs, args.timeout, f"cp={cp}")
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(cp)]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python bench/context_parallel.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--cps", type=int, nargs="+", default=[1, 2, 4], help="context-parallel sizes (first: baseline)")
    p.add_argument("--steps", type=int, default=64, help="control steps (action tokens); steps / 4 latent frames")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args(argv)
    video = args.steps // 4 * (args.image_size // args.patch_size) ** 2
    print(f"one sample: {video} video tokens + {args.steps} action tokens; hidden {args.hidden}, {args.heads} heads, "
          f"{args.layers} coupled layers; fp32, gloo, 1 thread per rank\n")
    print("| cp | loss (sum of the ranks' shares) | peak RSS over the step, busiest rank (MiB) | / cp 1 | kept for backward, busiest rank (MiB) "
          "| / cp 1 | all-to-all bytes sent per rank (counted) | analytic | counted / analytic | plan's activations (MiB) | plan / kept | step s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    base = None
    for cp in args.cps:
        ranks = measure(args, cp)
        peak = max(r["peak_delta"] for r in ranks)
        saved = max(r["saved"] for r in ranks)
        sent = max(r["sent"] for r in ranks)
        base = base or (peak, saved)
        expected = analytic_sent(args, cp)
        ratio = f"{sent / expected:.4f}" if expected else "-"
        floor = "" if all(r["new_peak"] for r in ranks) else "*"
        planned = planned_activations(args, cp)
        loss = sum(r["loss"] for r in ranks)  # each CP rank holds its tokens' share of the sample's loss
        print(f"| {cp} | {loss:.6f} | {peak / 2**20:.1f}{floor} | {peak / base[0]:.3f} | "
              f"{saved / 2**20:.1f} | {saved / base[1]:.3f} | {sent:,.0f} | {expected:,.0f} | {ratio} | "
              f"{planned / 2**20:.1f} | {planned / saved:.3f} | "
              f"{max(r['seconds'] for r in ranks):.1f} |")


if __name__ == "__main__":
    main()
