"""The Wan tower's FLOP formula against torch's count of the matmuls it runs.

torch's flop counter does not see the fused attention kernel on CPU, so the counted run swaps
the core for the textbook softmax(q k^T / sqrt(d)) v, whose matmuls it does count.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _wan_tiny import LATENT, TEXT_LEN, TINY, inputs  # noqa: E402

import wallwm_pretrain.model.wan.attention as attention  # noqa: E402
from wallwm_pretrain.model.wan import WanConfig, WanTower  # noqa: E402
from wallwm_pretrain.model.wan.flops import wan_forward_flops  # noqa: E402


def textbook_attend(query, key, value, key_padding_mask=None):
    q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask, float("-inf"))
    return (scores.softmax(-1) @ v).permute(2, 0, 1, 3).flatten(2)


@pytest.mark.parametrize("views, per_token", [(1, False), (3, True)])
def test_formula_equals_counted_matmuls(monkeypatch, views, per_token):
    cfg = WanConfig(**{**TINY, "num_views": views})
    tower = WanTower(cfg, seed=0)
    latents, timestep, text, _ = inputs(views=views, per_token=per_token)
    monkeypatch.setattr(attention, "attend", textbook_attend)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        tower(latents, timestep, text)
    flops = wan_forward_flops(cfg, LATENT[1:], TEXT_LEN, per_token_time=per_token)
    assert counter.get_total_flops() == latents.shape[0] * flops["total"]
    assert 0 < flops["attention_core"] < flops["blocks"]
