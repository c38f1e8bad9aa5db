"""A Wan-tower checkpoint plans in Meta-World through ``python -m wallwm_pretrain.eval``: the
recorded pick-place episodes get VAE latents and UMT5 states (make-tiny's models), a tiny Wan
run trains two steps on them, and the closed loop runs it in process and through the policy
server with openpi's client protocol, the same episodes either way. Two training steps: success
is whatever a nearly untrained policy achieves; what is checked is that it plans and reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

TASK = "pick-place-v3"
ACTION = ["model.hidden_size=32", "model.num_heads=2", "model.ffn_hidden_size=64"]


@pytest.fixture(scope="module")
def wan_mw_run(mw_shards, tmp_path_factory):
    from data_tools.latents import encode_latents
    from data_tools.textstates import embed_captions
    from wallwm_pretrain.config import load_config
    from wallwm_pretrain.convert.__main__ import main as convert
    from wallwm_pretrain.convert.tiny import make_tiny
    from wallwm_pretrain.parallel import shutdown_parallel
    from wallwm_pretrain.trainer import Trainer

    base = tmp_path_factory.mktemp("wan_mw")
    models = make_tiny(base / "models", seed=0)
    shards = shutil.copytree(mw_shards["L1"], base / "shards")
    encode_latents(shards, models["vae"], progress=False)
    embed_captions(shards, models["text_encoder"], progress=False)
    init = base / "init"
    index = json.loads((shards / "index.json").read_text())
    dims = [f"model.action_dim={index['action_dim']}", f"model.state_dim={index['state_dim']}"]
    assert convert(["wan", "--src", str(models["transformer"]), "--out", str(init), "--num-views", "2",
                    "model.video_input=latents", f"data.shards={shards}", *ACTION, *dims]) == 0
    cfg = load_config(init / "config.yaml", [f"model.init_from={init}", f"train.runs_root={base / 'runs'}",
                                             "train.run_name=wan_mw", "train.device=cpu", "data.batch_size=2",
                                             "data.max_frames=8", "train.steps=2", "optim.warmup_steps=1"])
    try:
        assert Trainer(cfg).train().end_step == 2
    finally:
        shutdown_parallel()
    return base / "runs" / "wan_mw"


def test_a_wan_checkpoint_plans_in_metaworld_in_process_and_through_the_server(wan_mw_run, tmp_path, eval_cli):
    from wallwm_pretrain.serve.engine import PolicyEngine
    from wallwm_pretrain.serve.server import PolicyServer

    common = ["--env", "metaworld", "--tasks", TASK, "--episodes", "1", "--max-steps", "12", "--quiet",
              "--denoise-steps", "2", "--no-tracking"]
    code, out, err = eval_cli("--ckpt", wan_mw_run, *common, "--out", tmp_path / "local")
    assert code == 0, err
    local = json.loads((tmp_path / "local" / "results.json").read_text())
    task = local["tasks"][TASK]
    assert local["mode"] == "event" and local["horizon"] == 8 and task["episodes"] == 1
    assert 1 <= task["mean_steps"] <= 12 and task["mean_plans"] >= 2 and task["successes"] in (0, 1)
    assert (tmp_path / "local" / "strips" / f"{TASK}_ep000.png").is_file()

    server = PolicyServer(PolicyEngine.load(wan_mw_run, denoise_steps=2), host="127.0.0.1", port=0)
    server.start_in_thread()
    try:
        code, out, err = eval_cli("--server", server.url, *common, "--out", tmp_path / "remote")
    finally:
        server.stop()
    assert code == 0, err
    remote = json.loads((tmp_path / "remote" / "results.json").read_text())
    for key in ("success_per_episode", "episode_seeds", "mean_steps", "mean_plans"):
        assert remote["tasks"][TASK][key] == task[key], key


def test_an_event_trained_wan_checkpoint_plans_unified_chunks(wan_mw_run, tmp_path, eval_cli):
    """One backbone, two modes: the event-trained Wan towers plan unified chunks (history frames
    through the VAE, the atomic caption through UMT5)."""
    code, _, err = eval_cli("--ckpt", wan_mw_run, "--env", "metaworld", "--tasks", TASK, "--episodes", "1",
                            "--max-steps", "10", "--quiet", "--denoise-steps", "2", "--no-tracking", "--mode", "unified",
                            "--context", "atomic", "--out", tmp_path / "unified")
    assert code == 0, err
    results = json.loads((tmp_path / "unified" / "results.json").read_text())
    assert results["mode"] == "unified" and list(results["contexts"]) == ["atomic"]
    task = results["contexts"]["atomic"]["tasks"][TASK]
    assert task["episodes"] == 1 and task["mean_plans"] >= 1
    # the other sources need the conditioner's or the Staircase branch's heads, which this run lacks
    from wallwm_pretrain.eval.policy import ChunkContext, PolicyError
    from wallwm_pretrain.eval.wan_policy import load_policy

    policy = load_policy(wan_mw_run, mode="unified", denoise_steps=1)
    frame = np.zeros((policy.num_views, policy.image_size, policy.image_size, 3), np.uint8)
    with pytest.raises(PolicyError, match="builds none"):
        policy.plan_chunk([frame] * policy.history, frame, np.zeros(policy.state_dim, np.float32),
                          ChunkContext("global", task="pick the puck"), policy.new_episode(0))


def test_the_open_loop_error_names_the_wan_path(wan_mw_run, mw_shards, eval_cli):
    code, _, err = eval_cli("--ckpt", wan_mw_run, "--env", "metaworld", "--tasks", TASK, "--episodes", "1",
                            "--max-steps", "4", "--quiet", "--no-tracking", "--heldout", mw_shards["L1"])
    assert code != 0 and "Wan-tower checkpoint runs closed loop only" in err


@pytest.fixture(scope="module")
def aligned_conditioner(mw_shards, tmp_path_factory):
    """make-tiny's VLM and conditioner shards of the same recording with make-tiny's UMT5 states:
    2 steps of the heads, the alignment head trained against the zero-padded UMT5 states."""
    from data_tools.conditioner import build_conditioner
    from data_tools.textstates import embed_captions
    from wallwm_pretrain.config import load_config
    from wallwm_pretrain.convert.tiny import make_tiny
    from wallwm_pretrain.parallel import shutdown_parallel
    from wallwm_pretrain.trainer import Trainer

    base = tmp_path_factory.mktemp("wan_mw_cond")
    models = make_tiny(base / "models", seed=0)
    build_conditioner(mw_shards["L1"], base / "cond", per_event=2, samples_per_shard=16, progress=False)
    embed_captions(base / "cond", models["text_encoder"], progress=False)
    cfg = load_config(None, [
        "model.kind=conditioner", "data.mode=conditioner", f"data.shards={base / 'cond'}",
        f"model.conditioner.vlm={models['vlm']}", "model.conditioner.hidden_size=32", "model.conditioner.num_heads=2",
        "model.conditioner.caption_tokens=16", "model.conditioner.align_tokens=24", "data.batch_size=4",
        "train.steps=2", "train.device=cpu", "tracking.enabled=false", f"train.runs_root={base / 'runs'}",
        "train.run_name=cond"])
    try:
        Trainer(cfg).train()
    finally:
        shutdown_parallel()
    return base / "runs" / "cond"


def test_predicted_events_feed_the_wan_tower_the_aligned_states(wan_mw_run, aligned_conditioner, tmp_path,
                                                                 eval_cli, monkeypatch):
    from wallwm_pretrain.eval.wan_policy import WanPolicy

    seen = []
    plan_states = WanPolicy.plan_states

    def spy(self, frame, state, text, generator):
        seen.append(tuple(text.shape))
        return plan_states(self, frame, state, text, generator)

    def refuse(self, *args):
        raise AssertionError("a predicted event was planned from its caption's UMT5 states")

    monkeypatch.setattr(WanPolicy, "plan_states", spy)
    monkeypatch.setattr(WanPolicy, "plan", refuse)
    code, _, err = eval_cli("--ckpt", wan_mw_run, "--env", "metaworld", "--tasks", TASK, "--episodes", "1",
                            "--max-steps", "10", "--quiet", "--denoise-steps", "2", "--no-tracking", "--events",
                            "predicted", "--conditioner", aligned_conditioner, "--out", tmp_path / "predicted")
    assert code == 0, err
    results = json.loads((tmp_path / "predicted" / "results.json").read_text())
    plans = results["events"]["predicted"]["tasks"][TASK]["predicted"][0]
    assert len(seen) == len(plans) >= 1 and all(shape == (24, 32) for shape in seen)  # every aligned position


def test_unified_chunks_read_each_context_source_on_the_wan_towers(wan_mw_run):
    """The Wan towers with the global and Staircase sources built (make-tiny's VLM; heads as
    initialised): a chunk plans from each source, the global source's states are the alignment
    head's (each trained position, at most model.text_len), and switching sources between chunks
    leaves the next chunk's plan as it would be without the switch."""
    from dataclasses import replace

    from wallwm_pretrain.config import ConditionerConfig, ContextConfig, StaircaseConfig
    from wallwm_pretrain.eval.policy import ChunkContext
    from wallwm_pretrain.eval.wan_policy import load_policy
    from wallwm_pretrain.model.wan_wallwm import WanWallWM

    trained = load_policy(wan_mw_run, mode="unified", denoise_steps=2)
    models = Path(trained.index["latents"]["source"]).parent  # make-tiny's folders: vae/ beside vlm/
    assert (models / "vlm").is_dir()
    cfg = trained.cfg
    model_cfg = replace(cfg.model, context=ContextConfig(sources=["global", "staircase"]),
                        conditioner=ConditionerConfig(vlm=str(models / "vlm"), vlm_dtype="float32", hidden_size=32,
                                                      num_heads=2, align_tokens=12, text_dim=cfg.model.wan.text_dim),
                        staircase=StaircaseConfig(latents=3, relay_depth=1, num_heads=2, ffn_mult=2))
    torch.manual_seed(0)
    model = WanWallWM(model_cfg).eval()
    missing = model.load_state_dict(trained.model.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("context.") for k in missing)  # the towers are the run's
    policy = type(trained)(model, replace(cfg, model=model_cfg), trained.index, denoise_steps=2, mode="unified")
    assert policy.context_sources() == ["atomic", "global", "staircase"]
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (2, policy.image_size, policy.image_size, 3), dtype=np.uint8)
              for _ in range(policy.history + 1)]
    state = rng.normal(size=policy.state_dim).astype(np.float32)
    contexts = {"atomic": ChunkContext("atomic", caption="grasp the puck"),
                "global": ChunkContext("global", task="pick and place the puck", done=["reach the puck"]),
                "staircase": ChunkContext("staircase", task="pick and place the puck")}
    plans = {name: policy.plan_chunk(frames[:-1], frames[-1], state, c, policy.new_episode(1))
             for name, c in contexts.items()}
    for name, plan in plans.items():
        assert plan.actions.shape == (policy.horizon, policy.action_dim) and np.isfinite(plan.actions).all(), name
    texts = {name: policy.context_text(frames[-1], c)[0] for name, c in contexts.items()}
    assert texts["global"].shape == (1, 12, cfg.model.wan.text_dim)  # the head's positions, each trained
    assert texts["staircase"].shape == (1, 3, cfg.model.wan.text_dim)  # K_c latents, projected
    assert texts["atomic"].shape[:2] == (1, len(policy.frozen.text_states(["grasp the puck"])[0]))
    again = policy.plan_chunk(frames[:-1], frames[-1], state, contexts["atomic"], policy.new_episode(1))
    np.testing.assert_array_equal(again.actions, plans["atomic"].actions)  # no state kept across chunks
