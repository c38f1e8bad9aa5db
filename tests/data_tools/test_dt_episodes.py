"""build-episodes: one sample per episode joined from real event shards (arrays equal the
concatenation of the events, spans and captions in the json), the index the loader checks,
byte-identical rebuilds, gaps and overlaps named, text states carried over, and the loader in
data.mode=unified over the result on the pixel and the latent path."""

from __future__ import annotations

import io
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from data_tools.cut import npy_bytes
from data_tools.episodes import build_episodes
from data_tools.errors import DataToolsError, OutputExistsError
from data_tools.shardread import iter_samples
from data_tools.tario import DeterministicTarWriter
from wallwm_pretrain.config import BalanceConfig, ConfigError, DataConfig
from wallwm_pretrain.data.index import read_index as loader_index
from wallwm_pretrain.data.loader import EventLoader
from wallwm_pretrain.data.verify import verify_shards

pytestmark = pytest.mark.usefixtures("dt_one_thread")
MEMBERS = ("json", "actions.npy", "state.npy", "states.npy", "frames.npy", "caption_states.npy",
           "task_states.npy", "event_states.npy", "event_states_len.npy", "latents.npy")


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _read(folder: Path) -> dict[str, dict]:
    """key -> {"meta": json, member name: array} of every sample of a shard folder."""
    out = {}
    for _, key, m in iter_samples(folder, MEMBERS):
        out[key] = {"meta": json.loads(m.pop("json")), **{k: _npy(v) for k, v in m.items()}}
    return out


@pytest.fixture(scope="module")
def episodes(dt_tiny_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("episodes") / "ep"
    build_episodes(dt_tiny_shards, out, samples_per_shard=2, progress=False)
    return out


def test_episode_samples_are_their_events_joined_in_time_order(dt_tiny_shards, episodes):
    events, eps = _read(dt_tiny_shards), _read(episodes)
    by_episode = defaultdict(list)
    for key, ev in events.items():
        by_episode[ev["meta"]["episode_id"]].append((ev["meta"]["start"], key))
    assert sorted(eps) == [f"ep{e:06d}_L1" for e in sorted(by_episode)]
    for episode_id, starts in by_episode.items():
        keys = [k for _, k in sorted(starts)]
        ep = eps[f"ep{episode_id:06d}_L1"]
        first = events[keys[0]]["meta"]
        for name in ("actions.npy", "states.npy", "frames.npy"):
            np.testing.assert_array_equal(ep[name], np.concatenate([events[k][name] for k in keys]))
        np.testing.assert_array_equal(ep["state.npy"], events[keys[0]]["states.npy"][0])
        meta = ep["meta"]
        assert meta["episode_id"] == episode_id and meta["level"] == "L1"
        assert meta["task"] == meta["caption"] == first["task"] and meta["task"]
        assert (meta["start"], meta["end"]) == (first["start"], events[keys[-1]]["meta"]["end"])
        assert meta["length"] == len(ep["actions.npy"]) and meta["fps"] == first["fps"]
        assert meta["events"] == [
            {"caption": events[k]["meta"]["caption"], "event_index": events[k]["meta"]["event_index"],
             "level": "L1", "start": events[k]["meta"]["start"] - first["start"],
             "end": events[k]["meta"]["end"] - first["start"]} for k in keys]
        assert "event_states.npy" not in ep  # the event shards carry no text states


def test_index_is_what_the_loader_checks(dt_tiny_shards, episodes):
    index = loader_index(episodes)
    verify_shards(episodes, index, "sha256")
    source = json.loads((dt_tiny_shards / "index.json").read_text())
    assert index["kind"] == "episode" and index["total_samples"] == index["episodes"] == 5
    assert index["events"] == source["total_samples"]
    assert sum(s["samples"] for s in index["shards"]) == 5 and len(index["shards"]) == 3
    for key in ("stats", "action_dim", "state_dim", "image_size", "views", "fps"):
        assert index[key] == source[key]
    assert index["vl_cluster_counts"] == {"0": 5}
    lengths = [s["meta"]["length"] for s in _read(episodes).values()]
    assert index["episode_length"]["min"] == min(lengths) and index["episode_length"]["max"] == max(lengths)


def test_rebuilds_are_byte_identical_and_a_rerun_does_nothing(dt_tiny_shards, episodes, tmp_path):
    again = tmp_path / "again"
    build_episodes(dt_tiny_shards, again, samples_per_shard=2, workers=2, progress=False)
    for s in json.loads((episodes / "index.json").read_text())["shards"]:
        assert (again / s["name"]).read_bytes() == (episodes / s["name"]).read_bytes()
    assert build_episodes(dt_tiny_shards, again, samples_per_shard=2, progress=False)["reused"] is True
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=f"{taken} exists.*not a episode-shard folder"):
        build_episodes(dt_tiny_shards, taken, progress=False)


def _event_shards(folder: Path, spans: dict[int, list[tuple[int, int, int]]]) -> Path:
    """A hand-written event-shard folder: episode -> [(start, end, vl_cluster)]."""
    folder.mkdir()
    samples = {}
    for ep, evs in spans.items():
        for i, (start, end, vl) in enumerate(evs):
            t = end - start
            meta = {"episode_id": ep, "event_index": i, "level": "L1", "caption": f"event {i}",
                    "task": "the task", "start": start, "end": end, "fps": 10,
                    "vl_cluster": vl, "action_cluster": 0}
            steps = np.arange(start, end, dtype=np.float32)[:, None]
            samples[f"ep{ep:06d}_L1_{i:03d}"] = {
                "json": json.dumps(meta).encode(), "actions.npy": npy_bytes(steps),
                "state.npy": npy_bytes(steps[0]), "states.npy": npy_bytes(steps),
                "frames.npy": npy_bytes(np.full((t, 1, 4, 4, 3), start % 250, np.uint8))}
    with open(folder / "shard-000000.tar", "wb") as fh:
        writer = DeterministicTarWriter(fh)
        for key, members in samples.items():
            writer.write_sample(key, members)
        writer.close()
    index = {"level": "L1", "action_dim": 1, "state_dim": 1, "image_size": 4, "views": ["v"], "fps": 10,
             "total_samples": len(samples), "shards": [{"name": "shard-000000.tar", "samples": len(samples)}]}
    (folder / "index.json").write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize("second,what", [((6, 10, 0), "a gap"), ((4, 10, 0), "an overlap")])
def test_gaps_and_overlaps_stop_the_build_naming_the_episode_and_spans(tmp_path, second, what, dt_cli):
    src = _event_shards(tmp_path / "events", {0: [(0, 4, 0), (4, 8, 0)], 1: [(0, 5, 0), second]})
    message = (rf"episode 1: {what} between events ep000001_L1_000 \[0, 5\), "
               rf"ep000001_L1_001 \[{second[0]}, 10\)")
    with pytest.raises(DataToolsError, match=message):
        build_episodes(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    proc = dt_cli("build-episodes", "--shards", src, "--out", tmp_path / "out", "--quiet")
    assert proc.returncode == 1 and "--gaps skip" in proc.stderr and "episode 1" in proc.stderr
    index = build_episodes(src, tmp_path / "skip", gaps="skip", progress=False)
    assert index["skipped_episodes"] == ["ep000001_L1"] and index["total_samples"] == 1
    assert list(_read(tmp_path / "skip")) == ["ep000000_L1"]


def test_clusters_are_the_most_common_of_the_events_and_balance_reads_them(tmp_path):
    src = _event_shards(tmp_path / "events", {
        0: [(0, 4, 2), (4, 8, 1), (8, 12, 1)],  # 1 twice
        1: [(0, 4, 3), (4, 8, 2)],  # a tie: the smaller id
        2: [(0, 8, 3)], 3: [(0, 8, 3)]})
    out = tmp_path / "out"
    index = build_episodes(src, out, samples_per_shard=1, progress=False)
    metas = {k: v["meta"] for k, v in _read(out).items()}
    assert [metas[f"ep{e:06d}_L1"]["vl_cluster"] for e in range(4)] == [1, 2, 3, 3]
    assert index["vl_cluster_counts"] == {"1": 1, "2": 1, "3": 2}
    cfg = DataConfig(shards=str(out), mode="unified", batch_size=2, chunk_horizon=4, history_latents=1,
                     shuffle_buffer=0, length_buckets=[], balance=BalanceConfig(alpha_vl=0.0))
    loader = EventLoader(cfg, frame_stride=2, caption_max_bytes=32)
    kept = {key.partition("/")[0] for _ in range(6) for key in next(loader).keys}
    assert {"ep000000_L1", "ep000001_L1"} <= kept  # the clusters of one episode are always kept


def test_help_shows_an_example(dt_cli):
    proc = dt_cli("build-episodes", "--help")
    assert proc.returncode == 0
    assert "python -m data_tools build-episodes --shards" in proc.stdout and "--gaps" in proc.stdout
    assert "build-episodes" in dt_cli("--help").stdout


def _unified(folder: Path, **kw) -> DataConfig:
    base = dict(shards=str(folder), mode="unified", batch_size=3, num_workers=0, shuffle_buffer=0,
                chunk_horizon=8, history_latents=2, length_buckets=[4, 8], seed=1,
                context_mix={"atomic": 1.0, "global": 1.0})
    return DataConfig(**{**base, **kw})


def test_the_loader_yields_unified_batches_from_episode_shards(episodes, dt_tiny_shards):
    eps = _read(episodes)
    loader = EventLoader(_unified(episodes), frame_stride=4, caption_max_bytes=64)
    contexts = set()
    for _ in range(6):
        batch = next(loader)
        assert batch.history == 2 and batch.frames.shape[1] == 8 + batch.actions.shape[1]
        contexts |= set(batch.context)
        for i, key in enumerate(batch.keys):
            name, _, w = key.partition("/w")
            a, ep = int(w), eps[name]
            hist = np.maximum(np.arange(a - 8, a), 0)
            n = int(batch.lengths[i])
            np.testing.assert_array_equal(batch.frames[i, :8].numpy(), ep["frames.npy"][hist])
            np.testing.assert_array_equal(batch.frames[i, 8:8 + n].numpy(), ep["frames.npy"][a:a + n])
            events = ep["meta"]["events"]
            assert batch.done[i] == [e["caption"] for e in events if e["end"] <= a]
            assert batch.task[i] == ep["meta"]["task"]
    assert contexts == {"atomic", "global"}
    with pytest.raises(ConfigError, match="data.mode=unified but .* holds event shards.*build-episodes"):
        EventLoader(_unified(dt_tiny_shards), frame_stride=4)
    with pytest.raises(ConfigError, match="data.mode=event but .* holds episode shards.*data.mode=unified"):
        EventLoader(_unified(episodes, mode="event"), frame_stride=4)


def test_a_restored_unified_loader_continues_with_the_same_windows_and_contexts(episodes):
    cfg = _unified(episodes, shuffle_buffer=4, context_mix={"atomic": 1.0, "global": 1.0, "staircase": 1.0})
    first = EventLoader(cfg, frame_stride=4, caption_max_bytes=64)
    for _ in range(3):
        next(first)
    state = first.state_dict()
    expected = [next(first) for _ in range(3)]
    second = EventLoader(cfg, frame_stride=4, caption_max_bytes=64)
    second.load_state_dict(state)
    for want in expected:
        got = next(second)
        assert got.keys == want.keys and got.context == want.context and got.done == want.done
        assert torch.equal(got.frames, want.frames) and torch.equal(got.actions, want.actions)


def test_latents_and_text_states_for_unified_mode(dt_shards_copy, dt_tiny_wan, tmp_path):
    """embed-captions on the event shards -> build-episodes carries the states; encode-latents
    on the episode shards -> the loader reads history latents before each window's."""
    from data_tools.latents import encode_latents
    from data_tools.textstates import embed_captions

    embed_captions(dt_shards_copy, dt_tiny_wan / "text_encoder", progress=False)
    out = tmp_path / "ep"
    build_episodes(dt_shards_copy, out, samples_per_shard=2, progress=False)
    events, eps = _read(dt_shards_copy), _read(out)
    for name, ep in eps.items():
        keys = sorted((k for k, e in events.items() if f"{k.rsplit('_', 1)[0]}" == name),
                      key=lambda k: events[k]["meta"]["start"])
        lengths = ep["event_states_len.npy"]
        assert lengths.tolist() == [len(events[k]["caption_states.npy"]) for k in keys]
        for row, k, n in zip(ep["event_states.npy"], keys, lengths):
            np.testing.assert_array_equal(row[:n], events[k]["caption_states.npy"])
            assert not row[n:].any()
        np.testing.assert_array_equal(ep["task_states.npy"], events[keys[0]]["task_states.npy"])
    assert (out / "empty_text_states.npy").read_bytes() == (dt_shards_copy / "empty_text_states.npy").read_bytes()

    encode_latents(out, dt_tiny_wan / "vae", progress=False)
    eps = _read(out)
    loader = EventLoader(_unified(out, context_mix={"atomic": 1.0}), frame_stride=4, caption_max_bytes=64,
                         video_input="latents")
    for _ in range(3):
        batch = next(loader)
        assert batch.latents.shape[3] == 2 + batch.actions.shape[1] // 4 and batch.history == 2
        for i, key in enumerate(batch.keys):
            name, _, w = key.partition("/w")
            j, lat = int(w) // 4, eps[name]["latents.npy"]  # [N, V, Z, h, w]
            got = batch.latents[i].permute(2, 0, 1, 3, 4).numpy()  # [M + T/K, V, Z, h, w]
            np.testing.assert_array_equal(got[:2], lat[np.maximum(np.arange(j - 2, j), 0)])
            n = -(-int(batch.lengths[i]) // 4)
            np.testing.assert_array_equal(got[2:2 + n], lat[j:j + n])
            events = eps[name]["meta"]["events"]
            a, stop = int(w), int(w) + int(batch.lengths[i])
            cover = [min(stop, e["end"]) - max(a, e["start"]) for e in events]
            atom = max(range(len(events)), key=lambda e: (cover[e], -e))
            length = int(eps[name]["event_states_len.npy"][atom])
            assert int(batch.text_valid[i].sum()) == length
            assert torch.equal(batch.text_states[i, :length],
                               torch.from_numpy(eps[name]["event_states.npy"][atom, :length]))


def _close(got: np.ndarray, want: np.ndarray) -> bool:
    """Equal up to one float16 step (or 1e-5 near zero): another batch padding moves the last bits."""
    gap = np.abs(got.astype(np.float32) - want.astype(np.float32))
    return got.shape == want.shape and bool((gap <= np.spacing(np.abs(want)).astype(np.float32) + 1e-5).all())


def test_embed_captions_on_episode_shards_adds_the_event_states(episodes, dt_shards_copy, dt_tiny_wan, tmp_path):
    """The other order: build-episodes first, then embed-captions writes event_states itself,
    equal (up to batch padding) to what build-episodes carries from embedded event shards."""
    from data_tools.textstates import embed_captions

    own = Path(shutil.copytree(episodes, tmp_path / "ep"))
    embed_captions(own, dt_tiny_wan / "text_encoder", batch_size=7, progress=False)
    embed_captions(dt_shards_copy, dt_tiny_wan / "text_encoder", progress=False)
    carried = tmp_path / "carried"
    build_episodes(dt_shards_copy, carried, samples_per_shard=2, progress=False)
    mine, theirs = _read(own), _read(carried)
    assert json.loads((own / "index.json").read_text())["text_states"]["members"]["events"] == "event_states.npy"
    for key, ep in mine.items():
        lengths = ep["event_states_len.npy"]
        assert lengths.dtype == np.int32 and lengths.tolist() == theirs[key]["event_states_len.npy"].tolist()
        assert _close(ep["event_states.npy"], theirs[key]["event_states.npy"]), key
    verify_shards(own, loader_index(own), "sha256")
    batch = next(EventLoader(_unified(own), frame_stride=4, caption_max_bytes=64))
    assert batch.text_states is not None and batch.history == 2
