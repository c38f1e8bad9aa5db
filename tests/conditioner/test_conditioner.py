"""The text conditioner on the tiny random Qwen3.5 VLM and real conditioner shards: the backbone
stays frozen and outside the optimizer, every head learns a tiny batch, the alignment target is
the next caption's text-encoder states, padding never reaches a loss, and the trainer runs,
saves and resumes it like the towers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wallwm_pretrain.config import ConfigError, load_config
from wallwm_pretrain.data.loader import EventLoader
from wallwm_pretrain.model.conditioner.heads import alignment_sse, caption_ce_sum
from wallwm_pretrain.model.conditioner.model import TextConditioner
from wallwm_pretrain.model.conditioner.prompt import build_prompt

pytestmark = pytest.mark.usefixtures("one_thread")

HEADS = ["model.conditioner.hidden_size=32", "model.conditioner.num_heads=2", "model.conditioner.caption_tokens=20",
         "model.conditioner.align_tokens=20"]


def _cfg(world, *extra):
    from wallwm_pretrain.data.dims import resolve_data_dims

    cfg = load_config(None, ["model.kind=conditioner", "data.mode=conditioner", f"data.shards={world['cond']}",
                             f"model.conditioner.vlm={world['models'] / 'vlm'}", "data.batch_size=4",
                             "data.shuffle_buffer=0", "train.device=cpu", *HEADS, *extra])
    return resolve_data_dims(cfg)


def _batch(world, cfg, n=1):
    loader = EventLoader(cfg.data, cfg.model.frame_stride, cfg.model.caption_max_bytes)
    return [next(loader) for _ in range(n)]


def _vlm_weights(model):
    return {k: v.clone() for k, v in model.vlm._model.state_dict().items()}


def test_prompt_lists_the_done_events():
    assert build_prompt("stack the cubes", [], 4) == "Task: stack the cubes. Done: nothing. What is the next event?"
    p = build_prompt("t", ["a", "b", "c"], 2)
    assert p == "Task: t. Done (1 earlier): b; c. What is the next event?"


def test_backbone_frozen_and_outside_state_and_optimizer(cond_world):
    from wallwm_pretrain.optim import build_optimizer

    cfg = _cfg(cond_world)
    torch.manual_seed(0)
    model = TextConditioner(cfg.model)
    before = _vlm_weights(model)
    vlm_params = {id(p) for p in model.vlm._model.parameters()}
    assert all(not p.requires_grad for p in model.vlm._model.parameters())
    assert not vlm_params & {id(p) for p in model.parameters()}
    assert all(not k.startswith("vlm") for k in model.state_dict())
    optim = build_optimizer([model], cfg.optim, 10)
    in_optim = {id(p) for g in optim.param_groups for p in g["params"]} if hasattr(optim, "param_groups") else set()
    assert not vlm_params & in_optim
    for batch in _batch(cond_world, cfg, 3):
        out = model(batch)
        out["loss"].backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
    after = _vlm_weights(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical
    assert all(p.grad is None for p in model.vlm._model.parameters())


def test_each_head_learns_a_tiny_batch(cond_world):
    cfg = _cfg(cond_world)
    torch.manual_seed(0)
    model = TextConditioner(cfg.model)
    batch = _batch(cond_world, cfg)[0]
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    first = None
    for _ in range(220):
        out = model(batch)
        first = first or {k: float(v.detach()) for k, v in out.items()}
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    last = {k: float(v) for k, v in model(batch).items()}
    assert last["loss_next"] < 0.1 * first["loss_next"], (first, last)
    assert last["loss_align"] < 0.2 * first["loss_align"], (first, last)
    assert last["loss_time"] < 0.2 * first["loss_time"], (first, last)
    # and what it learned reads back: the captions it writes are the batch's
    preds = model.eval().predict(batch.observation, batch.state, batch.task, batch.done)
    assert [p.caption for p in preds] == batch.caption
    steps = np.array([p.remaining_steps for p in preds])
    assert np.abs(steps - batch.remaining.numpy()).mean() < 1.5


def test_alignment_target_is_the_next_caption_states(cond_world):
    """The states the alignment head is trained on are the text encoder's on the caption of the
    event to execute (the sample's ``caption``), not the event after it (``next_caption``)."""
    from data_tools.textstates import EmbedCaptions

    cfg = _cfg(cond_world)
    batch = _batch(cond_world, cfg)[0]
    enc = EmbedCaptions(str(cond_world["models"] / "text_encoder"), str(cond_world["models"] / "tokenizer"))
    for i, caption in enumerate(batch.caption):
        want = enc.encode([caption])[0]
        n = int(batch.text_valid[i].sum())
        assert n == len(want)
        np.testing.assert_allclose(batch.text_states[i, :n].numpy(), want.astype(np.float32), atol=1e-3)


def test_padding_never_reaches_the_losses():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 6, 4), torch.randn(2, 5, 4)
    valid = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    base = alignment_sse(pred, target, valid)
    junk = target.clone()
    junk[0, 3:] = 100.0
    assert torch.equal(alignment_sse(pred, junk, valid), base)
    moved = target.clone()
    moved[0, 2] += 1.0
    assert not torch.equal(alignment_sse(pred, moved, valid), base)
    # every predicted position is trained: on the target's padding and past it, towards Wan's zeros
    for row, pos in ((0, 4), (1, 5)):
        off = pred.clone()
        off[row, pos] += 1.0
        assert alignment_sse(off, target, valid) > base
    zero_tail = pred.clone()
    zero_tail[0, 3:], zero_tail[1, 5:] = 0.0, 0.0
    head = ((pred[0, :3] - target[0, :3]) ** 2).sum() + ((pred[1, :5] - target[1, :5]) ** 2).sum()
    torch.testing.assert_close(alignment_sse(zero_tail, target, valid), head)
    logits, ids = torch.randn(2, 4, 9), torch.randint(0, 9, (2, 4))
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    ce = caption_ce_sum(logits, ids, mask)
    other = ids.clone()
    other[0, 2:] = (ids[0, 2:] + 1) % 9
    logits2 = logits.clone()
    logits2[0, 2:] = torch.randn(2, 9)
    assert torch.equal(caption_ce_sum(logits2, other, mask), ce)


def test_a_sample_is_the_same_alone_and_beside_a_longer_one(cond_world):
    """VLM states of a short prompt padded to a longer one's length: the heads mask the padding."""
    cfg = _cfg(cond_world)
    torch.manual_seed(0)
    model = TextConditioner(cfg.model).eval()
    b = _batch(cond_world, cfg)[0]
    long_done = [["reach for the red cube"] * 6]
    both = model.predict(b.observation[:2], b.state[:2], b.task[:2], [b.done[0]] + long_done)
    alone = model.predict(b.observation[:1], b.state[:1], b.task[:1], [b.done[0]])
    assert both[0].caption == alone[0].caption
    assert abs(both[0].remaining_steps - alone[0].remaining_steps) < 1e-4
    torch.testing.assert_close(both[0].text_states, alone[0].text_states, atol=1e-5, rtol=1e-4)


def test_config_checks(cond_world):
    with pytest.raises(ConfigError, match="data.mode=conditioner"):
        load_config(None, ["model.kind=conditioner", "model.conditioner.vlm=x"])
    with pytest.raises(ConfigError, match="model.conditioner.vlm"):
        load_config(None, ["model.kind=conditioner", "data.mode=conditioner"])
    with pytest.raises(ConfigError, match="data parallel only"):
        load_config(None, ["model.kind=conditioner", "data.mode=conditioner", "model.conditioner.vlm=x",
                           "parallel.tp=2"])
    with pytest.raises(ConfigError, match="model.kind=conditioner"):
        load_config(None, ["data.mode=conditioner"])
    with pytest.raises(ConfigError, match="embed-captions"):
        _cfg(dict(cond_world, cond=cond_world["heldout_cond"]))  # no text states there


def _train(tmp_path, world, name, *extra):
    from wallwm_pretrain.parallel import shutdown_parallel
    from wallwm_pretrain.trainer import Trainer

    cfg = load_config(None, ["model.kind=conditioner", "data.mode=conditioner", f"data.shards={world['cond']}",
                             f"model.conditioner.vlm={world['models'] / 'vlm'}", "data.batch_size=4",
                             "data.shuffle_buffer=8", "train.device=cpu", "train.log_every=2",
                             "optim.warmup_steps=2", f"train.runs_root={tmp_path / 'runs'}",
                             f"train.run_name={name}", *HEADS, *extra])
    trainer = Trainer(cfg)
    try:
        return trainer, trainer.train()
    finally:
        shutdown_parallel()


def test_trainer_runs_saves_and_resumes_identically(tmp_path, cond_world):
    from wallwm_pretrain.checkpoint import find_latest, load_checkpoint

    straight, summary = _train(tmp_path, cond_world, "straight", "train.steps=6", "train.save_every=0")
    assert set(straight.history) == {"loss", "loss_align", "loss_next", "loss_time"}
    assert summary.end_step == 6 and np.isfinite(summary.last_loss)
    saved = load_checkpoint(find_latest(tmp_path / "runs" / "straight"))
    assert saved.model and all(not k.startswith("vlm") for k in saved.model)  # the heads alone
    _train(tmp_path, cond_world, "split", "train.steps=6", "train.stop_after=3", "train.save_every=0")
    resumed, later = _train(tmp_path, cond_world, "split", "train.steps=6", "train.resume=auto")
    assert later.start_step == 3
    assert [v for _, v in resumed.history["loss"]] == [v for _, v in straight.history["loss"]]


def test_planner_and_infer_on_a_trained_checkpoint(tmp_path, cond_world, capsys):
    import json

    from wallwm_pretrain.eval.conditioner import ConditionerPlanner
    from wallwm_pretrain.infer import main as infer_main

    _train(tmp_path, cond_world, "c", "train.steps=2")
    run = tmp_path / "runs" / "c"
    planner = ConditionerPlanner.load(run)
    out = tmp_path / "next.json"
    states = tmp_path / "states.npy"
    rc = infer_main(["--conditioner", str(run), "--shards", str(cond_world["heldout_cond"]), "--out", str(out),
                     "--save-states", str(states)])
    assert rc == 0
    got = json.loads(out.read_text())
    assert isinstance(got["next_event"], str) and got["remaining_steps"] >= 0
    assert got["truth"]["caption"] and got["truth"]["remaining"] >= 1
    # every one of the align_tokens positions (each trained against the zero-padded target)
    assert np.load(states).shape == (20, planner.cfg.model.conditioner.text_dim)
    assert "next event:" in capsys.readouterr().out
    rc = infer_main(["--conditioner", str(run), "--shards", str(cond_world["heldout_cond"]), "--key", "nope"])
    assert rc == 2 and "no sample 'nope'" in capsys.readouterr().err
