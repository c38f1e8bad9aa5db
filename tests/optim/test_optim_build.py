"""build_optimizer: the Muon/AdamW split, schedules, exact resume and gradient clipping."""

import copy
import io

import pytest
import torch
from torch import nn

from wallwm_pretrain.config import OptimConfig
from wallwm_pretrain.optim import Muon, build_optimizer


class Tiny(nn.Module):
    def __init__(self, vocab=11, d=16, frozen=True):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.embed.weight.use_adamw = True
        self.fc1 = nn.Linear(d, 32)
        self.fc2 = nn.Linear(32, d, bias=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.head.weight.use_adamw = True
        self.frozen = nn.Linear(d, d)
        self.frozen.requires_grad_(not frozen)

    def forward(self, tokens):
        h = self.embed(tokens)
        h = h + self.fc2(torch.relu(self.fc1(h))) + 0 * self.frozen(h)
        return self.head(self.norm(h))


def _cfg(**kw):
    base = dict(lr=0.02, adamw_lr=0.003, weight_decay=0.1, warmup_steps=2, min_lr_ratio=0.1)
    base.update(kw)
    return OptimConfig(**base)


def _batch(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randint(0, 11, (4, 6), generator=g)


def _train(model, opt, steps, start):
    for step in range(start, start + steps):
        tokens = _batch(step)
        logits = model(tokens)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.clip_grad_norm(1.0)
        opt.step()


def test_split_follows_ndim_and_use_adamw_marks():
    torch.manual_seed(0)
    opt = build_optimizer(Tiny(), _cfg(), total_steps=10, device_type="cpu")
    assert opt.split.muon == ["fc1.weight", "fc2.weight"]
    assert opt.split.adamw_decay == ["embed.weight", "head.weight"]
    assert opt.split.adamw_no_decay == ["fc1.bias", "norm.weight", "norm.bias", "head.bias"]
    muon, adamw = opt.optimizers["muon"], opt.optimizers["adamw"]
    assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    decay, no_decay = adamw.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert muon.param_groups[0]["weight_decay"] == 0.1
    assert adamw.defaults["betas"] == (0.9, 0.95)
    summary = opt.param_groups_summary()
    assert summary["muon"] == {"tensors": 2, "params": 16 * 32 + 32 * 16}
    assert summary["adamw"]["tensors"] == 6
    assert summary["adamw_decay"]["params"] == 11 * 16 + 11 * 16
    # frozen parameters are in no optimizer
    held = {id(p) for o in opt.optimizers.values() for g in o.param_groups for p in g["params"]}
    model_ids = {id(p) for p in opt._params.values()}
    assert held == model_ids and len(held) == 8


def test_ns_dtype_auto_picks_bf16_only_on_cuda():
    torch.manual_seed(0)
    for device, want in [("cuda", "bfloat16"), ("cpu", "float32")]:
        opt = build_optimizer(Tiny(), _cfg(ns_dtype="auto"), 10, device_type=device)
        assert opt.optimizers["muon"].param_groups[0]["ns_dtype"] == want
    opt = build_optimizer(Tiny(), _cfg(ns_dtype="bfloat16"), 10, device_type="cpu")
    assert opt.optimizers["muon"].param_groups[0]["ns_dtype"] == "bfloat16"


def test_lrs_follow_the_schedule_from_each_peak():
    torch.manual_seed(0)
    model = Tiny()
    opt = build_optimizer(model, _cfg(warmup_steps=4), total_steps=10, device_type="cpu")
    assert opt.lrs() == pytest.approx({"muon": 0.02 / 4, "adamw": 0.003 / 4})
    _train(model, opt, steps=3, start=0)
    assert opt.lrs() == pytest.approx({"muon": 0.02, "adamw": 0.003})
    _train(model, opt, steps=6, start=3)
    assert opt.lrs() == pytest.approx({"muon": 0.002, "adamw": 0.0003})  # last step: the floor


def test_one_newton_schulz_call_per_matrix_per_step():
    torch.manual_seed(0)
    model = Tiny()
    opt = build_optimizer(model, _cfg(), 10, device_type="cpu")
    _train(model, opt, steps=3, start=0)
    assert opt.optimizers["muon"].ns_calls == 2 * 3


def test_state_dict_round_trip_resumes_identically():
    torch.manual_seed(0)
    model = Tiny()
    opt = build_optimizer(model, _cfg(), total_steps=12, device_type="cpu")
    _train(model, opt, steps=3, start=0)

    buf = io.BytesIO()  # through serialisation, as a checkpoint would
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buf)
    _train(model, opt, steps=3, start=3)
    expected = copy.deepcopy(model.state_dict())
    expected_lrs = opt.lrs()

    torch.manual_seed(1)  # a different initialisation, overwritten by the restore
    fresh = Tiny()
    fresh_opt = build_optimizer(fresh, _cfg(), total_steps=12, device_type="cpu")
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    fresh.load_state_dict(saved["model"])
    fresh_opt.load_state_dict(saved["optim"])
    _train(fresh, fresh_opt, steps=3, start=3)

    for name, value in fresh.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert fresh_opt.lrs() == expected_lrs
    # Sanity: training moved the weights, so equality above is not trivial.
    assert not torch.equal(expected["fc1.weight"], saved["model"]["fc1.weight"])


def test_load_rejects_state_of_another_model():
    torch.manual_seed(0)
    opt = build_optimizer(Tiny(), _cfg(), 10, device_type="cpu")
    other = build_optimizer(Tiny(frozen=False), _cfg(), 10, device_type="cpu")
    with pytest.raises(ValueError, match="does not match"):
        other.load_state_dict(opt.state_dict())


def test_clip_grad_norm_returns_global_norm_and_clips():
    torch.manual_seed(0)
    model = Tiny()
    opt = build_optimizer(model, _cfg(), 10, device_type="cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, float(i + 1))
    true_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()
    before = [p.grad.clone() for p in params]

    assert opt.clip_grad_norm(0.0) == pytest.approx(true_norm, rel=1e-6)  # 0: measure only
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before))

    assert opt.clip_grad_norm(2 * true_norm) == pytest.approx(true_norm, rel=1e-6)  # no-op bound
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before))

    assert opt.clip_grad_norm(1.0) == pytest.approx(true_norm, rel=1e-6)
    clipped = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()
    assert clipped == pytest.approx(1.0, rel=1e-5)
    for p, b in zip(params, before):  # direction kept
        torch.testing.assert_close(p.grad, b / true_norm, rtol=1e-5, atol=0)

    with pytest.raises(ValueError):
        opt.clip_grad_norm(-1.0)


def test_zero_grad_and_no_trainable_parameters():
    torch.manual_seed(0)
    model = Tiny()
    opt = build_optimizer(model, _cfg(), 10, device_type="cpu")
    _train(model, opt, steps=1, start=0)
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer(Tiny().requires_grad_(False), _cfg(), 10, device_type="cpu")


def test_model_without_matrices_gets_adamw_only():
    opt = build_optimizer(nn.LayerNorm(8), _cfg(), 10, device_type="cpu")
    assert list(opt.optimizers) == ["adamw"]
    assert opt.param_groups_summary()["muon"] == {"tensors": 0, "params": 0}


def test_a_no_weight_decay_mark_keeps_a_matrix_out_of_the_decayed_group():
    from wallwm_pretrain.optim.params import split_parameters

    model = Tiny()
    model.embed.weight.no_weight_decay = True  # e.g. a modulation table or a camera embedding
    split = split_parameters(model)
    assert "embed.weight" in split.adamw_no_decay and "embed.weight" not in split.adamw_decay
    assert "head.weight" in split.adamw_decay  # unmarked 2-D AdamW tensors are still decayed


def test_wan_modulation_tables_and_cameras_are_not_decayed():
    from wallwm_pretrain.model.wan import WanConfig, WanTower
    from wallwm_pretrain.optim.params import split_parameters

    cfg = WanConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                    text_dim=8, freq_dim=8, ffn_dim=16, num_views=2)
    split = split_parameters(WanTower(cfg))
    marked = [n for n in split.adamw_no_decay if "modulation" in n or "camera" in n]
    assert len(marked) == 3 and not [n for n in split.adamw_decay if "modulation" in n or "camera" in n]


def test_gram_variant_reaches_muon_and_changes_only_roundings():
    """``optim.ns_variant=gram``: Muon's groups say so, and the update equals the quintic's
    within the fp32 tolerance of the Gram form (tests/optim/test_optim_newton_schulz.py)."""
    finals = {}
    for variant in ("quintic", "gram"):
        torch.manual_seed(0)
        model = Tiny()
        opt = build_optimizer(model, _cfg(ns_variant=variant), total_steps=10)
        assert opt.optimizers["muon"].param_groups[0]["ns_gram"] is (variant == "gram")
        model(_batch(0)).pow(2).mean().backward()
        opt.step()
        finals[variant] = model.fc1.weight.detach().clone()  # 32 x 16: the Gram form is cheaper
    assert not torch.equal(finals["gram"], finals["quintic"])
    torch.testing.assert_close(finals["gram"], finals["quintic"], atol=1e-6, rtol=0)
