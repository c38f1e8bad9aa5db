"""Wrong arguments end in exit code 2 and one line that says what is wrong, never a traceback."""

import json

import pytest

from sim.metaworld import SPECS

TASK = "pick-place-v3"


def _assert_clean_error(code, out, err, *needles):
    assert code == 2, (code, out, err)
    assert err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def test_stats_folder_without_index_json(event_run, tmp_path, eval_cli):
    empty = tmp_path / "not_shards"
    empty.mkdir()
    code, out, err = eval_cli("--ckpt", event_run, "--tasks", TASK, "--episodes", "1", "--stats", empty,
                              "--out", tmp_path / "out", "--no-tracking", "--quiet")
    _assert_clean_error(code, out, err, str(empty / "index.json"), "--stats")
    assert not (tmp_path / "out").exists()


def test_stats_of_other_dimensions(event_run, mw_shards, tmp_path, eval_cli):
    other = tmp_path / "proprio_shards"
    other.mkdir()
    index = json.loads((mw_shards["L1"] / "index.json").read_text())
    (other / "index.json").write_text(json.dumps({**index, "state_dim": 7}))
    code, out, err = eval_cli("--ckpt", event_run, "--tasks", TASK, "--stats", other, "--no-tracking", "--quiet")
    _assert_clean_error(code, out, err, "state_dim is 7", "39")


def test_missing_checkpoint(tmp_path, eval_cli):
    missing = tmp_path / "runs" / "no_such_run"
    code, out, err = eval_cli("--ckpt", missing, "--tasks", TASK, "--no-tracking", "--quiet")
    _assert_clean_error(code, out, err, str(missing))


def test_unsupported_task_names_the_supported_ones(event_run, tmp_path, eval_cli):
    code, out, err = eval_cli("--ckpt", event_run, "--tasks", TASK, "stack-cubes-v3", "--no-tracking", "--quiet",
                              "--out", tmp_path / "out")
    _assert_clean_error(code, out, err, "stack-cubes-v3", *SPECS)
    assert not (tmp_path / "out").exists()  # checked before anything runs


def test_episodes_must_be_positive(event_run, eval_cli):
    code, out, err = eval_cli("--ckpt", event_run, "--tasks", TASK, "--episodes", "0", "--no-tracking", "--quiet")
    _assert_clean_error(code, out, err, "--episodes")


def test_missing_heldout_shards(event_run, tmp_path, eval_cli):
    code, out, err = eval_cli("--ckpt", event_run, "--tasks", TASK, "--episodes", "1", "--max-steps", "4",
                              "--heldout", tmp_path / "nowhere", "--out", tmp_path / "out", "--no-tracking", "--quiet")
    _assert_clean_error(code, out, err, str(tmp_path / "nowhere" / "index.json"))


def test_no_headless_rendering_names_the_packages(event_run, mw_backend, tmp_path, eval_cli, monkeypatch):
    """MUJOCO_GL set to a backend that needs a display: the error says which headless backend to
    use and which Debian packages provide it (mujoco is already imported, so nothing else
    changes in this process)."""
    monkeypatch.setenv("MUJOCO_GL", "glfw")
    code, out, err = eval_cli("--ckpt", event_run, "--tasks", TASK, "--episodes", "1", "--no-tracking", "--quiet",
                              "--out", tmp_path / "out")
    _assert_clean_error(code, out, err, "MUJOCO_GL=egl", "libegl1", "libosmesa6")


def test_file_that_is_not_an_export(tmp_path, eval_cli):
    import torch
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    code, out, err = eval_cli("--ckpt", other, "--tasks", TASK, "--no-tracking", "--quiet")
    _assert_clean_error(code, out, err, str(other), "not a wallwm export")


def test_help_documents_every_flag(capsys):
    from wallwm_pretrain.eval.__main__ import build_parser

    parser = build_parser()
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "example:" in text and "--heldout" in text and "Wilson" in text


def test_the_policy_names_checkpoints_it_cannot_run():
    """The closed loop runs the small towers; a Wan-tower or conditioner checkpoint fails naming what it is."""
    from torch import nn

    from wallwm_pretrain.config import load_config
    from wallwm_pretrain.eval.policy import CheckpointPolicy, PolicyError

    dims = ["model.action_dim=4", "model.state_dim=8", "model.num_views=2", "model.image_size=32"]
    model = nn.Linear(1, 1)
    for config, what in (("configs/smoke_wan.yaml", "towers with video_tower=wan"),
                         ("configs/smoke_conditioner.yaml", "conditioner")):
        cfg = load_config(config, dims)
        with pytest.raises(PolicyError, match=f"this checkpoint is {what}"):
            CheckpointPolicy(model, cfg, {"stats": {}})
