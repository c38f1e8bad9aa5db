"""Warmup + cosine schedule: endpoints, monotonicity, and the LambdaLR wiring."""

import math

import pytest
import torch

from wallwm_pretrain.optim import build_scheduler, lr_factor

W, T, MIN = 10, 100, 0.1


def test_warmup_is_linear_from_near_zero_to_peak():
    assert lr_factor(0, W, T, MIN) == pytest.approx(1 / W)
    assert lr_factor(4, W, T, MIN) == pytest.approx(5 / W)
    assert lr_factor(W - 1, W, T, MIN) == 1.0
    diffs = [lr_factor(s + 1, W, T, MIN) - lr_factor(s, W, T, MIN) for s in range(W - 1)]
    assert all(d == pytest.approx(1 / W) for d in diffs)


def test_cosine_ends_at_floor_and_decays_monotonically():
    after = [lr_factor(s, W, T, MIN) for s in range(W - 1, T + 20)]
    assert after[0] == 1.0
    assert all(b < a for a, b in zip(after, after[1 : T - W + 1]))  # strictly down to the end
    assert lr_factor(T - 1, W, T, MIN) == pytest.approx(MIN)  # the run's last step
    assert all(f == pytest.approx(MIN) for f in after[T - W :])  # flat past the end
    mid = (W + T) // 2 - 1  # t = step + 1 halfway through the decay
    assert lr_factor(mid, W, T, MIN) == pytest.approx(MIN + (1 - MIN) / 2)


def test_no_warmup_and_warmup_longer_than_run():
    assert lr_factor(0, 0, 10, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 10)))
    assert lr_factor(9, 0, 10, 0.0) == pytest.approx(0.0)
    # warmup >= total: only the ramp, never a decay
    ramp = [lr_factor(s, 20, 5, MIN) for s in range(5)]
    assert ramp == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.25])


@pytest.mark.parametrize("args", [(-1, W, T, MIN), (0, -1, T, MIN), (0, W, 0, MIN), (0, W, T, 1.5)])
def test_rejects_bad_values(args):
    with pytest.raises(ValueError):
        lr_factor(*args)


def test_scheduler_sets_optimizer_lr_per_step():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.5)
    sched = build_scheduler(opt, W, T, MIN)
    seen = []
    for _ in range(T):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.5 * lr_factor(s, W, T, MIN) for s in range(T)])
    # Only plain values in the state: the schedule shape comes from the config on resume.
    assert sched.state_dict()["lr_lambdas"] == [None]
