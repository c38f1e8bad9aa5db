"""``--events predicted``: a conditioner trained on the same Meta-World recording chooses each
next event and its remaining time; ``--events script predicted`` runs the same episodes and seeds
both ways and reports them side by side, with every predicted caption per plan."""

import json

import pytest

from wallwm_pretrain.eval.metaworld import MetaWorldRunner

TASK = "pick-place-v3"


@pytest.fixture(scope="module")
def conditioner_run(mw_shards, tmp_path_factory):
    """make-tiny's VLM, conditioner shards of the L1 recording and 2 steps of the heads (no
    alignment term: these shards carry no text-encoder states)."""
    from data_tools.conditioner import build_conditioner
    from wallwm_pretrain.config import load_config
    from wallwm_pretrain.convert.tiny import make_tiny
    from wallwm_pretrain.parallel import shutdown_parallel
    from wallwm_pretrain.trainer import Trainer

    base = tmp_path_factory.mktemp("eval_cond")
    models = make_tiny(base / "models", seed=0)["vlm"]
    build_conditioner(mw_shards["L1"], base / "cond", per_event=2, samples_per_shard=16, progress=False)
    cfg = load_config(None, [
        "model.kind=conditioner", "data.mode=conditioner", f"data.shards={base / 'cond'}", f"model.conditioner.vlm={models}",
        "model.conditioner.l_align=0", "model.conditioner.hidden_size=32", "model.conditioner.num_heads=2",
        "model.conditioner.caption_tokens=16", "data.batch_size=4", "train.steps=2", "train.device=cpu",
        "tracking.enabled=false", f"train.runs_root={base / 'runs'}", "train.run_name=cond",
    ])
    try:
        Trainer(cfg).train()
    finally:
        shutdown_parallel()
    return base / "runs" / "cond"


def test_script_and_predicted_side_by_side(event_run, conditioner_run, tmp_path, eval_cli):
    out = tmp_path / "eval"
    code, stdout, stderr = eval_cli("--ckpt", event_run, "--tasks", TASK, "--episodes", "2", "--max-steps", "24",
                                    "--quiet", "--no-tracking", "--out", out, "--events", "script", "predicted",
                                    "--conditioner", conditioner_run)
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    script, predicted = results["events"]["script"]["tasks"][TASK], results["events"]["predicted"]["tasks"][TASK]
    assert script["episode_seeds"] == predicted["episode_seeds"]  # the same episodes each way
    assert results["tasks"][TASK] == script and results["conditioner"] == str(conditioner_run)
    plans = predicted["predicted"]
    assert len(plans) == 2 and all(plans)
    for episode in plans:
        steps = [p["step"] for p in episode]
        assert steps == sorted(steps) and steps[0] == 0
        assert all(isinstance(p["caption"], str) and p["remaining"] >= 0 for p in episode)
    assert "predicted" not in script
    table = (out / "results.md").read_text()
    assert "(script events)" in table and "(predicted events)" in table
    assert (out / "strips" / f"{TASK}_ep000.png").is_file() and (out / "strips" / f"{TASK}_predicted_ep000.png").is_file()


def test_predicted_plans_follow_the_conditioner(event_run, conditioner_run, single_process):
    """Each plan's caption is the conditioner's, and a plan runs as many steps as it says."""
    from wallwm_pretrain.eval.conditioner import ConditionerPlanner
    from wallwm_pretrain.eval.planners import PredictedEvents
    from wallwm_pretrain.eval.policy import CheckpointPolicy

    policy = CheckpointPolicy.load(event_run, denoise_steps=2)
    conditioner = ConditionerPlanner.load(conditioner_run)
    runner = MetaWorldRunner(policy, TASK, max_steps=30, planner=PredictedEvents(policy, conditioner=conditioner))
    try:
        ep = runner.run(0, seed=0)
    finally:
        runner.close()
    assert ep.plans == len(ep.predicted) == len(ep.events)
    assert [p["caption"] for p in ep.predicted] == ep.events
    for p, nxt in zip(ep.predicted, ep.predicted[1:] + [None]):
        ran = (nxt["step"] if nxt else ep.steps) - p["step"]
        want = min(max(round(p["remaining"]), 1), policy.horizon)
        assert ran == want or (nxt is None and ran <= want)


def test_errors_name_the_fix(event_run, conditioner_run, eval_cli):
    code, _, err = eval_cli("--ckpt", event_run, "--tasks", TASK, "--episodes", "1", "--quiet", "--no-tracking",
                            "--events", "predicted")
    assert code == 2 and "--conditioner" in err
    code, _, err = eval_cli("--ckpt", event_run, "--tasks", TASK, "--episodes", "1", "--quiet", "--no-tracking",
                            "--events", "predicted", "--conditioner", event_run)
    assert code == 2 and "model.kind=conditioner" in err


def test_infer_plans_the_predicted_event_with_an_event_checkpoint(event_run, conditioner_run, tmp_path, capsys):
    """``infer --conditioner C --policy P``: the predicted-events planner on one observation; as many
    actions as the predicted remaining time says (at least one, at most the plan)."""
    from wallwm_pretrain.infer import main

    out = tmp_path / "next.json"
    rc = main(["--conditioner", str(conditioner_run), "--shards", str(conditioner_run.parent.parent / "cond"),
               "--policy", str(event_run), "--denoise-steps", "2", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    got = json.loads(out.read_text())
    assert isinstance(got["next_event"], str) and got["planned_steps"] == 48  # the event checkpoint's data.max_frames
    assert len(got["actions"]) == min(max(round(got["remaining_steps"]), 1), got["planned_steps"])
    assert "actions:" in capsys.readouterr().out
