"""record-metaworld: headless rendering, expert phases -> events, layout, determinism, shards.

These tests need the metaworld package and a headless OpenGL library. Where either is
missing they fail (never skip) with a message naming the pip requirement or the Debian
packages to install. Recordings are tiny (pick-place, 2 episodes, 32 px) so each test takes
a few seconds on a 2-core CPU machine.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from data_tools.events import check_nesting, read_events
from data_tools.lerobot import LeRobotV3Dataset
from data_tools.metaworld import SPECS, RecordConfig, record_metaworld
from sim.metaworld import gl
from data_tools.metaworld.segment import episode_events, smooth_runs, to_runs

TINY = dict(tasks=["pick-place-v3"], episodes_per_task=2, seed=5, image_size=32,
            cameras=["corner", "gripperPOV"], max_steps=120, steps_after_success=4)


@pytest.fixture(scope="module")
def mw_tiny(mw_backend, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mw") / "tiny"
    out.mkdir()
    record_metaworld(out, RecordConfig(**TINY), progress=False)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --- environment and install messages --------------------------------------------------------

def test_headless_rendering_works(mw_backend):
    assert mw_backend in ("egl", "osmesa")


def test_install_hints_name_the_packages(monkeypatch):
    assert "libegl1" in gl.apt_hint("egl") and "libgl1-mesa-dri" in gl.apt_hint("egl")
    assert "libosmesa6" in gl.apt_hint("osmesa")
    real = gl.importlib.util.find_spec
    monkeypatch.setattr(gl.importlib.util, "find_spec",
                        lambda name: None if name == "metaworld" else real(name))
    with pytest.raises(gl.MetaWorldUnavailable, match=r"metaworld==3\.1\.1"):
        gl.import_metaworld()


def test_task_list_of_the_cli_matches_the_specs():
    from data_tools.commands.record_metaworld import DEFAULT_TASKS, TASK_NAMES

    assert TASK_NAMES == list(SPECS) and set(DEFAULT_TASKS) <= set(SPECS)


def test_every_primitive_is_shared_by_another_task():
    """Holding any one task out of training leaves all of its primitives in the other tasks."""
    for name, spec in SPECS.items():
        for prim in spec.primitives:
            others = [n for n, s in SPECS.items() if n != name and prim in s.primitives]
            assert others, f"{name}: primitive {prim!r} occurs in no other task"


def test_layouts_depend_on_the_seed_only(mw_backend):
    from sim.metaworld.env import OBJ1, TaskEnv

    env = TaskEnv("pick-place-v3", 50)
    a, b, c = env.reset(1), env.reset(2), env.reset(1)
    env.close()
    np.testing.assert_array_equal(a, c)
    assert np.abs(a[OBJ1] - b[OBJ1]).max() > 1e-3, "two seeds gave the same puck position"


def test_corner_camera_is_turned_upright(mw_backend):
    """rot180(render) equals a render from the same camera rolled by 180 degrees."""
    import mujoco

    from sim.metaworld.env import TaskEnv
    from sim.metaworld.render import CameraRig

    env = TaskEnv("pick-place-v3", 50)
    env.reset(3)
    rig = CameraRig(env.model, env.data, ["corner", "gripperPOV"], 48)
    try:
        assert rig.rotate == {"corner": True, "gripperPOV": False}
        upright = rig.render(env.data)["corner"].astype(int)
        cam = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, "corner")
        rolled = np.zeros(4)
        mujoco.mju_mulQuat(rolled, env.model.cam_quat[cam].copy(), np.array([0.0, 0.0, 0.0, 1.0]))
        env.model.cam_quat[cam] = rolled
        mujoco.mj_forward(env.model, env.data)
        rig.rotate["corner"] = False
        reference = rig.render(env.data)["corner"].astype(int)
    finally:
        rig.close()
        env.close()
    assert np.abs(upright - reference).mean() < 1.0
    # A vertical flip alone would be a mirror image, far from the reference.
    assert np.abs(upright[:, ::-1] - reference).mean() > 5.0


# --- phases and segmentation (no rendering) ----------------------------------------------------

class _NoCameras:
    cameras: list[str] = []

    def render(self, data):
        return {}


@pytest.mark.parametrize("task", list(SPECS))
def test_expert_walks_through_its_phases_in_order(mw_backend, task):
    """Guards the phase functions against changes of the experts in a Meta-World release.

    Experts may fall back to an earlier phase (a swinging door leaves the reach radius), so
    the check is on first appearances: they follow the spec's order, every phase shows up in
    a few episodes, and a successful episode ends in the last phase.
    """
    from sim.metaworld.env import TaskEnv
    from data_tools.metaworld.record import episode_streams, rollout
    from data_tools.metaworld.segment import primitive_sequence

    order = list(SPECS[task].primitives)
    cfg = RecordConfig(tasks=[task], episodes_per_task=1, seed=0, max_steps=200)
    env = TaskEnv(task, cfg.max_steps)
    successes, seen = 0, set()
    for i in range(4):
        env_seed, noise, _ = episode_streams(0, task, i)
        r = rollout(env, _NoCameras(), cfg, env_seed, noise)
        successes += r.success
        seq = primitive_sequence(r.labels, cfg.min_event_steps)
        seen.update(seq)
        first = [order.index(p) for p in dict.fromkeys(seq)]
        assert first == sorted(first), f"{task} episode {i}: phases out of order: {seq}"
        if r.success:
            assert seq[-1] == order[-1], f"{task} episode {i} succeeded in phase {seq[-1]}"
    env.close()
    assert successes >= 2, f"{task}: the expert succeeded in only {successes} of 4 episodes"
    assert seen == set(order), f"{task}: phase(s) {set(order) - seen} never occurred"


def test_flicker_is_merged_and_regressions_are_kept():
    labels = list("DDDRRDDDDDGGGGGTTTTTTRRRRRDDDDGGGGTTTTTT")
    runs = smooth_runs(to_runs(labels), 4)
    assert [r[0] for r in runs] == list("DGTRDGT")
    assert runs[0] == ("D", 0, 10)
    assert all(a[2] == b[1] for a, b in zip(runs, runs[1:])) and runs[-1][2] == len(labels)

    names = {"R": "reach", "D": "descend", "G": "grasp", "T": "transport"}
    spec = SPECS["pick-place-v3"]
    _, events = episode_events(7, spec, [names[c] for c in labels], np.random.default_rng(0), 4)
    check_nesting(events)
    l1 = [e for e in events if e.level == "L1"]
    l2 = [e for e in events if e.level == "L2"]
    assert len(l1) == 7 and len(l2) == 4
    assert l1[-1].caption.endswith(" again") and l2[-1].caption.endswith(" again")
    assert not l1[1].caption.endswith(" again")


# --- the recorded dataset -----------------------------------------------------------------------

def test_layout_state_and_actions(mw_tiny):
    info = json.loads((mw_tiny / "meta" / "info.json").read_text())
    assert info["fps"] == 80 and info["total_episodes"] == 2 and info["robot_type"] == "sawyer"
    feats = info["features"]
    assert feats["observation.state"]["names"] == [
        "hand_x", "hand_y", "hand_z", "gripper_opening", "hand_vx", "hand_vy", "hand_vz"]
    assert feats["action"]["shape"] == [4]
    assert feats["observation.images.corner"]["shape"] == [32, 32, 3]
    meta = json.loads((mw_tiny / "metaworld.json").read_text())
    assert meta["per_task"]["pick-place-v3"] == {
        "attempted": 2, "successful": 2, "kept": 2, "steps": info["total_frames"]}
    ds = LeRobotV3Dataset(mw_tiny)
    for ep in range(2):
        cols = ds.read_columns(ep, ["observation.state", "action"])
        state, action = cols["observation.state"], cols["action"]
        assert np.abs(action).max() <= 1.0
        # Velocity is the frame-to-frame change of the hand position, in m/s.
        np.testing.assert_allclose(state[1:, 4:7], np.diff(state[:, :3], axis=0) * 80, atol=1e-4)
        frames = ds.read_frames(ep, "observation.images.gripperPOV")
        assert frames.shape == (len(state), 32, 32, 3) and frames.std() > 5
    ds.close()


def test_events_tile_each_episode_and_name_the_object(mw_tiny):
    events = read_events(mw_tiny / "events.jsonl")
    check_nesting(events)
    lengths = {e["episode_index"]: e["length"]
               for e in json.loads((mw_tiny / "metaworld.json").read_text())["episodes"]}
    by = defaultdict(lambda: defaultdict(list))
    for ev in events:
        by[ev.episode_index][ev.level].append(ev)
    for ep, levels in by.items():
        (l3,) = levels["L3"]
        assert (l3.start, l3.end) == (0, lengths[ep])
        for level in ("L2", "L1"):
            evs = sorted(levels[level], key=lambda e: e.index)
            assert evs[0].start == 0 and evs[-1].end == lengths[ep]
            assert all(a.end == b.start for a, b in zip(evs, evs[1:]))
        l1 = [e.caption for e in sorted(levels["L1"], key=lambda e: e.index)]
        assert len(l1) >= 3, l1
        assert all(("puck" in c or "disc" in c) for c in l1), l1
        assert any(w in l1[-1] for w in ("goal", "target")), l1


def test_same_seed_same_files_other_seed_differs(mw_tiny, tmp_path):
    again = tmp_path / "again"
    again.mkdir()
    record_metaworld(again, RecordConfig(**TINY), progress=False)
    a, b = _files(mw_tiny), _files(again)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], f"{name} differs between two recordings with the same seed"
    other = tmp_path / "other"
    other.mkdir()
    record_metaworld(other, RecordConfig(**{**TINY, "seed": 6, "episodes_per_task": 1}),
                     progress=False)
    assert (other / "events.jsonl").read_bytes() != a["events.jsonl"]


def test_build_shards_reads_the_recording(mw_tiny, tmp_path, dt_cli):
    out = tmp_path / "shards"
    proc = dt_cli("build-shards", "--src", mw_tiny, "--out", out, "--level", "L1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    index = json.loads((out / "index.json").read_text())
    n_l1 = sum(1 for e in read_events(mw_tiny / "events.jsonl") if e.level == "L1")
    assert index["total_samples"] == n_l1 and index["views"] == ["corner", "gripperPOV"]
    assert index["action_dim"] == 4 and index["state_dim"] == 7
    samples: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted(out.glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    assert len(samples) == n_l1
    for key, s in samples.items():
        assert {"json", "actions.npy", "state.npy", "states.npy", "frames.npy"} <= set(s), key
        meta = json.loads(s["json"])
        frames = np.load(io.BytesIO(s["frames.npy"]))
        actions = np.load(io.BytesIO(s["actions.npy"]))
        assert frames.shape[:2] == (meta["end"] - meta["start"], 2) and frames.dtype == np.uint8
        assert actions.shape == (meta["end"] - meta["start"], 4)
        assert meta["fps"] == 80 and meta["level"] == "L1"


# --- command line -------------------------------------------------------------------------------

def test_cli_reports_failures_and_keeps_them_on_request(mw_backend, tmp_path, capsys):
    from data_tools.__main__ import main

    args = ["record-metaworld", "--tasks", "pick-place-v3", "--episodes-per-task", "1",
            "--seed", "0", "--image-size", "16", "--max-steps", "12", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "none")]) == 1
    captured = capsys.readouterr()
    assert "no expert episode succeeded" in captured.err
    assert not (tmp_path / "none").exists()
    assert main(args + ["--out", str(tmp_path / "kept"), "--keep-failures"]) == 0
    out = capsys.readouterr().out
    assert "pick-place-v3: 0/1 expert episodes succeeded, 1 failed (kept)" in out
    info = json.loads((tmp_path / "kept" / "meta" / "info.json").read_text())
    assert info["total_frames"] == 12


def test_cli_rejects_unknown_task_and_camera(mw_backend, tmp_path, capsys):
    from data_tools.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["record-metaworld", "--out", str(tmp_path / "x"), "--tasks", "fly-v3",
              "--episodes-per-task", "1", "--seed", "0"])
    assert exc.value.code == 2
    code = main(["record-metaworld", "--out", str(tmp_path / "y"), "--tasks", "reach-v3",
                 "--episodes-per-task", "1", "--seed", "0", "--cameras", "ceiling", "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert "reach-v3" in err and "ceiling" in err and "gripperPOV" in err


def test_help_has_examples_and_every_flag_documents_itself(dt_cli):
    import argparse

    from data_tools.__main__ import build_parser

    proc = dt_cli("record-metaworld", "--help")
    assert proc.returncode == 0 and "example:" in proc.stdout
    assert "python -m data_tools record-metaworld" in proc.stdout
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices["record-metaworld"]._actions:
        assert action.help and action.help.strip(), f"{action.option_strings} has no help"
