"""Tracking: a real sqlite MLflow store in tmp_path, read back with MlflowClient."""

import os

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

import pytest  # noqa: E402

from wallwm_pretrain.config import Config, flatten  # noqa: E402
from wallwm_pretrain.tracking import (  # noqa: E402
    MLflowTracker,
    NullTracker,
    build_tracker,
    flatten_params,
    plot_loss_curve,
)


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def make_cfg(tmp_path, **tracking):
    cfg = Config()
    cfg.train.runs_root = str(tmp_path / "runs")
    cfg.train.run_name = "unit"
    for k, v in tracking.items():
        setattr(cfg.tracking, k, v)
    return cfg


def client_for(tmp_path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}")


def test_params_metrics_resume_and_artifacts(tmp_path):
    cfg = make_cfg(tmp_path)
    tracker = build_tracker(cfg, rank=0, run_id=None)
    assert isinstance(tracker, MLflowTracker)
    assert (tmp_path / "runs" / "mlflow.db").is_file()
    params = flatten(cfg)
    many = {f"extra.p{i:03d}": i for i in range(230)}  # more than one 100-param batch
    tracker.log_params({**params, **many, "long": "x" * 7000})
    for step in (1, 2, 3):
        tracker.log_metrics({"loss": 1.0 / step, "lr": 0.01 * step}, step=step)
    tracker.finish()
    run_id = tracker.run_id

    client = client_for(tmp_path)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "unit"
    logged = run.data.params
    assert logged["train.run_name"] == "unit"
    assert logged["optim.adamw_betas"] == str(params["optim.adamw_betas"])
    assert logged["extra.p229"] == "229" and len(logged) == len(params) + 231
    assert len(logged["long"]) == 6000 and logged["long"].endswith("...")
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 1.0 / 3)]

    # Resume: same run, status RUNNING again, metrics appended, a changed param becomes a tag.
    cfg.train.steps = 999
    resumed = build_tracker(cfg, rank=0, run_id=run_id)
    assert resumed.run_id == run_id
    assert client.get_run(run_id).info.status == "RUNNING"
    resumed.log_params(flatten(cfg))
    resumed.log_metrics({"loss": 0.2}, step=4)

    png = plot_loss_curve({"loss": [(1, 1.0), (2, 0.5), (3, 0.1), (4, 0.05)]}, tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    resumed.log_artifact(png, "plots")
    resumed.log_text(cfg.train.run_name, "config/name.txt")
    resumed.finish("FINISHED")

    run = client.get_run(run_id)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")][-1] == (4, 0.2)
    assert len(client.get_metric_history(run_id, "loss")) == 4
    assert run.data.params["train.steps"] == "200"  # params are immutable in MLflow
    assert run.data.tags["param_changed.train.steps"] == "999"
    assert run.data.tags["wallwm.run_dir"] == str((tmp_path / "runs" / "unit").resolve())
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/loss.png"]
    # Artifacts of the default store live under <runs_root>/mlartifacts.
    stored = list((tmp_path / "runs" / "mlartifacts").rglob("loss.png"))
    assert len(stored) == 1 and stored[0].read_bytes() == png.read_bytes()
    assert (stored[0].parents[1] / "config" / "name.txt").read_text() == "unit"
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_two_trackers_in_one_process_do_not_interfere(tmp_path):
    cfg = make_cfg(tmp_path)
    a = build_tracker(cfg, rank=0, run_id=None)
    b = build_tracker(cfg, rank=0, run_id=None)
    a.log_metrics({"loss": 1.0}, step=1)
    b.log_metrics({"loss": 2.0}, step=1)
    a.finish()
    b.finish("FAILED")
    client = client_for(tmp_path)
    assert a.run_id != b.run_id
    assert [m.value for m in client.get_metric_history(a.run_id, "loss")] == [1.0]
    assert [m.value for m in client.get_metric_history(b.run_id, "loss")] == [2.0]
    assert client.get_run(b.run_id).info.status == "FAILED"


def test_context_manager_marks_failure(tmp_path):
    cfg = make_cfg(tmp_path)
    with pytest.raises(RuntimeError):
        with build_tracker(cfg, rank=0, run_id=None) as tracker:
            raise RuntimeError("boom")
    assert client_for(tmp_path).get_run(tracker.run_id).info.status == "FAILED"


def test_resume_unknown_run_id_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="deadbeef"):
        build_tracker(make_cfg(tmp_path), rank=0, run_id="deadbeef")


@pytest.mark.parametrize("rank, enabled", [(1, True), (0, False)])
def test_null_tracker_does_nothing(tmp_path, rank, enabled):
    cfg = make_cfg(tmp_path, enabled=enabled)
    tracker = build_tracker(cfg, rank=rank, run_id=None)
    assert isinstance(tracker, NullTracker) and tracker.run_id is None
    tracker.log_params(flatten(cfg))
    tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.log_text("x", "x.txt")
    tracker.log_artifact(tmp_path / "does-not-exist.png")
    tracker.finish()
    assert list(tmp_path.iterdir()) == []


def test_flatten_params_nested_and_key_limit():
    assert flatten_params({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {
        "a.b": "1", "a.c": "[1, 2]", "d": "None"
    }
    with pytest.raises(ValueError, match="longer than 250"):
        flatten_params({"k" * 251: 1})


def curve_pixels(path):
    """(height, width) of a PNG and how many pixels carry the first series' colour (matplotlib's
    default C0, #1f77b4)."""
    import numpy as np
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    img = imread(path)
    c0 = np.array([0x1F, 0x77, 0xB4]) / 255
    return img.shape[:2], int((np.abs(img[..., :3] - c0).max(-1) < 0.03).sum())


def test_plot_loss_curve_handles_empty_and_nan(tmp_path):
    path = plot_loss_curve({"loss": [(1, float("nan"))], "aux": []}, tmp_path / "sub" / "p.png")
    size, drawn = curve_pixels(path)
    assert size == (400, 700)  # figsize (7, 4) at 100 dpi
    assert drawn == 0  # a NaN point and an empty series draw no line


def test_plot_loss_curve_draws_the_curve(tmp_path):
    path = plot_loss_curve({"loss": [(i, 5.0 / (i + 1)) for i in range(20)]}, tmp_path / "c.png")
    size, drawn = curve_pixels(path)
    assert size == (400, 700) and drawn > 100  # a line across the axes, in the series colour


_OPEN_AND_LOG = """
import sys
from wallwm_pretrain.tracking import MLflowTracker, default_store
uri, art = default_store(sys.argv[1])
with MLflowTracker(uri, "array", f"job-{sys.argv[2]}", artifact_location=art) as t:
    t.log_metrics({"x": float(sys.argv[2])}, 0)
"""


def test_processes_creating_one_new_store_at_once_all_log(tmp_path):
    """Four processes start on a runs root with no store yet (a Slurm array sharing a runs root):
    the first creates and migrates the sqlite store under a lock, the others wait and then log."""
    import subprocess
    import sys

    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AND_LOG, str(tmp_path / "runs"), str(i)], env=env,
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(e[-1500:] for e in errors)
    runs = client_for(tmp_path).search_runs([client_for(tmp_path).get_experiment_by_name("array").experiment_id])
    assert sorted(r.data.metrics["x"] for r in runs) == [0.0, 1.0, 2.0, 3.0]


def test_a_new_store_waits_for_the_lock_beside_it(tmp_path):
    """While another process holds the lock beside ``mlflow.db``, opening the store does not
    create it; once the lock is released it does."""
    import fcntl
    import subprocess
    import sys
    import time

    root = tmp_path / "runs"
    root.mkdir()
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    with open(root / "mlflow.db.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.Popen([sys.executable, "-c", _OPEN_AND_LOG, str(root), "7"], env=env,
                                stderr=subprocess.PIPE, text=True)
        for _ in range(16):  # the child imports mlflow, then blocks on the lock; it must not finish
            time.sleep(0.25)
            assert proc.poll() is None, proc.communicate()[1][-1500:]
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert proc.wait(timeout=300) == 0, proc.communicate()[1][-1500:]
    assert (root / "mlflow.db").is_file()
