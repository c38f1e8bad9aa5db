"""Peak memory and time of one self-attention layer (forward + backward): unfused core vs fused core.

    python bench/attention.py
    python bench/attention.py --seqs 1024 2048 4096 8192 16384 --heads 2 --head-dim 64 --budget-gib 6

One case = one layer (megatron-core's ``SelfAttention``: fused QKV projection, core, output
projection; built as the towers build it, with a one-process gloo group) at one sequence length,
batch 1, the last eighth of the keys padded (the key-padding mask path), fp32 on CPU. The two
cores:

- ``unfused``: megatron-core's ``DotProductAttention`` (the towers' core before
  ``model/attention_core.py``): a ``[b * heads, s, s]`` score matrix, softmax, batched matmul;
- ``fused``: ``attention_core.FusedCoreAttention`` (torch's ``scaled_dot_product_attention``).

``--impl local`` measures the local layers instead (``UnfusedLocalCoreAttention`` vs
``LocalFusedCoreAttention``, no process group).

How memory is measured: each case runs in a fresh subprocess. It builds the layer and its
input, runs one small warm-up step (s = 128: thread pools, kernel dispatch, allocator), then
reads its current resident set size (``/proc/self/statm``) as the baseline, runs one forward +
backward at the case's length, and reports ``ru_maxrss`` (the process's peak resident set)
minus that baseline: the extra memory the step needed at its peak, whatever allocated it
(activations, the kernels' own scratch, megatron's scratch buffer). ``ru_maxrss`` is a
high-water mark over the process's whole life, so the script checks that the step set a new
one (else the figure would be a floor and is marked ``*``). The child runs with
``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc serves every large tensor with its own mapping and
returns it on free: the resident set then follows the live tensors instead of a heap that keeps
freed pages. Chosen over ``torch.profiler``'s memory events because those see only allocations
made through torch's allocator, not what a kernel or the allocator keeps outside them.

Time: wall-clock of that one forward + backward (after the warm-up), on a machine shared with
other jobs: read the ratio between the two cores at the same length, not absolute seconds.

An unfused case whose estimated peak (``UNFUSED_COPIES`` fp32 copies of ``[b * heads, s, s]``
plus the layer's linear terms) would exceed ``--budget-gib`` is skipped and says what it would
need. Output: a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# [b*heads, s, s] fp32 tensors alive at the unfused core's peak (scores buffer, probabilities,
# their gradient, the softmax backward's output, one spare): an upper estimate for skipping only
UNFUSED_COPIES = 5
GIB = 1 << 30


def build_layer(impl: str, core: str, heads: int, head_dim: int):
    import torch

    from wallwm_pretrain.config import ModelConfig
    from wallwm_pretrain.model import spec

    cfg = spec.build_transformer_config(
        ModelConfig(hidden_size=heads * head_dim, num_layers=1, num_heads=heads, ffn_hidden_size=4 * heads * head_dim)
    )
    torch.manual_seed(0)
    if impl == "local":
        from wallwm_pretrain.model.attention_core import LocalFusedCoreAttention
        from wallwm_pretrain.model.local_layers import LocalSelfAttention, UnfusedLocalCoreAttention

        return LocalSelfAttention(cfg, LocalFusedCoreAttention if core == "fused" else UnfusedLocalCoreAttention)
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.identity_op import IdentityOp

    from wallwm_pretrain.model.attention_core import FusedCoreAttention
    from wallwm_pretrain.parallel import init_parallel

    ctx = init_parallel(1, 1, "cpu", seed=0)
    # as spec.self_attention builds it, with the core chosen here
    return SelfAttention(
        cfg,
        SelfAttentionSubmodules(linear_qkv=ColumnParallelLinear,
                                core_attention=FusedCoreAttention if core == "fused" else DotProductAttention,
                                linear_proj=RowParallelLinear, q_layernorm=IdentityOp, k_layernorm=IdentityOp),
        layer_number=1, attn_mask_type=AttnMaskType.padding, pg_collection=ctx.pg_collection,
    )


def step(layer, s: int, hidden: int) -> float:
    """One forward + backward at sequence length s (batch 1, last eighth of the keys padded); seconds."""
    import torch

    x = torch.randn(s, 1, hidden, requires_grad=True)
    mask = (torch.arange(s) >= s - s // 8)[None, None, None, :]
    start = time.perf_counter()
    out, _ = layer(x, attention_mask=mask)
    out.square().mean().backward()
    return time.perf_counter() - start


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    layer = build_layer(args.impl, args.core, args.heads, args.head_dim)
    hidden = args.heads * args.head_dim
    step(layer, 128, hidden)
    layer.zero_grad(set_to_none=True)
    base, high_before = rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seconds = step(layer, args.case_seq, hidden)
    high = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak": high - base, "new_high": high > high_before}))


def run_case(args, core: str, seq: int) -> dict:
    cmd = [sys.executable, __file__, "--case-core", core, "--case-seq", str(seq), "--impl", args.impl,
           "--heads", str(args.heads), "--head-dim", str(args.head_dim), "--threads", str(args.threads)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONWARNINGS="ignore")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"case {core} s={seq} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384],
                        help="sequence lengths (tokens)")
    parser.add_argument("--heads", type=int, default=2, help="attention heads")
    parser.add_argument("--head-dim", type=int, default=64, help="channels per head")
    parser.add_argument("--impl", choices=["megatron", "local"], default="megatron",
                        help="megatron-core's SelfAttention (the training path) or the local layers")
    parser.add_argument("--budget-gib", type=float, default=6.0, help="skip unfused cases estimated above this")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per case")
    parser.add_argument("--case-core", choices=["unfused", "fused"], help=argparse.SUPPRESS)
    parser.add_argument("--case-seq", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case_core:
        args.core = args.case_core
        return child(args)

    print(f"one {args.impl} self-attention layer, batch 1, {args.heads} heads x {args.head_dim} channels "
          f"(hidden {args.heads * args.head_dim}), fp32, forward + backward, {args.threads} threads; "
          "peak = ru_maxrss - resident set before the step")
    print()
    print("| s | [b*h,s,s] fp32 | unfused peak | fused peak | unfused / fused memory | unfused time (s) "
          "| fused time (s) | unfused / fused time |")
    print("|---|---|---|---|---|---|---|---|")
    for s in args.seqs:
        scores = args.heads * s * s * 4
        need = UNFUSED_COPIES * scores
        fused = run_case(args, "fused", s)
        unfused = run_case(args, "unfused", s) if need <= args.budget_gib * GIB else None

        def mib(r):
            return f"{r['peak'] / (1 << 20):.1f} MiB" + ("" if r["new_high"] else "*")

        if unfused is None:
            row = [f"skipped: would need {need / GIB:.0f} GiB", mib(fused), "-", "-", f"{fused['seconds']:.2f}", "-"]
        else:
            row = [mib(unfused), mib(fused), f"{unfused['peak'] / max(fused['peak'], 1):.1f}",
                   f"{unfused['seconds']:.2f}", f"{fused['seconds']:.2f}", f"{unfused['seconds'] / fused['seconds']:.2f}"]
        print(f"| {s} | {scores / (1 << 20):.0f} MiB | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
