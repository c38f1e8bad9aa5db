"""The pieces of context parallelism on their own: the split of a sequence, the Ulysses all-to-all
and its backward, the split attention against the whole one (2 and 4 gloo ranks), and the config
rule that names the largest context-parallel size that works."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: not on the path
from _launch import _CTX, run_ranks  # noqa: E402

from wallwm_pretrain.config import ConfigError, load_config  # noqa: E402


def _exchange_rank(rank: int, world: int, rdzv: str, out_dir: str) -> None:
    """Every rank: the same random whole tensors; this rank's pieces through the exchange."""
    import torch.distributed as dist

    from wallwm_pretrain.model.attention_core import fused_attention, split_sequence_attention
    from wallwm_pretrain.model.sequence_split import SequenceSplit

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world)
    sp = SequenceSplit(dist.group.WORLD, world, rank)
    g = torch.Generator().manual_seed(0)
    sq, sk, b, heads, d = 9, 27, 3, 4, 8  # neither length divides by 2 or 4: both pad
    q, k, v = (torch.randn(n, b, heads, d, generator=g) for n in (sq, sk, sk))
    valid = torch.rand(b, sk, generator=g) > 0.3
    valid[:, 0] = True  # every sample has a real key (see sequence_split.py on samples without one)
    grad_out = torch.randn(sq, b, heads * d, generator=g)
    result = {}
    # 1. the exchange: this rank's heads of every token, and back
    x = sp.shard(q)
    heads_split = sp.to_heads(x)
    result["to_heads"] = (heads_split - sp.pad(q, 0)[:, :, rank * heads // world:(rank + 1) * heads // world]).abs().max()
    result["round_trip"] = (sp.to_sequence(heads_split) - x).abs().max()
    # 2. split attention = whole attention on this rank's real queries, forward and backward
    whole = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fused_attention(*whole, valid)
    (out * grad_out).sum().backward()
    pieces = [sp.shard(t).requires_grad_() for t in (q, k, v)]
    got = split_sequence_attention(*pieces, sp, sp.pad_valid(valid))
    (got * sp.shard(grad_out)).sum().backward()
    real_q = sp.shard_valid(torch.ones(1, sq, dtype=torch.bool))[0]  # padding queries compute garbage
    diff = (got - sp.shard(out))[real_q].abs()
    result["out"] = diff.max() if diff.numel() else torch.tensor(0.0)  # cp=4: rank 3 holds only padding
    # gradients: the exchange's backward routes every query's share back to the piece's rank
    for name, piece, ref in zip("qkv", pieces, whole):
        result[f"grad_{name}"] = piece.grad
        result[f"ref_grad_{name}"] = sp.shard(ref.grad)
    torch.save({key: val.detach() if torch.is_tensor(val) else val for key, val in result.items()},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_split_attention_equals_whole_attention(tmp_path, world):
    procs = [_CTX.Process(target=_exchange_rank, args=(r, world, str(tmp_path / "rdzv"), str(tmp_path)))
             for r in range(world)]
    run_ranks(procs, f"the exchange at cp={world}")
    for r in range(world):
        rec = torch.load(tmp_path / f"rank{r}.pt")
        assert rec["to_heads"] == 0 and rec["round_trip"] == 0  # moves bytes, no arithmetic
        assert rec["out"] <= 1e-6
        for name in "qkv":
            torch.testing.assert_close(rec[f"grad_{name}"], rec[f"ref_grad_{name}"], rtol=0, atol=1e-6,
                                       msg=f"rank {r} grad {name}")


def test_heads_not_divisible_by_cp_name_the_largest_cp_that_works():
    """24 heads at TP 2 are 12 per rank: CP 16 does not divide them, 12 is the largest that does."""
    with pytest.raises(ConfigError, match=r"parallel.cp=16 does not divide.*largest parallel.cp <= 16 that works is 12"):
        load_config(None, ["model.num_heads=24", "model.hidden_size=96", "parallel.tp=2", "parallel.cp=16"])
    cfg = load_config(None, ["model.num_heads=24", "model.hidden_size=96", "parallel.tp=2", "parallel.cp=12"])
    assert cfg.parallel.cp == 12
    with pytest.raises(ConfigError, match="parallel.cp must be >= 1|parallel.cp=0"):
        load_config(None, ["parallel.cp=0"])


def test_what_context_parallelism_is_not_built_for_is_refused_before_any_work():
    with pytest.raises(ConfigError, match="anchor is not built with context parallelism"):
        load_config(None, ["parallel.cp=2", "model.action_pretrain.mapping=anchor", "model.video_loss_weight=0"])
    with pytest.raises(ConfigError, match="parallel.pp=2 is not built for model.video_tower=wan"):
        load_config(None, ["parallel.cp=2", "parallel.pp=2", "model.video_tower=wan", "model.num_layers=2"])
