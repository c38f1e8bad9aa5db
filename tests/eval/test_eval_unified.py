"""Unified mode end to end on recorded Meta-World demonstrations: episode shards (build-episodes),
a tiny unified-mode checkpoint with the global and Staircase context sources on make-tiny's
random VLM, closed-loop evaluation with each context source on the same episodes and seeds,
``infer --mode unified``, and a chunk's context switched between calls leaving the policy as
it was. The checkpoint trains for 4 steps: what is checked is the plumbing, not success."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import TASK, train_tiny
from wallwm_pretrain.eval.metaworld import eval_env_seed
from wallwm_pretrain.eval.policy import CheckpointPolicy, ChunkContext, PolicyError


def unified_args(models) -> list[str]:
    return ["data.mode=unified", "data.chunk_horizon=8", "data.history_latents=2", "data.balance.alpha_vl=1",
            "data.balance.alpha_action=1", "data.context_mix={atomic: 1, global: 1, staircase: 1}",
            "model.context.sources=[global,staircase]", f"model.conditioner.vlm={models / 'vlm'}",
            "model.conditioner.vlm_dtype=float32", "model.conditioner.hidden_size=32", "model.conditioner.num_heads=2",
            "model.conditioner.align_tokens=4", "model.conditioner.text_dim=16", "model.staircase.latents=3",
            "model.staircase.num_heads=2"]


@pytest.fixture(scope="module")
def unified_run(mw_shards, tmp_path_factory):
    from data_tools.episodes import build_episodes
    from wallwm_pretrain.convert.tiny import make_tiny

    base = tmp_path_factory.mktemp("unified")
    models = make_tiny(base / "models", seed=0)["vae"].parent
    build_episodes(mw_shards["L1"], base / "episodes", progress=False)
    run = train_tiny(base / "episodes", base / "runs", "mw_unified", *unified_args(models))
    return {"run": run, "episodes": base / "episodes", "models": models}


def test_each_context_source_closed_loop_on_the_same_episodes(unified_run, eval_cli, tmp_path):
    out = tmp_path / "eval"
    code, stdout, err = eval_cli("--ckpt", unified_run["run"], "--mode", "unified", "--env", "metaworld", "--tasks",
                                 TASK, "--episodes", "1", "--max-steps", "20", "--quiet", "--no-tracking",
                                 "--context", "atomic", "global", "staircase", "--out", out)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "unified" and results["horizon"] == 8 and "events" not in results
    assert list(results["contexts"]) == ["atomic", "global", "staircase"]
    for run in results["contexts"].values():
        task = run["tasks"][TASK]
        assert task["episode_seeds"] == [eval_env_seed(0, TASK, 0)] and task["episodes"] == 1
        assert 1 <= task["mean_steps"] <= 20 and task["mean_plans"] >= 1
    header = (out / "results.md").read_text().splitlines()[0]
    assert all(f"({c} context)" in header for c in ("atomic", "global", "staircase"))
    assert (out / "strips" / f"{TASK}_ep000.png").is_file() and (out / "strips" / f"{TASK}_global_ep000.png").is_file()


def test_switching_the_context_between_chunks_leaves_the_policy_unchanged(unified_run):
    policy = CheckpointPolicy.load(unified_run["run"])
    frame = np.random.default_rng(0).integers(0, 256, (policy.num_views, 32, 32, 3), dtype=np.uint8)
    history = [np.roll(frame, k, axis=1) for k in range(policy.history)]
    state = np.zeros(policy.state_dim, np.float32)
    ctx = {s: ChunkContext(s, "reach for the puck", "pick up the puck and place it at the goal", ["reach for the puck"])
           for s in ("atomic", "global", "staircase")}
    plan = lambda source: policy.plan_chunk(history, frame, state, ctx[source], policy.new_episode(3))  # noqa: E731
    before = {n: v.clone() for n, v in policy.model.state_dict().items() if isinstance(v, torch.Tensor)}
    first = plan("global")
    for source in ("staircase", "atomic", "staircase"):
        plan(source)
    again = plan("global")
    assert np.array_equal(first.actions, again.actions) and first.remaining == again.remaining
    assert all(torch.equal(v, before[n]) for n, v in policy.model.state_dict().items() if isinstance(v, torch.Tensor))
    assert first.actions.shape == (8, policy.action_dim)
    assert not np.array_equal(plan("atomic").actions, first.actions)  # the source does reach the chunk
    with pytest.raises(PolicyError, match="history frames"):
        policy.plan_chunk(history[:1], frame, state, ctx["atomic"], policy.new_episode(3))


def test_infer_unified_mode(unified_run, event_run, chunk_run, capsys):
    from wallwm_pretrain.infer import main

    out = {}
    for source in ("atomic", "global", "staircase"):
        path = unified_run["episodes"].parent / f"{source}.json"
        code = main(["--mode", "unified", "--context", source, "--policy", str(unified_run["run"]), "--shards",
                     str(unified_run["episodes"]), "--anchor", "12", "--out", str(path)])
        assert code == 0, capsys.readouterr().err
        out[source] = json.loads(path.read_text())
    for source, res in out.items():
        assert res["context"] == source and res["planned_steps"] == 8 and len(res["actions"]) == 8
        assert res["sample"].endswith("/t12") and res["truth"]["remaining"] >= 1
    assert out["atomic"]["caption"] == out["atomic"]["truth"]["caption"]
    capsys.readouterr()
    # one backbone: an event-mode checkpoint plans a unified chunk too (atomic: it builds no other source)
    path = unified_run["episodes"].parent / "event_as_unified.json"
    assert main(["--mode", "unified", "--policy", str(event_run), "--shards", str(unified_run["episodes"]),
                 "--anchor", "12", "--out", str(path)]) == 0
    assert len(json.loads(path.read_text())["actions"]) == 16  # configs/metaworld.yaml's data.chunk_horizon
    assert main(["--mode", "unified", "--context", "global", "--policy", str(event_run), "--shards",
                 str(unified_run["episodes"])]) == 2
    assert "builds none" in capsys.readouterr().err
    assert main(["--mode", "unified", "--policy", str(chunk_run), "--shards", str(unified_run["episodes"])]) == 2
    assert "chunk-mode checkpoint cannot plan in unified mode" in capsys.readouterr().err
    assert main(["--mode", "unified", "--shards", str(unified_run["episodes"])]) == 2


def test_one_backbone_two_modes_and_flag_errors(unified_run, event_run, eval_cli, tmp_path):
    code, _, err = eval_cli("--ckpt", event_run, "--tasks", TASK, "--episodes", "1", "--quiet", "--no-tracking",
                            "--context", "global", "--out", tmp_path)
    assert code == 2 and "--context is read in unified mode" in err
    code, _, err = eval_cli("--ckpt", unified_run["run"], "--tasks", TASK, "--episodes", "1", "--quiet",
                            "--no-tracking", "--events", "predicted", "--out", tmp_path)
    assert code == 2 and "--events is read in event mode" in err
    # the unified-mode checkpoint plans whole events with the script (its towers, data.max_frames)
    code, _, err = eval_cli("--ckpt", unified_run["run"], "--mode", "event", "--tasks", TASK, "--episodes", "1",
                            "--max-steps", "20", "--quiet", "--no-tracking", "--out", tmp_path / "event")
    assert code == 0, err
    results = json.loads((tmp_path / "event" / "results.json").read_text())
    assert results["mode"] == "event" and results["horizon"] == 48 and list(results["events"]) == ["script"]


def test_stage5_starts_from_stages_2_to_4_and_freezes_the_heads_and_branch(unified_run, event_run, tmp_path):
    """Stage 5: the towers from an event-mode (stage-2) checkpoint, the conditioner's heads and the
    Staircase branch from their stages' weights (exports here), all exactly; after steps the heads,
    the branch and the caption encoder are bit-identical and outside the optimizer, the towers
    and the new Staircase projection changed."""
    from safetensors.torch import save_file

    from test_stages import build, check_stage, train, weights
    from wallwm_pretrain.checkpoint import find_latest, load_model_state
    from wallwm_pretrain.export import load_model

    model, _ = load_model(unified_run["run"])
    state = {n: v.detach().clone() + 0.25 for n, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    heads = {n[len("context."):]: v for n, v in state.items() if n.startswith(("context.adapter.", "context.align."))}
    branch = {n[len("context."):]: v for n, v in state.items() if n.startswith("context.branch.")}
    save_file(heads, str(tmp_path / "stage3.safetensors"))
    save_file(branch, str(tmp_path / "stage4.safetensors"))
    trainer = build(tmp_path, unified_run["episodes"], "stage5", *[a for a in unified_args(unified_run["models"])],
                    f"model.init_from={event_run}", "model.init_from_partial=true",
                    f"model.context.conditioner_from={tmp_path / 'stage3.safetensors'}",
                    f"model.context.staircase_from={tmp_path / 'stage4.safetensors'}",
                    "model.train_parts=[video_tower,action_tower,time_head,context_projection]",
                    "train.steps=3", "train.save_format=gathered", "model.hidden_size=32", "model.num_heads=4",
                    "model.ffn_hidden_size=64", "model.num_layers=1", "model.text_layers=1", "data.batch_size=2",
                    "data.length_buckets=[]", "model.state_dim=39", "model.action_dim=4", "model.image_size=32",
                    "model.num_views=2", "model.patch_size=8")
    start = weights(trainer)
    _, towers, _ = load_model_state(find_latest(event_run))
    for name, value in start.items():
        if name.startswith(("context.staircase_proj.", "context.global_proj.")):
            continue  # new in stage 5 (the context projections)
        want = heads.get(name[len("context."):]) if name.startswith(("context.adapter.", "context.align.")) else (
            branch.get(name[len("context."):]) if name.startswith("context.branch.") else towers[name])
        assert torch.equal(value, want), name
    report = trainer.handoff.as_dict()
    assert set(report["new"]) == {"context_projection"} and not report["unused"]
    train(trainer)
    check_stage(trainer, start, {"video_tower", "action_tower", "time_head", "context_projection"},
                find_latest(tmp_path / "runs" / "stage5"), all_change=False)
