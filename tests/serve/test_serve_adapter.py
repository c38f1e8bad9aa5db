"""The environment adapter: a gymnasium-style env (Meta-World's own gymnasium env, rendered by
gymnasium) evaluated closed-loop through the policy server, and the adapter's errors."""

from __future__ import annotations

import numpy as np
import pytest

from wallwm_pretrain.client import PolicyClient
from wallwm_pretrain.eval.adapter import AdapterError, EnvAdapter
from wallwm_pretrain.eval.gym_loop import run_episode

GYM_ADAPTER = {
    # gymnasium renders one camera; both model views read it here (the loop does not care)
    "images": {"corner": "render", "gripperPOV": "render"},
    "state": [{"key": "obs"}],  # Meta-World's 39-D observation, the model's `--state full` layout
    "action": {"low": -1.0, "high": 1.0},
}


class RecordingClient:
    def __init__(self, client):
        self.client, self.metadata, self.requests = client, client.metadata, []

    def infer(self, obs):
        self.requests.append(obs)
        return self.client.infer(obs)


def test_gymnasium_env_through_the_server(start_server, mw_backend):
    from sim.metaworld.gl import import_metaworld

    import_metaworld()
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

    env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE["pick-place-v3-goal-observable"](seed=0, render_mode="rgb_array")
    adapter = EnvAdapter.from_dict(GYM_ADAPTER)
    server = start_server()
    try:
        with PolicyClient(server.url) as client:
            adapter.check(client.metadata["views"], client.metadata["state_dim"], {"obs": np.zeros(39), "render": None})
            rec = RecordingClient(client)
            ep = run_episode(env, adapter, rec, ["reach for the puck", "grasp the puck"], seed=4, max_steps=12)
    finally:
        env.close()
    assert ep.steps == 12 or ep.success or ep.ended
    assert ep.requests == len(rec.requests) >= 1
    first = rec.requests[0]
    assert first["seed"] == 4 and "seed" not in rec.requests[-1] or len(rec.requests) == 1
    img = first["images"]["corner"]  # gymnasium's 480 x 480 render; the server resizes it to 32 x 32
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[0] > 32 and img.std() > 0
    assert first["state"].shape == (39,) and first["state"].dtype == np.float32
    assert first["prompt"] == "reach for the puck"


def test_adapter_errors_name_the_key(tmp_path):
    with pytest.raises(AdapterError, match=r"unknown key\(s\) \['imgs'\]"):
        EnvAdapter.from_dict({**GYM_ADAPTER, "imgs": {}})
    with pytest.raises(AdapterError, match=r"state\[0\]"):
        EnvAdapter.from_dict({**GYM_ADAPTER, "state": [{"name": "obs"}]})
    adapter = EnvAdapter.from_dict({**GYM_ADAPTER, "state": [{"key": "robot/qpos", "index": [0, 9]}]})
    with pytest.raises(AdapterError, match="no key 'robot/qpos' \\(at 'robot': has \\['obs', 'render'\\]\\)"):
        adapter.state_of({"obs": np.zeros(3), "render": None})
    with pytest.raises(AdapterError, match="robot/qpos' has 4 values; index \\[9\\]"):
        adapter.state_of({"robot": {"qpos": np.zeros(4)}})
    with pytest.raises(AdapterError, match="observation 'render' \\(view corner\\): float64"):
        adapter.images_of({"render": np.zeros((8, 8, 3))})
    with pytest.raises(AdapterError, match="the model takes \\['corner', 'gripperPOV'\\]"):
        EnvAdapter.from_dict({**GYM_ADAPTER, "images": {"corner": "render"}}).check(["corner", "gripperPOV"], 39)
    with pytest.raises(AdapterError, match="not found"):
        EnvAdapter.from_yaml(tmp_path / "missing.yaml")
    scaled = EnvAdapter.from_dict({**GYM_ADAPTER, "action": {"scale": 2.0, "offset": 0.5, "low": -1, "high": 1}})
    np.testing.assert_allclose(scaled.action(np.array([0.1, -0.5, 2.0])), [0.7, -0.5, 1.0])
