"""The recipe runner (python -m wallwm_pretrain.recipe): stages in order as training runs, an
interrupted stage resumes, finished stages are skipped, the next stage starts from the previous
one's final checkpoint; the recipe file's errors name the key."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from wallwm_pretrain.checkpoint import find_latest, load_model_state
from wallwm_pretrain.config import ConfigError
from wallwm_pretrain.recipe.spec import read_recipe

from test_trainer import LENGTHS, TINY

REPO = Path(__file__).resolve().parents[1]


def write_recipe(tmp_path, shards, **stage2) -> Path:
    common = [*TINY, f"data.shards={shards}", "train.steps=4", "train.save_every=2", "tracking.enabled=false"]
    recipe = {
        "name": "tiny",
        "runs_root": str(tmp_path / "runs"),
        "stages": [
            {"name": "1_video", "config": "configs/smoke.yaml",
             "overrides": [*common, "model.train_parts=[video_tower,caption_encoder]", "model.action_loss_weight=0",
                           "model.time_loss_weight=0"]},
            {"name": "2_action", "config": ["configs/smoke.yaml"], "init_from": "1_video",
             "overrides": [*common, "model.train_parts=[action_tower,time_head]", "model.video_loss_weight=0"],
             **stage2},
        ],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_recipe(recipe: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "wallwm_pretrain.recipe", "--recipe", str(recipe), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def table_row(out: str, stage: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(stage + " "))


def test_interrupted_stage_resumes_and_finished_stages_are_skipped(tmp_path, shard_writer):
    shards = shard_writer(tmp_path / "shards", LENGTHS)
    recipe = write_recipe(tmp_path, shards)
    runs = tmp_path / "runs"

    # stage 1 stops after 2 of its 4 steps: the recipe ends there, asking to be run again
    first = run_recipe(recipe, "train.stop_after=2")
    assert first.returncode == 75, first.stdout[-3000:] + first.stderr[-3000:]
    assert "stage 1_video stopped at step 2 of 4: run the recipe again" in first.stdout
    assert "2/4" in table_row(first.stdout, "1_video") and "not run" in table_row(first.stdout, "2_action")
    assert not (runs / "tiny-2_action").exists()

    # again: stage 1 resumes at step 2, stage 2 starts from stage 1's final checkpoint
    second = run_recipe(recipe)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "stage 1_video: resuming at step 2 -> 4 steps" in second.stdout
    row1, row2 = table_row(second.stdout, "1_video"), table_row(second.stdout, "2_action")
    assert "4/4" in row1 and "resumed from 2" in row1 and "step_00000004" in row1
    assert "4/4" in row2 and " ran " in row2 and "action " in row2 and "video " in row2
    final1 = find_latest(runs / "tiny-1_video")
    report = json.loads((runs / "tiny-2_action" / "init_from.json").read_text())
    assert report["source"] == f"checkpoint {final1} (step 4)" and not report["new"] and not report["unused"]
    # the frozen video tower of stage 2 ends where stage 1 ended it
    _, w1, _ = load_model_state(final1)
    _, w2, _ = load_model_state(find_latest(runs / "tiny-2_action"))
    video = [n for n in w1 if n.startswith(("video_", "layers.0.video.", "caption.")) and isinstance(w1[n], torch.Tensor)]
    assert video and all(torch.equal(w1[n], w2[n]) for n in video)
    assert any(not torch.equal(w1[n], w2[n]) for n in w1 if n.startswith("action_"))

    # a third time: nothing left to run, the same table
    third = run_recipe(recipe)
    assert third.returncode == 0
    assert "stage 1_video: complete at step 4" in third.stdout and "stage 2_action: complete at step 4" in third.stdout
    assert "skipped" in table_row(third.stdout, "1_video") and "skipped" in table_row(third.stdout, "2_action")
    assert "-m wallwm_pretrain.train" not in third.stdout  # no training process started
    # nothing left for a Slurm chain either
    plan = run_recipe(recipe, "--plan")
    assert plan.returncode == 0 and plan.stdout == ""


def test_slurm_plan_of_a_fresh_recipe(tmp_path, shard_writer):
    from wallwm_pretrain.recipe.runner import slurm_plan

    recipe = read_recipe(write_recipe(tmp_path, tmp_path / "shards", slurm=["--nodes=2"]))
    plan = slurm_plan(recipe)
    assert [s.name for s, _ in plan] == ["1_video", "2_action"] and plan[1][0].slurm == ["--nodes=2"]
    assert f"model.init_from={tmp_path / 'runs' / 'tiny-1_video'}" in plan[1][1]
    assert "train.resume=auto" in plan[0][1] and not any(o.startswith("model.init_from") for o in plan[0][1])


def test_context_weights_come_from_earlier_stages(tmp_path):
    """context_from: each unified-mode context source reads an earlier stage's weights (its run
    folder in a Slurm chain) or a path, as model.context.<key>_from."""
    from wallwm_pretrain.recipe.runner import slurm_plan

    recipe = read_recipe(write_recipe(tmp_path, tmp_path / "shards",
                                      context_from={"conditioner": "1_video", "staircase": "/models/stage4"}))
    assert recipe.stage("2_action").context_from == {"conditioner": "1_video", "staircase": "/models/stage4"}
    overrides = slurm_plan(recipe)[1][1]
    assert f"model.context.conditioner_from={tmp_path / 'runs' / 'tiny-1_video'}" in overrides
    assert "model.context.staircase_from=/models/stage4" in overrides


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(extra=1), "unknown recipe key 'extra'"),
    (lambda r: r["stages"][0].update(init_from="2_action"), "init_from='2_action' names this or a later stage"),
    (lambda r: r["stages"][1].update(name="1_video"), "stage name '1_video' is used twice"),
    (lambda r: r["stages"][0].update(overides=[]), "unknown stage key 'overides'"),
    (lambda r: r["stages"][0]["overrides"].append("train.run_name=x"), "train.run_name is set by the recipe runner"),
    (lambda r: r["stages"][0].update(context_from={"conditioner": "2_action"}),
     "context_from.conditioner='2_action' names this or a later stage"),
    (lambda r: r["stages"][1].update(context_from={"vlm": "1_video"}), "context_from: unknown key 'vlm'"),
])
def test_recipe_file_errors_name_the_key(tmp_path, change, message):
    path = write_recipe(tmp_path, tmp_path / "shards")
    raw = yaml.safe_load(path.read_text())
    change(raw)
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        read_recipe(path)


def test_one_mlflow_run_per_recipe_with_a_nested_run_per_stage(tmp_path, shard_writer):
    import mlflow

    shards = shard_writer(tmp_path / "shards", LENGTHS)
    recipe = tmp_path / "tracked.yaml"
    recipe.write_text(yaml.safe_dump({"name": "tracked", "runs_root": str(tmp_path / "runs"), "stages": [
        {"name": "1_video", "config": "configs/smoke.yaml",
         "overrides": [*TINY, f"data.shards={shards}", "train.steps=1", "model.train_parts=[video_tower,caption_encoder]"]},
    ]}))
    done = run_recipe(recipe)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    parent_id = json.loads((tmp_path / "runs" / "tracked.recipe.json").read_text())["mlflow_run_id"]
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    parent = client.get_run(parent_id)
    assert parent.data.params["recipe.stages"] == "1_video" and parent.info.status == "FINISHED"
    stage_id = json.loads((tmp_path / "runs" / "tracked-1_video" / "summary.json").read_text())["mlflow_run_id"]
    stage = client.get_run(stage_id)
    assert stage.data.tags["mlflow.parentRunId"] == parent_id
    params = stage.data.params
    assert int(params["params.frozen.action_tower"]) > 0 and params["params.trained.action_tower"] == "0"
    assert int(params["params.trained"]) == int(params["params.trained.video_tower"]) + int(
        params["params.trained.caption_encoder"])
    # run again: the same parent run, nothing retrained
    again = run_recipe(recipe)
    assert again.returncode == 0
    assert json.loads((tmp_path / "runs" / "tracked.recipe.json").read_text())["mlflow_run_id"] == parent_id
