"""The evaluation end to end: record Meta-World demonstrations, build shards, train a tiny
checkpoint, evaluate it closed-loop and open-loop with ``python -m wallwm_pretrain.eval``.

The checkpoints are trained for 4 steps, so success is whatever the random-ish policy achieves
(0 or 1 of 1 episode); what is checked is that every piece of the report is there, consistent,
reproducible and logged. The recording fixture fails (never skips) where headless rendering is
missing, naming the packages to install.
"""

import io
import json
import math
import tarfile

import mlflow
import numpy as np
import pytest
import torch

from sim.metaworld.tasks import get_spec
from wallwm_pretrain.eval.metaworld import MetaWorldRunner, eval_env_seed, event_script
from wallwm_pretrain.eval.policy import CheckpointPolicy, PolicyError
from wallwm_pretrain.eval.report import rate_cell, wilson_interval

TASK = "pick-place-v3"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OPEN_LOOP_KEYS = {"samples", "action_mse_normalised", "action_mae", "remaining_steps_mae"}


def eval_args(ckpt, *extra, max_steps=30):
    return ["--ckpt", ckpt, "--env", "metaworld", "--tasks", TASK, "--episodes", "1", "--max-steps", max_steps,
            "--quiet", *extra]


def check_png(path):
    from PIL import Image

    assert path.is_file(), f"no frame strip at {path}"
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > im.height > 0


def strip_pixels(out):
    from PIL import Image

    with Image.open(out / "strips" / f"{TASK}_ep000.png") as im:
        return im.convert("RGB").tobytes()


def check_results(results, mode, shards):
    assert results["mode"] == mode and results["episodes_per_task"] == 1 and results["max_steps"] == 30
    task = results["tasks"][TASK]
    assert task["episodes"] == 1 and task["successes"] in (0, 1)
    assert task["success_rate"] in (0.0, 1.0) and task["success_rate"] == task["successes"]
    assert task["success_per_episode"] == [bool(task["successes"])]
    assert task["ci95"] == pytest.approx(list(wilson_interval(task["successes"], 1)))
    lo, hi = task["ci95"]
    assert 0.0 <= lo <= task["success_rate"] <= hi <= 1.0 and hi - lo > 0.5  # one episode says little
    assert task["episode_seeds"] == [eval_env_seed(0, TASK, 0)]
    assert 1 <= task["mean_steps"] <= 30 and task["mean_plans"] >= 1
    assert results["overall"]["episodes"] == 1 and results["overall"]["ci95"] == task["ci95"]
    ol = results["open_loop"]
    assert set(ol) == OPEN_LOOP_KEYS
    assert all(math.isfinite(v) and v >= 0 for v in ol.values())
    assert ol["samples"] >= json.loads((shards / "index.json").read_text())["total_samples"]
    assert ol["action_mse_normalised"] > 0 and ol["action_mae"] > 0


def test_event_checkpoint_end_to_end_and_reproducible(event_run, mw_shards, mw_backend, tmp_path, eval_cli):
    runs_root = tmp_path / "eval_runs"
    code, out, err = eval_cli(*eval_args(event_run, "--heldout", mw_shards["L1"], "--out", tmp_path / "a",
                                         "--runs-root", runs_root))
    assert code == 0, err
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    check_results(results, "event", mw_shards["L1"])
    assert results["gl_backend"] == mw_backend and results["horizon"] == 48  # data.max_frames
    task = results["tasks"][TASK]
    # L1 shards: one held-out sample per recorded event
    assert results["open_loop"]["samples"] == json.loads((mw_shards["L1"] / "index.json").read_text())["total_samples"]
    cell = rate_cell(task["successes"], 1)
    assert cell in (tmp_path / "a" / "results.md").read_text() and cell in out
    assert "open-loop on" in out and str(tmp_path / "a") in out
    check_png(tmp_path / "a" / "strips" / f"{TASK}_ep000.png")

    # MLflow: one run in the '<experiment>-eval' experiment of the given runs root
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{runs_root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("wallwm-pretrain-eval")
    assert experiment is not None, "no 'wallwm-pretrain-eval' experiment in the eval store"
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["success_rate"] == task["success_rate"] and metrics[f"success_rate/{TASK}"] == task["success_rate"]
    for key, value in results["open_loop"].items():
        assert metrics[f"open_loop/{key}"] == pytest.approx(value)
    assert run.data.params["mode"] == "event" and run.data.params["tasks"] == TASK
    assert run.data.params["episodes"] == "1" and run.data.params["checkpoint"] == str(event_run)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "results.md", "strips"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "strips")] == [f"strips/{TASK}_ep000.png"]

    # the same checkpoint, seed and arguments give the same episodes and the same open-loop numbers
    code, _, err = eval_cli(*eval_args(event_run, "--heldout", mw_shards["L1"], "--out", tmp_path / "b",
                                       "--runs-root", runs_root, "--no-tracking"))
    assert code == 0, err
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    for key in ("success_per_episode", "episode_seeds", "mean_steps", "mean_plans", "ci95"):
        assert again["tasks"][TASK][key] == task[key], key
    assert again["open_loop"] == results["open_loop"]
    same_rollout = strip_pixels(tmp_path / "b") == strip_pixels(tmp_path / "a")
    assert same_rollout, "the two rollouts' frame strips differ"
    assert len(client.search_runs([experiment.experiment_id])) == 1  # --no-tracking logged nothing


def test_chunk_checkpoint_end_to_end(chunk_run, mw_shards, eval_cli):
    # no --out: results go to <run folder>/eval
    code, out, err = eval_cli(*eval_args(chunk_run, "--heldout", mw_shards["L3"], "--no-tracking"))
    assert code == 0, err
    results = json.loads((chunk_run / "eval" / "results.json").read_text())
    check_results(results, "chunk", mw_shards["L3"])
    assert results["horizon"] == 16  # model.chunk_horizon, whole latent frames
    task = results["tasks"][TASK]
    # chunk mode executes every planned step: plans = steps / horizon, rounded up
    assert task["mean_plans"] == math.ceil(task["mean_steps"] / 16)
    check_png(chunk_run / "eval" / "strips" / f"{TASK}_ep000.png")
    # --no-tracking: the training run's store (same runs root) got no eval experiment
    store = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{chunk_run.parent / 'mlflow.db'}")
    assert store.get_experiment_by_name("wallwm-pretrain") is not None
    assert store.get_experiment_by_name("wallwm-pretrain-eval") is None


def test_exported_checkpoint_reports_next_to_the_file(event_run, tmp_path, eval_cli):
    """An export carries its config: the statistics come from its data.shards, the results go to
    <file>.eval/ by default, and it plans exactly as the checkpoint it came from."""
    from wallwm_pretrain.export import export

    path = export(event_run, tmp_path / "mw_event.safetensors")
    code, _, err = eval_cli(*eval_args(path, "--no-tracking", max_steps=8))
    assert code == 0, err
    from_file = json.loads((tmp_path / "mw_event.safetensors.eval" / "results.json").read_text())
    code, _, err = eval_cli(*eval_args(event_run, "--no-tracking", "--out", tmp_path / "run", max_steps=8))
    assert code == 0, err
    from_run = json.loads((tmp_path / "run" / "results.json").read_text())
    assert from_file["checkpoint"] == str(path) and from_file["tasks"] == from_run["tasks"]
    check_png(tmp_path / "mw_event.safetensors.eval" / "strips" / f"{TASK}_ep000.png")


def test_event_policy_walks_the_event_script(event_run, single_process):
    policy = CheckpointPolicy.load(event_run)  # statistics from the run config's data.shards
    assert policy.mode == "event" and policy.views == ["corner", "gripperPOV"] and policy.horizon == 48
    runner = MetaWorldRunner(policy, TASK, max_steps=30)
    try:
        ep = runner.run(0, seed=0)
        assert ep.env_seed == eval_env_seed(0, TASK, 0)
        assert ep.steps == 30 or ep.success and ep.steps < 30
        captions = [caption for _, caption in event_script(get_spec(TASK))]
        order = [captions.index(c) for c in ep.events]  # ValueError if a plan used another caption
        assert order[0] == 0 and ep.plans == len(ep.events)
        assert all(0 <= b - a <= 1 for a, b in zip(order, order[1:])), order  # in order, none skipped
        # the strip: the first view every 10 steps at the render size, then the final frame
        steps = [s for s, _, _ in ep.strip]
        assert steps[:-1] == list(range(0, ep.steps, 10)) and steps[-1] == ep.steps
        assert ep.strip[-1][1] == ("success" if ep.success else "end")
        assert all(frame.shape == (64, 64, 3) and frame.dtype == np.uint8 for _, _, frame in ep.strip)
        assert {label for _, label, _ in ep.strip[:-1]} <= {prim for prim, _ in event_script(get_spec(TASK))}

        # a plan: the horizon in robot units, and a finite remaining-time prediction
        runner.env.reset(ep.env_seed)
        _, frame = runner.observe()
        plan = policy.plan(frame, runner.to_state(runner.env.reset(ep.env_seed)), captions[0],
                           torch.Generator().manual_seed(0))
        assert plan.actions.shape == (48, 4) and plan.actions.dtype == np.float32
        assert np.isfinite(plan.actions).all() and math.isfinite(plan.remaining)
        with pytest.raises(PolicyError, match="observation frame has shape"):
            policy.plan(frame[:1], runner.to_state(runner.env.reset(ep.env_seed)), captions[0],
                        torch.Generator())
    finally:
        runner.close()


def _first_events(shards):
    """key -> (frames, state) of every episode's first L1 event in the shards."""
    out = {}
    for tar_path in sorted(shards.glob("shard-*.tar")):
        with tarfile.open(tar_path) as tf:
            members = {m.name: m for m in tf.getmembers()}
            for name in members:
                if name.endswith("_L1_000.json"):
                    key = name[: -len(".json")]
                    load = lambda ext: np.load(io.BytesIO(tf.extractfile(members[f"{key}.{ext}"]).read()))  # noqa: E731
                    out[key] = (load("frames.npy"), load("state.npy"))
    return out


def test_live_observation_matches_the_recording(event_run, mw_recording, mw_shards, single_process):
    """Rendered and resized live, the first observation of a recorded layout is what the model
    was trained on: the same state exactly, the same frame up to the video codec's artefacts."""
    policy = CheckpointPolicy.load(event_run, mw_shards["L1"])
    runner = MetaWorldRunner(policy, TASK, max_steps=30)
    episodes = json.loads((mw_recording / "metaworld.json").read_text())["episodes"]
    recorded = _first_events(mw_shards["L1"])
    try:
        for ep in episodes:
            frames, state = recorded[f"ep{ep['episode_index']:06d}_L1_000"]
            obs = runner.env.reset(ep["env_seed"])
            _, live = runner.observe()
            np.testing.assert_array_equal(runner.to_state(obs), state)
            assert live.shape == frames[0].shape == (2, 32, 32, 3)
            per_view = np.abs(live.astype(int) - frames[0]).mean(axis=(1, 2, 3))
            assert per_view.max() < 6.0, per_view  # codec noise only (~3 grey levels)
            # while a swapped view order or an upside-down corner view would be far off
            assert np.abs(live[::-1].astype(int) - frames[0]).mean() > 15.0
            assert np.abs(np.rot90(live[0], 2).astype(int) - frames[0][0]).mean() > 15.0
    finally:
        runner.close()
