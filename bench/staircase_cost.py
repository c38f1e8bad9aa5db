"""Cost of Staircase decoding: K_c latents through the relay + one parallel forward of the upper
layers, against every latent through all layers one after another.

    python bench/staircase_cost.py
    python bench/staircase_cost.py --latents 4 8 16 32 --layers 24 --relay-depth 12 --hidden 512

Both contenders use the same :class:`StaircaseBranch` (same weights, same context cache):

- ``staircase``: :meth:`StaircaseBranch.run`: latent 1 alone through the N_r lower layers (the
  relay), then latents 1..K_c through the N - N_r upper layers in one parallel forward (causal
  mask among the latents): N layer calls;
- ``sequential``: the conventional continuous-latent decoding: latent k runs all N layers with a
  per-layer causal KV cache, and its output is latent k+1's input, so the K_c latents take
  K_c * N layer calls one after another.

The context (random per-layer VLM states, batch 1, ``--context`` tokens) and its key/value cache
are built before either contender runs: that work is the same for both and not in the figures
(its time is printed once, for scale). Forward only, under ``torch.no_grad`` (inference), float32
on CPU.

Time: the median of ``--repeats`` runs after one warm-up run, wall clock, the two contenders
alternated per repeat. Memory: peak bytes allocated through torch's CPU allocator during one run
(``torch.profiler`` with ``profile_memory=True``: the largest ``Total Allocated`` of its memory
events, which count from zero at the profiler's start), i.e. the activations and latent caches
the run needs at its peak, not the weights or the context cache that exist before it. Output: a
markdown table on stdout; read the ratios, not the absolute numbers, on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from wallwm_pretrain.config import StaircaseConfig
from wallwm_pretrain.model.conditioner.staircase import StaircaseBranch, StaircaseCache


def sequential(branch: StaircaseBranch, cache: StaircaseCache) -> torch.Tensor:
    """Every latent through all layers, one after another; latent k's output is k+1's input."""
    x = branch.start.expand(cache.valid.shape[0], 1, -1)
    past: dict[int, tuple] = {}
    out = []
    for _ in range(branch.latents):
        for j, layer in enumerate(branch.layers):
            x, past[j] = layer(x, cache.context[j], cache.valid, past.get(j))
        x = branch.norm(x)
        out.append(x)
    return torch.cat(out, dim=1)


def peak_bytes(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max(totals, default=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latents", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--layers", type=int, default=24, help="branch layers N (one per VLM layer)")
    ap.add_argument("--relay-depth", type=int, default=12, help="N_r")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--context", type=int, default=256, help="context tokens (views + prompt)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    states = torch.randn(args.layers, 1, args.context, args.hidden)
    valid = torch.ones(1, args.context, dtype=torch.bool)
    print(f"N = {args.layers} layers, N_r = {args.relay_depth}, D = {args.hidden}, {args.heads} heads, "
          f"context {args.context} tokens, batch 1, float32, {args.threads} thread(s), "
          f"median of {args.repeats}\n")
    print("| K_c | staircase time (ms) | sequential time (ms) | time ratio seq / stair | staircase peak (KiB) "
          "| sequential peak (KiB) | memory ratio seq / stair | layer calls stair / seq |")
    print("|---|---|---|---|---|---|---|---|")
    prep_ms = None
    for k in args.latents:
        cfg = StaircaseConfig(latents=k, relay_depth=args.relay_depth, num_heads=args.heads, ffn_mult=4)
        branch = StaircaseBranch(args.layers, args.hidden, cfg).eval()
        with torch.no_grad():
            t0 = time.perf_counter()
            cache = branch.prepare(states, valid)
            prep_ms = prep_ms or (time.perf_counter() - t0) * 1e3
            # latent 1 takes the same path in both (all N layers, attending to itself alone)
            stair, seq = branch.run(cache), sequential(branch, cache)
            assert stair.shape == seq.shape == (1, k, args.hidden)
            torch.testing.assert_close(stair[:, 0], seq[:, 0], atol=1e-4, rtol=1e-4)
            runs = {"staircase": lambda: branch.run(cache), "sequential": lambda: sequential(branch, cache)}
            times = {name: [] for name in runs}
            for r in range(args.repeats):
                for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                    t0 = time.perf_counter()
                    runs[name]()
                    times[name].append(time.perf_counter() - t0)
            ms = {n: statistics.median(t) * 1e3 for n, t in times.items()}
            peak = {n: peak_bytes(fn) for n, fn in runs.items()}
        calls = f"{args.layers} / {k * args.layers}"
        print(f"| {k} | {ms['staircase']:.2f} | {ms['sequential']:.2f} | {ms['sequential'] / ms['staircase']:.2f} "
              f"| {peak['staircase'] / 1024:.0f} | {peak['sequential'] / 1024:.0f} "
              f"| {peak['sequential'] / peak['staircase']:.2f} | {calls} |")
    print(f"\ncontext cache build (the same for both, not in the figures): {prep_ms:.1f} ms")


if __name__ == "__main__":
    main()
