"""Staircase decoding on the tiny random Qwen3.5 VLM and Qwen3 small LM of make-tiny: the relay
(latents 2..K_c never run the lower layers), one parallel forward of the upper layers, incremental
decoding with the caches equal to it, frozen models untouched and outside the optimizer, L_CoT
learning a tiny batch until the greedy trace is the target, and the reasoning traces of
build-conditioner's samples."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from wallwm_pretrain.config import ConfigError, StaircaseConfig, load_config
from wallwm_pretrain.model.conditioner.errors import ConditionerError
from wallwm_pretrain.model.conditioner.prompt import build_prompt
from wallwm_pretrain.model.conditioner.staircase import StaircaseBranch
from wallwm_pretrain.model.conditioner.staircase_model import StaircaseModel

pytestmark = pytest.mark.usefixtures("one_thread")

# incremental vs parallel: the same float32 products summed in other groupings (attention over
# P + 1 keys vs a masked row of K_c keys), so equal up to float32 rounding
TOL = dict(atol=1e-5, rtol=1e-5)


def _branch(layers=4, d=32, **kw) -> StaircaseBranch:
    cfg = StaircaseConfig(**{"latents": 5, "relay_depth": 2, "num_heads": 4, "ffn_mult": 2, **kw})
    torch.manual_seed(0)
    return StaircaseBranch(layers, d, cfg)


def _context(layers=4, b=2, length=7, d=32):
    """Random per-layer context states with right padding on sample 1 (zero there, as the VLM's)."""
    g = torch.Generator().manual_seed(1)
    valid = torch.ones(b, length, dtype=torch.bool)
    valid[1, 4:] = False
    return torch.randn(layers, b, length, d, generator=g) * valid[None, ..., None], valid


def _reference(branch: StaircaseBranch, states, valid) -> torch.Tensor:
    """The staircase written out per latent and per key, with plain tensor ops on the branch's
    weights: latent 1 alone through the lower layers; latent k (k >= 2) enters the upper layers as
    relay + p_k; in each upper layer latent k attends to the valid context positions of its VLM
    layer and to latents 1..k."""
    def attend(layer, x_k, keys_lat, vals_lat, ctx):
        h, d = layer.heads, x_k.shape[-1]
        q = layer.q(layer.norm(x_k)).view(h, d // h)
        ck, cv = layer.context_kv(layer.context_norm(ctx)).chunk(2, dim=-1)
        keys = torch.cat([ck, keys_lat]).view(-1, h, d // h)
        vals = torch.cat([cv, vals_lat]).view(-1, h, d // h)
        w = torch.softmax(torch.einsum("hc,nhc->hn", q, keys) / (d // h) ** 0.5, dim=-1)
        x = x_k + layer.out(torch.einsum("hn,nhc->hc", w, vals).reshape(d))
        gate, up = layer.gate_up(layer.ffn_norm(x)).chunk(2, dim=-1)
        return x + layer.down(torch.nn.functional.silu(gate) * up)

    out = []
    for i in range(states.shape[1]):
        ctx = [states[j * branch.layer_group, i][valid[i]] for j in range(len(branch.layers))]
        x = branch.start
        for j in branch.lower:
            layer = branch.layers[j]
            k, v = layer.kv(layer.norm(x)).chunk(2, dim=-1)
            x = attend(layer, x, k[None], v[None], ctx[j])
        xs = [x] + [x + branch.positions[k] for k in range(branch.latents - 1)]
        for j in branch.upper:
            layer = branch.layers[j]
            kv = [layer.kv(layer.norm(x)).chunk(2, dim=-1) for x in xs]
            xs = [attend(layer, xs[k], torch.stack([kv[m][0] for m in range(k + 1)]),
                         torch.stack([kv[m][1] for m in range(k + 1)]), ctx[j]) for k in range(len(xs))]
        out.append(branch.norm(torch.stack(xs)))
    return torch.stack(out)


def _count_calls(branch):
    calls = {j: [] for j in range(len(branch.layers))}
    hooks = [layer.register_forward_hook(lambda m, args, out, j=j: calls[j].append(args[0].shape[1]))
             for j, layer in enumerate(branch.layers)]
    return calls, hooks


def test_relay_latents_after_the_first_never_run_the_lower_layers():
    branch = _branch()
    states, valid = _context()
    calls, hooks = _count_calls(branch)
    with torch.no_grad():
        z = branch(states, valid)
    for h in hooks:
        h.remove()
    # lower layers: one call each, for one latent; upper layers: one call each, for all K_c at once
    assert calls == {0: [1], 1: [1], 2: [5], 3: [5]}
    assert z.shape == (2, 5, 32)
    with torch.no_grad():
        ref = _reference(branch, states, valid)
    torch.testing.assert_close(z, ref, **TOL)
    # the lower layers reach latents 2..K_c only through the relay: the relay read off latent 1
    # alone determines them (a second run from relay + p_k through the upper layers agrees)
    with torch.no_grad():
        cache = branch.prepare(states, valid)
        x = torch.cat([branch.relay(cache)] + [branch.relay(cache) + branch.positions[k][None, None]
                                               for k in range(4)], dim=1)
        for j in branch.upper:
            x, _ = branch.layers[j](x, cache.context[j], valid)
    torch.testing.assert_close(branch.norm(x), z, atol=0, rtol=0)


def test_relay_with_grouped_layers_and_no_lower_layers():
    # layer_group 2: branch layer j reads VLM layer 2j; relay_depth 0: the relay is the start vector
    branch = _branch(layers=6, layer_group=2, relay_depth=0, latents=3)
    states, valid = _context(layers=6)
    with torch.no_grad():
        torch.testing.assert_close(branch(states, valid), _reference(branch, states, valid), **TOL)
        moved = states.clone()
        moved[1] += 1.0  # a VLM layer no branch layer reads
        torch.testing.assert_close(branch(moved, valid), branch(states, valid), atol=0, rtol=0)


def test_incremental_decoding_with_the_caches_equals_the_parallel_forward():
    branch = _branch()
    states, valid = _context()
    with torch.no_grad():
        full = branch(states, valid)
        calls, hooks = _count_calls(branch)
        cache = branch.prepare(states, valid)
        inputs = branch.upper_inputs(branch.relay(cache))
        steps = []
        for k in range(branch.latents):
            steps.append(branch.step(cache, inputs[:, k:k + 1]))
            assert all(cache.length(j) == k + 1 for j in branch.upper)
        for h in hooks:
            h.remove()
        torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)
        torch.testing.assert_close(branch.decode(states, valid), full, **TOL)
    # each upper layer ran once per latent, one latent at a time; the lower layers kept no cache
    assert calls == {0: [1], 1: [1], 2: [1] * 5, 3: [1] * 5}
    assert set(cache.latents) == set(branch.upper)


def test_bad_shapes_and_config_fail_naming_the_key():
    with pytest.raises(ConditionerError, match="model.staircase.relay_depth"):
        _branch(relay_depth=4)
    with pytest.raises(ConditionerError, match="model.staircase.layer_group"):
        _branch(layer_group=3)
    with pytest.raises(ConditionerError, match="num_heads"):
        _branch(num_heads=5)
    with pytest.raises(ConfigError, match="model.staircase.latents"):
        load_config(None, ["model.staircase.latents=0"])
    with pytest.raises(ConfigError, match="model.staircase.relay_depth"):
        load_config(None, ["model.staircase.relay_depth=-1"])


def _cfg(world, *extra):
    models = world["models"]
    return load_config(None, [f"model.conditioner.vlm={models / 'vlm'}", "model.conditioner.vlm_dtype=float32",
                              f"model.staircase.small_lm={models / 'small_lm'}", "model.staircase.latents=4",
                              "model.staircase.prefix_per_latent=4", "model.staircase.trace_tokens=96",
                              "train.device=cpu", *extra])


def _samples(world, n, shortest=False):
    """n samples of the conditioner shards (the first, or those with the shortest distinct
    reasoning traces): observations, prompts, traces."""
    from data_tools.shardread import iter_samples

    rows = []
    for _, _, members in iter_samples(world["cond"], ("json", "observation.npy")):
        meta = json.loads(members["json"])
        rows.append((np.load(io.BytesIO(members["observation.npy"])),
                     build_prompt(meta["task"], meta["done_captions"], 8), meta["reasoning"]))
    if shortest:
        rows.sort(key=lambda r: (len(r[2]), r[2]))
        rows = [r for k, r in enumerate(rows) if k == 0 or r[2] != rows[k - 1][2]]
    obs, prompts, traces = zip(*rows[:n])
    return np.stack(obs), list(prompts), list(traces)


def test_frozen_vlm_and_small_lm_untouched_and_outside_state_and_optimizer(cond_world):
    from wallwm_pretrain.optim import build_optimizer

    cfg = _cfg(cond_world)
    torch.manual_seed(0)
    model = StaircaseModel(cfg.model)
    frozen = {"vlm": model.vlm._model, "small_lm": model.small_lm._model}
    before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in frozen.items()}
    frozen_ids = {id(p) for m in frozen.values() for p in m.parameters()}
    assert all(not p.requires_grad for m in frozen.values() for p in m.parameters())
    assert not frozen_ids & {id(p) for p in model.parameters()}
    assert {k.split(".")[0] for k in model.state_dict()} == {"branch", "projector"}
    optim = build_optimizer([model], cfg.optim, 10)
    in_optim = {id(p) for p in optim._params.values()}  # the parameters the set updates
    assert in_optim == {id(p) for p in model.parameters()}
    images, prompts, traces = _samples(cond_world, 2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(3):
        model.cot(images, prompts, traces)["loss"].backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
    for name, m in frozen.items():
        after = m.state_dict()
        assert before[name].keys() == after.keys()
        assert all(torch.equal(before[name][k], after[k]) for k in after), name  # bit-identical
        assert all(p.grad is None for p in m.parameters())
    # the branch and the projector did train
    assert all(not torch.equal(start[k], v) for k, v in model.state_dict().items()
               if k.endswith("weight") and "norm" not in k)


def test_cot_loss_ignores_padding(cond_world):
    cfg = _cfg(cond_world)
    torch.manual_seed(0)
    model = StaircaseModel(cfg.model)
    images, prompts, traces = _samples(cond_world, 2)
    traces = [traces[0], traces[1][:20]]  # different lengths: the shorter one is padded
    lm = model.small_lm
    with torch.no_grad():
        prefix = model.projector(model.latents(images, prompts))
        losses = [lm.cot_loss(prefix, *lm.tokenize(traces, n)) for n in (96, 120)]
        # per-token mean: the two traces' token sums over their real token counts
        ids, mask = lm.tokenize(traces, 96)
        sums = [lm.cot_loss(prefix[i:i + 1], ids[i:i + 1], mask[i:i + 1]) * mask[i].sum() for i in range(2)]
    torch.testing.assert_close(losses[0], losses[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(losses[0], sum(sums) / mask.sum(), atol=1e-5, rtol=1e-5)


def test_cot_loss_learns_a_tiny_batch_until_the_greedy_trace_is_the_target(cond_world):
    cfg = _cfg(cond_world)
    torch.manual_seed(0)
    model = StaircaseModel(cfg.model)
    images, prompts, traces = _samples(cond_world, 2, shortest=True)
    assert traces[0] != traces[1]
    _, mask = model.small_lm.tokenize(traces, 96)
    assert mask[:, -1].sum() == 0  # the traces fit trace_tokens whole (not cut)
    assert model.decode_traces(images, prompts) != traces
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for step in range(800):
        loss = model.cot(images, prompts, traces)["loss"]
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 49 and model.decode_traces(images, prompts) == traces:
            break
    assert loss.item() < 0.1 * first
    assert model.decode_traces(images, prompts) == traces


def test_conditioner_samples_carry_the_reasoning_trace(cond_world):
    from data_tools.reasoning import reasoning_trace
    from data_tools.shardread import iter_samples

    parents = {key: json.loads(m["json"]).get("parent_caption", "")
               for _, key, m in iter_samples(cond_world["events"], ("json",))}
    seen = 0
    for _, _, members in iter_samples(cond_world["cond"], ("json",)):
        m = json.loads(members["json"])
        want = reasoning_trace(m["task"], m["done_captions"], m["caption"], m["next_caption"],
                               parents[m["event_key"]])
        assert m["reasoning"] == want
        assert f"Now: {m['caption'].rstrip('.')}." in want
        seen += 1
    assert seen > 10


def test_reasoning_trace_from_the_hierarchy():
    from data_tools.reasoning import reasoning_trace

    assert reasoning_trace("open the drawer", [], "reach the handle", "pull it", "") == (
        "Task: open the drawer. Done: nothing. Now: reach the handle. Next: pull it. Why: to open the drawer.")
    t = reasoning_trace("t", ["a", "b", "c", "d."], "e", "", "grasp the cube")
    assert t == "Task: t. Done: (1 earlier) b; c; d. Now: e. Next: nothing. Why: to grasp the cube."


def test_a_dataset_s_own_reasoning_is_used(tmp_path):
    from data_tools.conditioner import build_conditioner
    from data_tools.errors import EventError
    from data_tools.events import EVENTS_FILE, read_events
    from data_tools.shardread import iter_samples
    from data_tools.shards import build_shards
    from data_tools.synthworld import synthesize

    synthesize(tmp_path / "ds", 2, 5, image_size=32, progress=False)
    path = tmp_path / "ds" / EVENTS_FILE
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        if row["episode_index"] == 0 and row["level"] == "L1":
            row["reasoning"] = f"my own trace {row['index']}"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert {e.reasoning for e in read_events(path) if e.episode_index == 1} == {None}
    build_shards(tmp_path / "ds", tmp_path / "ev", level="L1", image_size=32, progress=False)
    build_conditioner(tmp_path / "ev", tmp_path / "cond", per_event=2, progress=False)
    own = generated = 0
    for _, _, members in iter_samples(tmp_path / "cond", ("json",)):
        m = json.loads(members["json"])
        if m["episode_id"] == 0:
            assert m["reasoning"] == f"my own trace {m['event_index']}"
            own += 1
        else:
            assert m["reasoning"].startswith("Task: ")
            generated += 1
    assert own and generated
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rows[0], "reasoning": 3}) + "\n")
    with pytest.raises(EventError, match="bad.jsonl:1.*reasoning"):
        read_events(bad)


def test_vlm_layer_states_are_the_inputs_of_its_decoder_layers(cond_world):
    from wallwm_pretrain.model.conditioner.vlm import FrozenVLM

    vlm = FrozenVLM.load(cond_world["models"] / "vlm")
    images, prompts, _ = _samples(cond_world, 2)
    prompts = [prompts[0], prompts[0] + " and more words, so that the first sample is padded"]
    states, valid = vlm.layer_states(images, prompts)
    inputs = vlm.inputs(images, prompts)
    assert states.shape[:3] == (vlm.num_layers, 2, inputs["input_ids"].shape[1])
    assert (states[:, ~valid] == 0).all() and valid[0].sum() < valid[1].sum()
    # layer 0 reads the token embeddings (image features in place of the image tokens)
    text = valid & (inputs["mm_token_type_ids"] == 0)
    torch.testing.assert_close(states[0][text], vlm.input_embeddings()[inputs["input_ids"][text]])
    # the last layer's input is not the final output; the final output is encode's
    last, _ = vlm.encode(images, prompts)
    assert not torch.allclose(states[-1][valid], last[valid])
    # right padding: sample 0 alone gives its states in the batch
    alone, _ = vlm.layer_states(images[:1], prompts[:1])
    n = int(valid[0].sum())
    torch.testing.assert_close(alone[:, 0, :n], states[:, 0, :n], atol=1e-5, rtol=1e-5)


def _train_staircase(tmp_path, world, name, *extra):
    from wallwm_pretrain.parallel import shutdown_parallel
    from wallwm_pretrain.trainer import Trainer

    models = world["models"]
    cfg = load_config(None, [
        "model.kind=staircase", "data.mode=conditioner", f"data.shards={world['cond']}",
        f"model.conditioner.vlm={models / 'vlm'}", f"model.staircase.small_lm={models / 'small_lm'}",
        "model.staircase.latents=4", "model.staircase.prefix_per_latent=2", "model.staircase.trace_tokens=96",
        "data.batch_size=4", "data.shuffle_buffer=8", "train.device=cpu", "train.log_every=2", "optim.warmup_steps=2",
        "tracking.enabled=false", f"train.runs_root={tmp_path / 'runs'}", f"train.run_name={name}", *extra])
    trainer = Trainer(cfg)
    try:
        return trainer, trainer.train()
    finally:
        shutdown_parallel()


def test_trainer_trains_stage_4_and_resumes_identically(tmp_path, cond_world):
    """model.kind=staircase through the trainer: L_CoT on the shards' reasoning traces, the
    checkpoint holds the branch and the projector alone, a stop and resume gives the same losses."""
    from wallwm_pretrain.checkpoint import find_latest, load_checkpoint

    straight, summary = _train_staircase(tmp_path, cond_world, "straight", "train.steps=4", "train.save_every=0")
    assert set(straight.history) == {"loss", "loss_cot"} and summary.end_step == 4
    losses = [v for _, v in straight.history["loss"]]
    assert all(np.isfinite(losses)) and losses == [v for _, v in straight.history["loss_cot"]]
    saved = load_checkpoint(find_latest(tmp_path / "runs" / "straight"))
    assert saved.model and {k.split(".")[0] for k in saved.model} == {"branch", "projector"}
    _train_staircase(tmp_path, cond_world, "split", "train.steps=4", "train.stop_after=2", "train.save_every=0")
    resumed, later = _train_staircase(tmp_path, cond_world, "split", "train.steps=4", "train.resume=auto")
    assert later.start_step == 2 and [v for _, v in resumed.history["loss"]] == losses


def test_stage_4_needs_its_small_lm_and_traces(cond_world):
    with pytest.raises(ConfigError, match="model.staircase.small_lm"):
        load_config(None, ["model.kind=staircase", "data.mode=conditioner", "model.conditioner.vlm=x"])


def test_infer_prints_the_trace_of_a_stage_4_checkpoint(tmp_path, cond_world, capsys):
    import json as _json

    from wallwm_pretrain.infer import main as infer_main

    _train_staircase(tmp_path, cond_world, "s", "train.steps=1")
    run = tmp_path / "runs" / "s"
    out = tmp_path / "trace.json"
    assert infer_main(["--staircase", str(run), "--shards", str(cond_world["cond"]), "--out", str(out)]) == 0
    got = _json.loads(out.read_text())
    assert isinstance(got["reasoning"], str) and "next_event" not in got
    assert "reasoning trace:" in capsys.readouterr().out
    assert infer_main(["--shards", str(cond_world["cond"])]) == 2
    assert "--conditioner" in capsys.readouterr().err
    assert infer_main(["--staircase", str(run), "--shards", str(cond_world["cond"]), "--policy", str(run)]) == 2


def test_every_stage_4_parameter_belongs_to_one_component(cond_world):
    from wallwm_pretrain.components import component_of, component_patterns

    model = StaircaseModel(_cfg(cond_world).model)
    patterns = component_patterns("staircase", "small")
    seen = {component_of(n, patterns) for n, _ in model.named_parameters()}
    assert seen == {"staircase_branch", "prefix_projector"}
