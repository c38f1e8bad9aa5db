"""A Wan-tower checkpoint as a policy (eval/wan_policy.py): a tiny Wan run trained for two steps
on real shards with VAE latents and UMT5 states (make-tiny's models, as ``make smoke-wan``) plans
actions in robot units, batched as alone, with the frozen models loaded once and repeated
captions encoded once; it decodes its predicted video on request; and the policy server serves
it over openpi's protocol with metadata naming the model and its context sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch

ACTION = ["model.hidden_size=32", "model.num_heads=2", "model.ffn_hidden_size=64", "model.action_dim=4",
          "model.state_dim=8"]
CAPTION = "reach towards the handle of the drawer"


@pytest.fixture(scope="module")
def wan_run(tmp_path_factory):
    from data_tools.latents import encode_latents
    from data_tools.shards import build_shards
    from data_tools.synthworld import synthesize
    from data_tools.textstates import embed_captions
    from wallwm_pretrain.config import load_config
    from wallwm_pretrain.convert.__main__ import main as convert
    from wallwm_pretrain.convert.tiny import make_tiny
    from wallwm_pretrain.parallel import shutdown_parallel
    from wallwm_pretrain.trainer import Trainer

    base = tmp_path_factory.mktemp("wan_policy")
    models = make_tiny(base / "models", seed=0)
    synthesize(base / "synth", 4, 7, progress=False)
    shards = base / "shards"
    build_shards(base / "synth", shards, level="L1", seed=0, image_size=32, samples_per_shard=8, progress=False)
    encode_latents(shards, models["vae"], progress=False)
    embed_captions(shards, models["text_encoder"], progress=False)
    init = base / "init"
    assert convert(["wan", "--src", str(models["transformer"]), "--out", str(init), "--num-views", "2",
                    "model.video_input=latents", f"data.shards={shards}", *ACTION]) == 0
    cfg = load_config(init / "config.yaml", [f"model.init_from={init}", f"train.runs_root={base / 'runs'}",
                                             "train.run_name=wan", "train.device=cpu", "data.batch_size=2",
                                             "data.max_frames=8", "train.steps=2", "optim.warmup_steps=1"])
    try:
        assert Trainer(cfg).train().end_step == 2
    finally:
        shutdown_parallel()
    return base / "runs" / "wan"


@pytest.fixture(scope="module")
def policy(wan_run):
    from wallwm_pretrain.eval.wan_policy import load_policy

    return load_policy(wan_run, denoise_steps=3)


def _obs(policy, seed):
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (policy.num_views, policy.image_size, policy.image_size, 3), dtype=np.uint8)
    return frame, rng.normal(size=policy.state_dim).astype(np.float32)


def test_a_wan_checkpoint_plans_actions_in_robot_units(policy):
    from wallwm_pretrain.eval.wan_policy import WanPolicy

    assert isinstance(policy, WanPolicy) and policy.mode == "event" and policy.horizon == 8
    frame, state = _obs(policy, 0)
    one = policy.plan(frame, state, CAPTION, policy.new_episode(3))
    assert one.actions.shape == (8, policy.action_dim) and one.actions.dtype == np.float32
    assert np.isfinite(one.actions).all() and np.isfinite(one.remaining)
    # robot units: the normalised sample mapped through the shards' statistics
    assert not np.allclose(policy.norm.actions(one.actions), one.actions)
    again = policy.plan(frame, state, CAPTION, policy.new_episode(3))
    np.testing.assert_array_equal(again.actions, one.actions)  # the same noise stream, the same plan
    other = policy.plan(frame, state, "close the drawer by pushing it in", policy.new_episode(3))
    assert np.abs(other.actions - one.actions).max() > 1e-4  # the caption conditions the plan
    # batched as alone: each observation draws its noise from its own generator
    frame2, state2 = _obs(policy, 1)
    both = policy.plan_batch([frame, frame2], [state, state2], [CAPTION, "open the drawer"],
                             [policy.new_episode(3), policy.new_episode(4)])
    alone = policy.plan(frame2, state2, "open the drawer", policy.new_episode(4))
    np.testing.assert_allclose(both[0].actions, one.actions, atol=1e-5)
    np.testing.assert_allclose(both[1].actions, alone.actions, atol=1e-5)


def test_frozen_models_load_once_and_captions_are_encoded_once(policy):
    from wallwm_pretrain.eval.wan_policy import frozen_of

    assert frozen_of(policy.index) is policy.frozen  # one VAE and UMT5 per process
    frame, state = _obs(policy, 2)
    policy.plan(frame, state, "push the puck to the target", policy.new_episode(0))
    cached = policy.frozen.text_states(["push the puck to the target"])[0]
    calls = []
    hook = policy.frozen.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        policy.plan(frame, state, "push the puck to the target", policy.new_episode(1))
        assert calls == [] and policy.frozen.text_states(["push the puck to the target"])[0] is cached
        policy.plan(frame, state, "a caption never seen", policy.new_episode(1))
        assert calls == [1]
    finally:
        hook.remove()


def test_the_text_context_is_wans_and_aligned_states_plan(policy):
    """What the tower reads is the caption's UMT5 states zero-padded to model.text_len; a plan
    from text states (a predicted event's aligned states) equals the caption's plan when the
    states are the caption's own."""
    frame, state = _obs(policy, 5)
    states = policy.frozen.text_states([CAPTION])[0]
    by_caption = policy.plan(frame, state, CAPTION, policy.new_episode(9))
    by_states = policy.plan_states(frame, state, states, policy.new_episode(9))
    np.testing.assert_allclose(by_states.actions, by_caption.actions, atol=1e-5)
    from wallwm_pretrain.eval.policy import PolicyError

    with pytest.raises(PolicyError, match="the Wan tower reads"):
        policy.plan_states(frame, state, torch.zeros(4, 7), policy.new_episode(9))


def test_the_predicted_video_is_decoded_on_request(policy):
    frame, state = _obs(policy, 3)
    plan, video = policy.predict_video(frame, state, CAPTION, policy.new_episode(5))
    # 8 control steps = 2 latent frames (the anchor and one predicted) -> 1 + 4 frames per view
    assert video.shape == (policy.num_views, 5, policy.image_size, policy.image_size, 3) and video.dtype == np.uint8
    np.testing.assert_allclose(plan.actions, policy.plan(frame, state, CAPTION, policy.new_episode(5)).actions, atol=1e-5)


def test_the_server_serves_a_wan_checkpoint(policy, wan_run):
    from wallwm_pretrain.client import PolicyClient
    from wallwm_pretrain.serve.engine import PolicyEngine
    from wallwm_pretrain.serve.server import PolicyServer

    engine = PolicyEngine(policy, str(wan_run))
    server = PolicyServer(engine, host="127.0.0.1", port=0)
    server.start_in_thread()
    try:
        with PolicyClient(server.url) as client:
            meta = client.metadata
            assert meta["model"]["video_tower"] == "wan" and meta["model"]["kind"] == "towers"
            assert meta["model"]["context_sources"] == ["atomic"] and meta["mode"] == "event"
            frame, state = _obs(policy, 7)
            obs = {"images": {v: frame[i] for i, v in enumerate(meta["views"])}, "state": state, "prompt": CAPTION,
                   "seed": 11}
            reply = client.infer(obs)
        want = policy.plan(frame, state, CAPTION, policy.new_episode(11))
        np.testing.assert_allclose(reply["actions"], want.actions, atol=1e-5)
        assert reply["remaining_steps"] == pytest.approx(want.remaining, abs=1e-4)
    finally:
        server.stop()
