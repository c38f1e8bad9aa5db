"""Flow-matching semantics against closed forms, and where the coupling reads the video tower.

Expected values are written out here, independently of ``flow_matching.py`` and ``sampler.py``:
the straight path x_t = (1 - t) x0 + t n, its velocity dx_t/dt = n - x0, and the exact
velocity field towards a known x0, v*(x, t) = (x - x0) / t, whose Euler integration from t = 1
to t = 0 lands on x0 exactly (every Euler step follows the straight line).
"""

import pytest
import torch

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.eval.sampler import sample_event
from wallwm_pretrain.model import WallWM
from wallwm_pretrain.model.embeddings import patchify
from wallwm_pretrain.model.flow_matching import interpolate

K = 4


def build_model(num_layers=2, seed=0):
    """The one place this file builds a model (constructor changes are a one-line fix here)."""
    cfg = ModelConfig(hidden_size=32, num_layers=num_layers, num_heads=4, ffn_hidden_size=64, image_size=16, patch_size=8,
                      frame_stride=K, caption_max_bytes=15)
    torch.manual_seed(seed)
    model = WallWM(cfg)
    for p in model.parameters():  # leave adaLN-Zero's zero init, so every path is live
        p.data.add_(0.02 * torch.randn_like(p))
    return model


# -- the path and its velocity ------------------------------------------------------------


def test_interpolate_hand_worked_values():
    x0 = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    noise = torch.tensor([[3.0, 2.0], [-1.5, 0.0]])
    t = torch.tensor([0.25, 0.5])
    xt, target = interpolate(x0, noise, t)
    # row 0: 0.75 * [1, -2] + 0.25 * [3, 2] = [1.5, -1.0]; row 1: 0.5 * [0.5, 4] + 0.5 * [-1.5, 0]
    assert torch.equal(xt, torch.tensor([[1.5, -1.0], [-0.5, 2.0]]))
    # velocity = noise - x0 (pointing from data to noise)
    assert torch.equal(target, torch.tensor([[2.0, 4.0], [-2.0, -4.0]]))


def test_interpolate_endpoints_and_per_sample_time():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 5, generator=g), torch.randn(3, 2, 5, generator=g)
    xt, _ = interpolate(x0, noise, torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[1], noise[1]) and torch.equal(xt[2], x0[2])


def test_target_is_the_time_derivative_of_the_path():
    """d/dt [(1 - t) x0 + t n] = n - x0; a target of the other sign or scale fails."""
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 3, 6, generator=g, dtype=torch.float64), torch.randn(4, 3, 6, generator=g, dtype=torch.float64)
    t = torch.tensor([0.1, 0.35, 0.6, 0.9], dtype=torch.float64)
    h = 1e-6
    x_lo, target = interpolate(x0, noise, t)
    x_hi, _ = interpolate(x0, noise, t + h)
    finite_difference = (x_hi - x_lo) / h
    # the path is linear in t: the forward difference is exact up to float64 rounding / h
    torch.testing.assert_close(target, finite_difference, rtol=0, atol=1e-8)
    torch.testing.assert_close(target, noise - x0, rtol=0, atol=0)


def test_training_targets_of_the_model_are_noise_minus_data(single_process):
    """The model's velocity targets (what the loss regresses onto) follow the closed form."""
    model = build_model(num_layers=1)
    g = torch.Generator().manual_seed(2)
    frames = torch.randint(0, 256, (2, 8, 2, 16, 16, 3), dtype=torch.uint8, generator=g)
    actions = torch.randn(2, 8, model.cfg.action_dim, generator=g)
    batch = Batch(frames, actions, torch.zeros(2, model.cfg.state_dim), torch.tensor([8, 8]),
                  torch.ones(2, 4, dtype=torch.long))
    noise = model.sample_noise(batch, torch.Generator().manual_seed(3))
    inputs = model.flow_inputs(batch, noise)
    x0_video = patchify(frames[:, ::K], 8)
    assert torch.equal(inputs.target_action, noise.noise_action - actions)
    assert torch.equal(inputs.target_video, noise.noise_video - x0_video)
    ta = noise.t_action[:, None, None]
    torch.testing.assert_close(inputs.xt_action, (1 - ta) * actions + ta * noise.noise_action, rtol=0, atol=1e-6)
    tv = noise.t_video[:, None, None, None]
    expected_v = (1 - tv) * x0_video + tv * noise.noise_video
    expected_v[:, 0] = x0_video[:, 0]  # frame 0 is the clean condition
    torch.testing.assert_close(inputs.xt_video, expected_v, rtol=0, atol=1e-6)


# -- the Euler sampler on the exact velocity field ------------------------------------------


def _oracle(model, x0_video, x0_action):
    """Replace the network by the exact velocity towards (x0_video, x0_action): (x - x0) / t."""
    calls = []

    def denoise(xt_video, xt_action, t_video, t_action, *rest):
        calls.append(float(t_video[0]))
        tv = t_video[:, None, None, None]
        ta = t_action[:, None, None]
        return (xt_video - x0_video) / tv, (xt_action - x0_action) / ta

    model.denoise = denoise
    return calls


@pytest.mark.parametrize("denoise_steps", [1, 4, 7])
def test_euler_round_trip_lands_on_a_known_x0(single_process, denoise_steps):
    model = build_model(num_layers=1).eval()
    g = torch.Generator().manual_seed(4)
    frame = torch.randint(0, 256, (2, model.cfg.num_views, 16, 16, 3), dtype=torch.uint8, generator=g)
    steps = 12
    first = patchify(frame[:, None], 8)
    x0_video = torch.randn(2, steps // K, *first.shape[2:], generator=g)
    x0_video[:, :1] = first
    x0_action = torch.randn(2, steps, model.cfg.action_dim, generator=g)
    calls = _oracle(model, x0_video, x0_action)
    actions, video = sample_event(model, frame, torch.zeros(2, model.cfg.state_dim), torch.ones(2, 4, dtype=torch.long),
                                  steps=steps, denoise_steps=denoise_steps, generator=torch.Generator().manual_seed(5))
    # uniform grid from t = 1 down to (not including) t = 0
    assert calls == pytest.approx([1.0 - i / denoise_steps for i in range(denoise_steps)], abs=1e-6)
    # Euler along a straight line is exact: float32 rounding over a few steps only
    torch.testing.assert_close(actions, x0_action, rtol=0, atol=1e-5)
    torch.testing.assert_close(video, x0_video, rtol=0, atol=1e-5)


def test_one_euler_step_moves_against_the_velocity(single_process):
    """From t = 1 with v = n - x0 known, one step of size 1 gives n - v: a sampler that adds the
    velocity (integrating the wrong way) lands on 2 n - x0 instead."""
    model = build_model(num_layers=1).eval()
    frame = torch.zeros(1, model.cfg.num_views, 16, 16, 3, dtype=torch.uint8)
    first = patchify(frame[:, None], 8)
    x0_video = torch.full((1, 1, *first.shape[2:]), 0.0)
    x0_video[:, :1] = first
    x0_action = torch.full((1, K, model.cfg.action_dim), 2.0)
    _oracle(model, x0_video, x0_action)
    actions, _ = sample_event(model, frame, torch.zeros(1, model.cfg.state_dim), torch.ones(1, 4, dtype=torch.long),
                              steps=K, denoise_steps=1, generator=torch.Generator().manual_seed(6))
    assert torch.allclose(actions, torch.full_like(actions, 2.0), atol=1e-6)


# -- the coupling source: action block i reads video block i's output ----------------------


def _inputs(model, seed=7):
    g = torch.Generator().manual_seed(seed)
    b, t = 2, 12
    frames = torch.randint(0, 256, (b, t, 2, 16, 16, 3), dtype=torch.uint8, generator=g)
    actions = torch.randn(b, t, model.cfg.action_dim, generator=g)
    state = torch.randn(b, model.cfg.state_dim, generator=g)
    lengths = torch.tensor([t, 9])
    caption = torch.randint(2, 258, (b, 10), generator=g)
    caption[:, 0] = 1
    batch = Batch(frames, actions, state, lengths, caption)
    return batch, model.sample_noise(batch, torch.Generator().manual_seed(seed + 1))


def _run(model, data, hooks=()):
    """(action loss, each action block's output) with the given (module, hook kind, fn) hooks."""
    outputs = {}
    handles = [
        layer.action.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out.detach().clone()))
        for i, layer in enumerate(model.layers.values())
    ]
    for module, kind, fn in hooks:
        register = module.register_forward_hook if kind == "out" else module.register_forward_pre_hook
        handles.append(register(fn))
    batch, noise = data
    with torch.no_grad():
        loss = model(batch, noise=noise)["loss_action"]
    for h in handles:
        h.remove()
    return loss, outputs


@pytest.mark.parametrize("layer", [0, 1])
def test_action_block_reads_its_own_video_blocks_output(single_process, layer):
    model = build_model(num_layers=2).eval()
    data = _inputs(model)
    loss, base = _run(model, data)
    block = model.layers[str(layer)]
    bump = lambda m, a, out: out + 0.5  # noqa: E731  the matching video block's output moves
    loss2, moved = _run(model, data, [(block.video, "out", bump)])
    # this layer's action block sees the change (and the action loss moves with it) ...
    assert (moved[layer] - base[layer]).abs().max() > 1e-3
    assert abs(float(loss2) - float(loss)) > 1e-5
    # ... while the action blocks before it do not
    for i in range(layer):
        assert torch.equal(moved[i], base[i])


@pytest.mark.parametrize("layer", [0, 1])
def test_action_block_ignores_the_layer_input_video(single_process, layer):
    """The layer's *input* video states reach action block i only through video block i: moving
    them in the action block's view alone (the video block still sees the original) changes
    nothing."""
    model = build_model(num_layers=2).eval()
    data = _inputs(model)
    loss, base = _run(model, data)
    block = model.layers[str(layer)]

    def shift_input_video(module, args):
        s, video_hidden = args
        return (s.with_towers(s.video + 0.5, s.action), video_hidden)

    loss2, moved = _run(model, data, [(block.action, "pre", shift_input_video)])
    assert torch.equal(moved[layer], base[layer])
    assert torch.equal(loss2, loss)
    # negative control: the same shift applied to what the action block reads as video does move it
    shift_hidden = lambda m, args: (args[0], args[1] + 0.5)  # noqa: E731
    _, moved3 = _run(model, data, [(block.action, "pre", shift_hidden)])
    assert (moved3[layer] - base[layer]).abs().max() > 1e-3


# -- the masked loss and the draws ----------------------------------------------------------


def test_masked_mse_hand_worked():
    from wallwm_pretrain.model.flow_matching import masked_mse

    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.5, 0.5], [9.0, 9.0]]])  # [B=2, T=2, D=2]
    target = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[0.5, 1.5], [0.0, 0.0]]])
    mask = torch.tensor([[True, True], [True, False]])  # the last step of sample 1 is padding
    # squared errors of real elements: 1 + 4 + 4 + 9 + 0 + 1 = 19 over 6 real elements
    assert masked_mse(pred, target, mask).item() == pytest.approx(19 / 6, abs=1e-6)
    # a global denominator replaces the local count (a DP rank's share of the global mean)
    assert masked_mse(pred, target, mask, torch.tensor(38.0)).item() == pytest.approx(0.5, abs=1e-6)
    # nothing real: zero, not NaN (the count is clamped to 1)
    assert masked_mse(pred, target, torch.zeros(2, 2, dtype=torch.bool)).item() == 0.0
    assert masked_mse(pred, target, mask, torch.tensor(0.0)).item() == pytest.approx(19.0, abs=1e-5)


def test_weighted_flow_loss_hand_worked():
    """w_v L_v + w_a L_a, where a term weighted 0 is left out of the sum and of its graph."""
    from wallwm_pretrain.model.flow_matching import weighted_flow_loss

    lv, la = torch.tensor(3.0, requires_grad=True), torch.tensor(5.0, requires_grad=True)
    assert weighted_flow_loss(2.0, lv, 0.5, la).item() == 8.5  # 2 * 3 + 0.5 * 5
    assert weighted_flow_loss(1.0, lv, -1.0, la).item() == -2.0  # the formula, for any weight but 0
    assert weighted_flow_loss(0.0, lv, 0.5, la).item() == 2.5
    assert weighted_flow_loss(2.0, lv, 0.0, la).item() == 6.0
    # a term weighted 0 is not in the sum: its NaN cannot reach the total (0 * nan is nan)
    nan = torch.tensor(float("nan"), requires_grad=True)
    assert weighted_flow_loss(1.0, lv, 0.0, nan).item() == 3.0
    assert weighted_flow_loss(0.0, nan, 1.0, la).item() == 5.0
    # nor in the graph: backward never reaches the tower that produced it
    total = weighted_flow_loss(2.0, lv, 0.0, la * 1.0)
    total.backward()
    assert lv.grad.item() == 2.0 and la.grad is None
    # both weights 0: an exact zero that still depends on the video loss (backward runs)
    zero = weighted_flow_loss(0.0, lv, 0.0, la)
    assert zero.item() == 0.0 and zero.requires_grad and not torch.signbit(zero)


def test_flow_time_is_uniform_draws_of_the_generator():
    from wallwm_pretrain.model.flow_matching import sample_time

    t = sample_time(5, torch.device("cpu"), torch.Generator().manual_seed(9))
    assert torch.equal(t, torch.rand(5, generator=torch.Generator().manual_seed(9)))
    many = sample_time(20000, torch.device("cpu"), torch.Generator().manual_seed(1))
    assert 0.0 <= many.min() and many.max() < 1.0 and abs(many.mean().item() - 0.5) < 0.01  # 5 sigma = 0.0102


def test_flow_noise_rows_take_the_same_rows_of_every_draw():
    from wallwm_pretrain.model.flow_matching import FlowNoise

    g = torch.Generator().manual_seed(3)
    noise = FlowNoise(torch.rand(4, generator=g), torch.randn(4, 2, 3, 5, generator=g),
                      torch.rand(4, generator=g), torch.randn(4, 6, 2, generator=g))
    part = noise.rows(1, 3)
    for whole, rows in zip((noise.t_video, noise.noise_video, noise.t_action, noise.noise_action),
                           (part.t_video, part.noise_video, part.t_action, part.noise_action)):
        assert torch.equal(rows, whole[1:3])


def test_noise_seed_is_the_written_formula():
    """The flow draws of a step are seeded by (seed * 1_000_003 + step) * 65_537 + replica:
    written out here, because a checkpoint resumes bit for bit only if this number is what the
    run that wrote it used (a change of formula is a change of every later draw)."""
    from wallwm_pretrain.model.flow_matching import noise_seed

    assert noise_seed(3, 5, 1) == 196_611_917_519  # = (3 * 1_000_003 + 5) * 65_537 + 1
    assert noise_seed(7, 123, 3) == 458_768_437_331  # = (7 * 1_000_003 + 123) * 65_537 + 3
    assert noise_seed(0, 0, 0) == 0
    assert noise_seed(0, 1, 1) == 65_538  # low bits shared by both terms: "+ replica" is not "^ replica"
    seeds = {noise_seed(s, t, r) for s in range(3) for t in range(50) for r in range(8)}
    assert len(seeds) == 3 * 50 * 8  # every (seed, step, replica) draws its own noise
    assert all(isinstance(x, int) and 0 <= x < 2**63 for x in seeds)  # a valid torch.manual_seed


def test_the_flow_signatures_resolve_for_typing_tools():
    """The module postpones its annotations, so a broken one (``torch.Tensor - None``) would pass
    every run and break only what reads the hints (documentation, type checkers)."""
    import typing

    from wallwm_pretrain.model import flow_matching as fm

    hints = {f.__name__: typing.get_type_hints(f) for f in (
        fm.interpolate, fm.weighted_flow_loss, fm.masked_mse, fm.noise_seed, fm.shift_time, fm.sample_time,
        fm.FlowNoise, fm.FlowNoise.rows)}
    assert hints["masked_mse"]["denominator"] == torch.Tensor | None
    assert hints["sample_time"]["generator"] == torch.Generator | None
    assert hints["interpolate"]["return"] == tuple[torch.Tensor, torch.Tensor]
    assert hints["rows"]["return"] is fm.FlowNoise and hints["FlowNoise"]["t_video"] is torch.Tensor
