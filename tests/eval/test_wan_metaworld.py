"""A Wan-tower checkpoint plans in Meta-World through ``python -m wallwm_pretrain.eval``: the
recorded pick-place episodes get VAE latents and UMT5 states (make-tiny's models), a tiny Wan
run trains two steps on them, and the closed loop runs it in process and through the policy
server with openpi's client protocol, the same episodes either way. Two training steps: success
is whatever a nearly untrained policy achieves; what is checked is that it plans and reports."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

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
