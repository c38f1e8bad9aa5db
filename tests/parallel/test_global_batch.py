"""Loss shares of a split batch add up to the whole batch's loss; the wrapped model and its
optimizer behave like the bare model and the single-process optimizer set in one process."""

import copy

import pytest
import torch

from _ddp_reference import GlobalBatchLoss, parallelize_model, unwrap

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.config import ModelConfig, OptimConfig
from wallwm_pretrain.model import WallWM
from wallwm_pretrain.optim import ReplicatedOptimizerSet, build_optimizer
from wallwm_pretrain.parallel.state import optimizer_groups

K = 4
CFG = ModelConfig(hidden_size=32, num_layers=1, num_heads=4, ffn_hidden_size=64, image_size=16, patch_size=8,
                  frame_stride=K, caption_max_bytes=15)  # captions of at most 16 tokens
OPTIM = OptimConfig(lr=0.02, adamw_lr=0.003, warmup_steps=1, muon_mode="replicated", muon_split_fused=False)


def make_model(pg_collection=None):
    """Local layers by default; megatron's when given the groups (what the parallel wrappers hold)."""
    torch.manual_seed(0)
    model = WallWM(CFG, pg_collection=pg_collection)
    for p in model.parameters():  # leave adaLN-Zero so that every weight gets a gradient
        p.data.add_(0.02 * torch.randn_like(p))
    return model


def batch(seed=0, t=12):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (4, t, 2, 16, 16, 3), dtype=torch.uint8, generator=g)
    actions = torch.randn(4, t, CFG.action_dim, generator=g)
    state = torch.randn(4, CFG.state_dim, generator=g)
    lengths = torch.tensor([t, 5, t - 3, 3])
    caption = torch.randint(2, 258, (4, 10), generator=g)
    caption[:, 0] = 1
    return frames, actions, state, lengths, caption, lengths.float() + torch.tensor([0.0, 20.0, 3.0, 11.0])


def test_precomputed_noise_equals_generator_draws():
    model = make_model()
    data = batch()
    by_generator = model(Batch(*data), generator=torch.Generator().manual_seed(7))
    noise = model.sample_noise(Batch(*data), torch.Generator().manual_seed(7))
    by_noise = model(Batch(*data), noise=noise)
    assert torch.equal(by_generator["loss"], by_noise["loss"])
    assert noise.rows(1, 3).noise_video.shape[0] == 2
    assert torch.equal(noise.rows(1, 3).t_action, noise.t_action[1:3])


def test_shares_with_global_counts_add_up_to_the_whole_batch():
    model = make_model()
    data = batch()
    noise = model.sample_noise(Batch(*data), torch.Generator().manual_seed(3))
    whole = model(Batch(*data), noise=noise)
    whole["loss"].backward()
    whole_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    halves = [slice(0, 2), slice(2, 4)]
    counts = sum(model.loss_element_counts(data[3][h], data[1].shape[1]) for h in halves)
    assert torch.equal(counts, model.loss_element_counts(data[3], data[1].shape[1]))
    shares, means = [], []
    for h in halves:
        part = [x[h] for x in data]
        rows = noise.rows(h.start, h.stop)
        out = model(Batch(*part), noise=rows, loss_denominators=counts)
        out["loss"].backward()
        shares.append(out["loss"].item())
        means.append(model(Batch(*part), noise=rows)["loss"].item())
    assert sum(shares) == pytest.approx(whole["loss"].item(), abs=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, whole_grads[n], rtol=1e-5, atol=1e-7, msg=n)
    # the plain mean of the halves' means is another number: lengths differ between halves
    assert abs(sum(means) / 2 - whole["loss"].item()) > 1e-3


def test_wrapper_keeps_the_model_state_dict_keys(single_process):
    model = make_model(single_process.pg_collection)
    keys = list(model.state_dict())
    wrapped = parallelize_model(model, single_process)
    assert list(wrapped.state_dict()) == keys
    assert list(GlobalBatchLoss(model, None, 1).state_dict()) == keys
    assert unwrap(wrapped) is model and unwrap(model) is model
    wrapped.load_state_dict(copy.deepcopy(model.state_dict()))
    assert wrapped.module.dp_size == 1


def _bare_steps(model, steps, zero_to_none=True):
    optim = build_optimizer(model, OPTIM, 10, device_type="cpu")
    norms = []
    for step in range(steps):
        data = batch(step)
        noise = model.sample_noise(Batch(*data), torch.Generator().manual_seed(step))
        model(Batch(*data), noise=noise)["loss"].backward()
        norms.append(optim.clip_grad_norm(0.5))
        optim.step()
        optim.zero_grad(set_to_none=zero_to_none)
    return norms


def _parallel_steps(model, ctx, steps, zero_to_none=True):
    wrapped = parallelize_model(model, ctx)
    optim = build_optimizer(model, OPTIM, 10, optimizer_groups(ctx), grad_buffers=[wrapped])
    assert isinstance(optim, ReplicatedOptimizerSet)
    norms = []
    for step in range(steps):
        data = batch(step)
        noise = model.sample_noise(Batch(*data), torch.Generator().manual_seed(step))
        wrapped(Batch(*data), noise=noise)["loss"].backward()
        norms.append(optim.clip_grad_norm(0.5))
        optim.step()
        optim.zero_grad(set_to_none=zero_to_none)
    return norms, optim


@pytest.mark.parametrize("zero_to_none", [True, False])
def test_wrapped_training_equals_bare_training_in_one_process(single_process, zero_to_none):
    """DDP buffers, main_grad hand-over and zero_grad (either flavour) change nothing at DP1."""
    bare, wrapped = make_model(single_process.pg_collection), make_model(single_process.pg_collection)
    bare_norms = _bare_steps(bare, 3, zero_to_none)
    par_norms, optim = _parallel_steps(wrapped, single_process, 3, zero_to_none)
    assert par_norms == pytest.approx(bare_norms, rel=1e-6)
    for (name, a), b in zip(bare.named_parameters(), wrapped.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    assert all(p.grad is None for p in wrapped.parameters())
    assert optim.split.muon == build_optimizer(bare, OPTIM, 10, device_type="cpu").split.muon
