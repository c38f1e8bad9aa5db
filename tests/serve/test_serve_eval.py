"""Closed-loop evaluation through the policy server equals in-process evaluation: same seeds,
same checkpoint -> the same episodes (successes, steps, plans, and the rendered frame strips,
which show every executed action's effect).

The in-process run creates and tears down megatron-core's single-process state itself, so it
runs first, and the server (which needs that state for its model) is started after it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wallwm_pretrain.eval.__main__ import main as eval_main

TASK = "pick-place-v3"


def _run(tmp_path, name, *where):
    out = tmp_path / name
    code = eval_main([*map(str, where), "--tasks", TASK, "--episodes", "2", "--max-steps", "30", "--seed", "3",
                      "--out", str(out), "--no-tracking", "--quiet"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    with Image.open(out / "strips" / f"{TASK}_ep000.png") as im:
        pixels = np.asarray(im.convert("RGB"))
    return results, pixels


@pytest.mark.parametrize("mode", ["event", "chunk"])
def test_eval_through_server_equals_in_process(mode, event_run, chunk_run, mw_backend, tmp_path):
    from wallwm_pretrain.serve.engine import PolicyEngine
    from wallwm_pretrain.serve.server import PolicyServer

    run = event_run if mode == "event" else chunk_run
    local, local_strip = _run(tmp_path, "local", "--ckpt", run)
    server = PolicyServer(PolicyEngine.load(run), port=0, api_key="k")
    try:
        server.start_in_thread()
        remote, remote_strip = _run(tmp_path, "remote", "--server", server.url, "--api-key", "k")
    finally:
        server.stop()
    assert remote["mode"] == local["mode"] == mode and remote["horizon"] == local["horizon"]
    a, b = local["tasks"][TASK], remote["tasks"][TASK]
    for key in ("episode_seeds", "success_per_episode", "successes", "mean_steps", "mean_plans"):
        assert a[key] == b[key], key
    assert a["mean_plans"] > 1  # several plans per episode: the noise stream carried across requests
    np.testing.assert_array_equal(local_strip, remote_strip)
    assert server.url in remote["checkpoint"]


def test_eval_server_flags_fail_cleanly(tmp_path, capsys):
    base = ["--tasks", TASK, "--episodes", "1", "--quiet"]
    for args, needle in (
        (["--server", "ws://127.0.0.1:9", "--out", str(tmp_path / "x"), "--heldout", str(tmp_path)], "--heldout needs the model in-process"),
        (["--server", "ws://127.0.0.1:9"], "--out is required with --server"),
        # port 9 (discard) has no listener on loopback: a clean error, not a traceback
        (["--server", "ws://127.0.0.1:9", "--out", str(tmp_path / "y")], "cannot connect to ws://127.0.0.1:9"),
    ):
        capsys.readouterr()
        assert eval_main(args + base) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and "Traceback" not in err, err


def test_metaworld_goes_through_the_adapter_yaml(event_run, mw_backend, tmp_path):
    """configs/adapters/metaworld.yaml spells out the default mapping: the same episodes."""
    root = Path(__file__).resolve().parents[2]
    default, default_strip = _run(tmp_path, "default", "--ckpt", event_run)
    with_yaml, yaml_strip = _run(tmp_path, "yaml", "--ckpt", event_run, "--adapter", root / "configs/adapters/metaworld.yaml")
    assert default["tasks"][TASK] == with_yaml["tasks"][TASK]
    np.testing.assert_array_equal(default_strip, yaml_strip)
    # a mapping the model cannot take fails before any episode, naming the file and the views
    bad = tmp_path / "bad.yaml"
    bad.write_text("images: {corner: camera/corner}\nstate: [{key: state/full}]\n")
    assert eval_main(["--ckpt", str(event_run), "--tasks", TASK, "--episodes", "1", "--adapter", str(bad),
                      "--out", str(tmp_path / "bad"), "--no-tracking", "--quiet"]) == 2
