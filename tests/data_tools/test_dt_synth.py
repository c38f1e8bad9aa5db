"""synth: determinism, event structure, long tail and physical consistency of episodes."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from data_tools.events import check_nesting, read_events as parse_events
from data_tools.lerobot import LeRobotV3Dataset
from data_tools.synthworld.captions import primitive_of


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path, dt_make_dataset):
    a = _files(dt_make_dataset(tmp_path / "a", episodes=4, seed=11))
    b = _files(dt_make_dataset(tmp_path / "b", episodes=4, seed=11))
    assert a.keys() == b.keys()
    assert "data/chunk-000/file-000.parquet" in a and "events.jsonl" in a
    for name in a:
        assert a[name] == b[name], f"{name} differs between two runs with the same seed"
    c = _files(dt_make_dataset(tmp_path / "c", episodes=4, seed=12))
    assert c["events.jsonl"] != a["events.jsonl"]
    assert c["data/chunk-000/file-000.parquet"] != a["data/chunk-000/file-000.parquet"]


def test_episode_depends_only_on_seed_and_index(tmp_path, dt_make_dataset, dt_events):
    few = dt_events(dt_make_dataset(tmp_path / "few", episodes=2, seed=5))
    more = dt_events(dt_make_dataset(tmp_path / "more", episodes=4, seed=5))
    assert few == [e for e in more if e["episode_index"] < 2]


def test_events_are_nested_ordered_and_tile_each_episode(dt_tiny):
    events = parse_events(dt_tiny / "events.jsonl")
    check_nesting(events)  # raises on overlap or an event outside its parent
    lengths = {ep: m.length for ep, m in LeRobotV3Dataset(dt_tiny).episodes.items()}
    by = defaultdict(lambda: defaultdict(list))
    for ev in events:
        by[ev.episode_index][ev.level].append(ev)
    assert sorted(by) == list(range(5))
    for ep, levels in by.items():
        (l3,) = levels["L3"]
        assert (l3.start, l3.end, l3.parent) == (0, lengths[ep], None)
        for level, parent_level in (("L2", "L3"), ("L1", "L2")):
            evs = sorted(levels[level], key=lambda e: e.index)
            assert [e.index for e in evs] == list(range(len(evs)))
            # Consecutive spans: every frame of the episode belongs to exactly one event.
            assert evs[0].start == 0 and evs[-1].end == lengths[ep]
            assert all(a.end == b.start for a, b in zip(evs, evs[1:]))
            parents = {p.index: p for p in levels[parent_level]}
            for e in evs:
                p = parents[e.parent]
                assert p.start <= e.start < e.end <= p.end


def test_event_lengths_vary(dt_tiny, dt_events):
    l1 = [e for e in dt_events(dt_tiny) if e["level"] == "L1"]
    lengths = [e["end"] - e["start"] for e in l1]
    assert len(set(lengths)) >= 6
    reach = [e["end"] - e["start"] for e in l1 if primitive_of(e["caption"]) == "reach"]
    assert max(reach) > min(reach)


def test_captions_have_three_levels_and_paraphrases(tmp_path, dt_make_dataset, dt_events):
    events = dt_events(dt_make_dataset(tmp_path / "d", episodes=12, seed=3))
    assert {e["level"] for e in events} == {"L1", "L2", "L3"}
    l1 = [e for e in events if e["level"] == "L1"]
    assert all(primitive_of(e["caption"]) is not None for e in l1)
    grasp = {e["caption"].split(" the ")[0] for e in l1 if primitive_of(e["caption"]) == "grasp"}
    assert len(grasp) >= 2, "grasp captions should use more than one template"


@pytest.mark.parametrize("prob,expect", [(1.0, True), (0.0, False)])
def test_regrasp_events_follow_regrasp_prob(tmp_path, prob, expect, dt_make_dataset, dt_events):
    events = dt_events(dt_make_dataset(tmp_path / "d", episodes=4, seed=2, regrasp_prob=prob))
    per_episode = defaultdict(list)
    for e in sorted((e for e in events if e["level"] == "L1"), key=lambda e: e["index"]):
        per_episode[e["episode_index"]].append(primitive_of(e["caption"]))
    for ep, prims in per_episode.items():
        assert ("regrasp" in prims) is expect, f"episode {ep}: {prims}"
        if expect:  # failed lift, regrasp, then a second lift
            k = prims.index("regrasp")
            assert prims[k - 1] == "lift" and prims[k + 1] == "lift"


def test_states_follow_actions_and_holding_matches_events(dt_tiny, dt_events):
    ds = LeRobotV3Dataset(dt_tiny)
    events = dt_events(dt_tiny)
    for ep in ds.episodes:
        cols = ds.read_columns(ep, ["observation.state", "action"])
        s, a = cols["observation.state"], cols["action"]
        assert s.shape[1] == 8 and a.shape[1] == 4
        np.testing.assert_allclose(s[1:, :3], s[:-1, :3] + a[:-1, :3], atol=1e-5)
        np.testing.assert_allclose(s[1:, 4:7], a[:-1, :3] * ds.fps, atol=1e-4)
        for e in events:
            if e["episode_index"] == ep and e["level"] == "L1":
                prim = primitive_of(e["caption"])
                holding = s[e["start"]:e["end"], 7]
                if prim in ("transport", "place"):
                    assert holding.all(), (ep, e)
                if prim == "reach":
                    assert not holding.any(), (ep, e)
