"""``eval worldmodel``: an event-mode checkpoint's predicted video on held-out events, beside a
chunk-mode checkpoint and the copy-the-first-frame baseline, scored with torchmetrics; the values
are checked against direct torchmetrics calls on the frames the command saved."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
TINY = ["model.hidden_size=32", "model.num_heads=2", "model.ffn_hidden_size=64", "model.num_layers=1",
        "model.image_size=16", "model.patch_size=8", "data.batch_size=2", "data.max_frames=16",
        "data.chunk_horizon=8", "train.steps=2", "train.save_every=2", "optim.warmup_steps=1", "train.device=cpu"]
HELDOUT_EVENTS = 8


def _train(shards, runs, name, *extra):
    from wallwm_pretrain.config import load_config
    from wallwm_pretrain.parallel import shutdown_parallel
    from wallwm_pretrain.trainer import Trainer

    cfg = load_config(SMOKE, [*TINY, f"data.shards={shards}", f"train.runs_root={runs}", f"train.run_name={name}", *extra])
    try:
        Trainer(cfg).train()
    finally:
        shutdown_parallel()
    return runs / name


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Training and held-out event shards of the synthetic tabletop world at 16 px."""
    from data_tools.shards import build_shards
    from data_tools.synthworld import synthesize

    root = tmp_path_factory.mktemp("worldmodel")
    for name, episodes, seed in (("train", 4, 7), ("heldout", 2, 8)):
        synthesize(root / f"{name}_src", episodes, seed, progress=False)
        build_shards(root / f"{name}_src", root / name, level="L1", seed=0, image_size=16, progress=False)
    return root, root / "train", root / "heldout"


@pytest.fixture(scope="module")
def scored(world):
    from wallwm_pretrain.eval.__main__ import main

    root, train, heldout = world
    runs = root / "runs"
    event = _train(train, runs, "event")
    chunk = _train(train, runs, "chunk", "data.mode=chunk")
    out = root / "out"
    code = main(["worldmodel", "--policy", str(event), "--shards", str(heldout), "--chunk", str(chunk),
                 "--denoise-steps", "3", "--save-frames", "--events", str(HELDOUT_EVENTS), "--out", str(out),
                 "--runs-root", str(runs), "--length-edges", "4", "8", "--grid-every", "2"])
    assert code == 0
    return out, heldout, json.loads((out / "results.json").read_text())


def _direct(predicted: np.ndarray, recorded: np.ndarray) -> tuple[float, float]:
    """torchmetrics on the future frames as [N, 3, H, W] images in [0, 1]."""
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    def images(x):
        return torch.tensor(x[1:].reshape(-1, *x.shape[-3:]), dtype=torch.float32).permute(0, 3, 1, 2) / 255

    psnr = PeakSignalNoiseRatio(data_range=1.0)(images(predicted), images(recorded))
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0)(images(predicted), images(recorded))
    return float(psnr), float(ssim)


def test_scores_match_torchmetrics_on_the_saved_frames(scored):
    import webdataset as wds

    out, heldout, results = scored
    assert results["methods"] == ["model", "chunk_mode", "copy_first_frame"]
    recorded_in_shards = {}
    for tar in sorted(heldout.glob("*.tar")):
        for s in wds.WebDataset(str(tar), shardshuffle=False).decode():
            recorded_in_shards[s["__key__"]] = s["frames.npy"]
    scored_keys = [r["key"] for r in results["events"]]
    first = list(recorded_in_shards)[:HELDOUT_EVENTS]  # --events N: the first N in file order
    # an event of <= K_p = 4 steps is one latent frame: nothing to predict, named as skipped
    assert [s["key"] for s in results["skipped_events"]] == [k for k in first if len(recorded_in_shards[k]) <= 4]
    assert scored_keys == [k for k in first if len(recorded_in_shards[k]) > 4] and scored_keys
    for row in results["events"]:
        frames = np.load(out / "frames" / f"{row['key']}.npz")
        recorded = frames["recorded"]
        # the event's first data.max_frames = 16 steps, one frame per latent frame (K_p = 4)
        assert np.array_equal(recorded, recorded_in_shards[row["key"]][:16:4])
        assert np.array_equal(frames["copy_first_frame"], np.repeat(recorded[:1], len(recorded), axis=0))
        for method in results["methods"]:
            assert frames[method].shape == recorded.shape and frames[method].dtype == np.uint8
            assert np.array_equal(frames[method][0], recorded[0])  # every prediction starts from the first frame
            psnr, ssim = _direct(frames[method], recorded)
            assert row["scores"][method]["psnr"] == pytest.approx(psnr, abs=1e-4), (row["key"], method)
            assert row["scores"][method]["ssim"] == pytest.approx(ssim, abs=1e-5), (row["key"], method)
        assert not np.array_equal(frames["model"], frames["copy_first_frame"])  # the model did predict motion


def test_per_task_and_per_length_are_means_of_the_events_and_the_table_has_the_baselines(scored):
    out, _, results = scored
    rows = results["events"]
    for task, agg in results["tasks"].items():
        mine = [r for r in rows if r["task"] == task]
        assert agg["events"] == len(mine)
        for m in results["methods"]:
            assert agg[m]["psnr"] == pytest.approx(np.mean([r["scores"][m]["psnr"] for r in mine]))
    assert sorted(results["tasks"]) == sorted({r["task"] for r in rows})
    assert {r["length_bin"] for r in rows} == set(results["lengths"]) <= {"5-8", ">8"}
    assert all((r["steps"] <= 8) == (r["length_bin"] == "5-8") for r in rows)
    assert sum(a["events"] for a in results["lengths"].values()) == len(rows)
    table = (out / "results.md").read_text()
    for column in ("PSNR model", "PSNR chunk_mode", "PSNR copy_first_frame", "SSIM model"):
        assert column in table
    assert "lpips: skipped" in table and "fvd: skipped" in table


def test_a_grid_per_task_and_the_mlflow_run(scored, tmp_path):
    from mlflow.tracking import MlflowClient
    from PIL import Image

    out, _, results = scored
    assert sorted(results["grids"]) == sorted({r["task"] for r in results["events"]})
    for png in results["grids"].values():
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > im.size[1] > 100
    runs = Path(results["policy"]).parent
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    run = client.get_run(results["mlflow_run"])
    assert run.data.metrics["worldmodel/psnr/model"] == pytest.approx(results["overall"]["model"]["psnr"])
    task = sorted(results["tasks"])[0]
    assert run.data.metrics[f"worldmodel/ssim/copy_first_frame/task {task}"] == pytest.approx(
        results["tasks"][task]["copy_first_frame"]["ssim"])
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "grids")]
    assert len(artifacts) == len(results["grids"])


def test_bad_inputs_fail_with_one_line(scored, tmp_path, capsys):
    from wallwm_pretrain.eval.__main__ import main

    out, heldout, results = scored
    policy = results["policy"]
    capsys.readouterr()
    assert main(["worldmodel", "--policy", policy, "--shards", str(tmp_path / "none"), "--no-mlflow",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "index.json" in err
    assert main(["worldmodel", "--policy", policy, "--shards", str(heldout), "--chunk", policy, "--no-mlflow",
                 "--out", str(tmp_path / "o")]) == 2
    assert "not a chunk-mode one" in capsys.readouterr().err


def test_training_logs_the_same_scores_and_grids_every_video_eval_every_steps(world, tmp_path):
    """train.video_eval_every=2 over 4 steps: MLflow has video_eval/* at steps 2 and 4 and the grids;
    at step 4 they are the scores eval worldmodel gives the step-4 checkpoint (same events, seeds)."""
    from mlflow.tracking import MlflowClient

    from wallwm_pretrain.eval.__main__ import main

    _, train, heldout = world
    runs = tmp_path / "runs"
    run = _train(train, runs, "video_eval", "train.steps=4", "train.save_every=0", "train.video_eval_every=2",
                 f"train.video_eval_shards={heldout}", "train.video_eval_events=3", "train.video_eval_denoise_steps=3")
    for step in (2, 4):
        assert sorted(p.name for p in (run / "video_eval" / f"step_{step:08d}").glob("*.png"))
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    [mlflow_run] = client.search_runs([client.get_experiment_by_name("wallwm-pretrain").experiment_id])
    history = {k: [(m.step, m.value) for m in client.get_metric_history(mlflow_run.info.run_id, k)]
               for k in ("video_eval/psnr", "video_eval/ssim", "video_eval/psnr_copy_first_frame")}
    assert [s for s, _ in history["video_eval/psnr"]] == [2, 4]
    assert client.list_artifacts(mlflow_run.info.run_id, "video_eval/step_00000004")
    assert main(["worldmodel", "--policy", str(run), "--shards", str(heldout), "--events", "3", "--denoise-steps", "3",
                 "--out", str(tmp_path / "wm"), "--no-mlflow"]) == 0
    overall = json.loads((tmp_path / "wm" / "results.json").read_text())["overall"]
    assert history["video_eval/psnr"][-1][1] == pytest.approx(overall["model"]["psnr"], abs=1e-3)
    assert history["video_eval/ssim"][-1][1] == pytest.approx(overall["model"]["ssim"], abs=1e-4)
    assert history["video_eval/psnr_copy_first_frame"][-1][1] == pytest.approx(overall["copy_first_frame"]["psnr"])


def test_video_eval_says_why_it_is_off_where_it_cannot_run():
    from wallwm_pretrain.config import load_config
    from wallwm_pretrain.trainer.video_eval import unavailable

    assert load_config(SMOKE).train.video_eval_every == 0  # off in the smoke config
    assert load_config(SMOKE.with_name("metaworld.yaml")).train.video_eval_every > 0  # on in the preset
    assert unavailable(load_config(SMOKE)) == ""
    assert "parallel.tp=1, pp=1" in unavailable(load_config(SMOKE, ["parallel.pp=2"]))
    assert "data.mode=unified" in unavailable(load_config(SMOKE, ["data.mode=unified"]))
    assert "model.kind=conditioner" in unavailable(load_config(SMOKE.with_name("smoke_conditioner.yaml")))
    # the Wan tower predicts video too (tests/eval/test_worldmodel_wan.py)
    assert unavailable(load_config(SMOKE.with_name("smoke_wan.yaml"), ["model.action_dim=4", "model.state_dim=8"])) == ""
