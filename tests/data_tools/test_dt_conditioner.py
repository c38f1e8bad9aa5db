"""build-conditioner: observation samples inside events from event shards (times, keys, done
captions against the dataset's own events, remaining steps, the frames and state at t),
byte-identical rebuilds, the index the loader checks, embed-captions and inspect on the result,
and errors that name the file and key."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from data_tools.conditioner import build_conditioner, observation_times
from data_tools.errors import DataToolsError, OutputExistsError
from data_tools.inspection import inspect_shards
from data_tools.shardread import iter_samples
from data_tools.tario import DeterministicTarWriter
from data_tools.textstates import embed_captions
from wallwm_pretrain.data.index import read_index as loader_index
from wallwm_pretrain.data.verify import verify_shards

K = 3


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _source(folder: Path) -> dict[str, dict]:
    """event key -> {json meta, frames, states} of an event-shard folder."""
    out = {}
    for _, key, m in iter_samples(folder, ("json", "frames.npy", "states.npy")):
        out[key] = {"meta": json.loads(m["json"]), "frames": _npy(m["frames.npy"]),
                    "states": _npy(m["states.npy"])}
    return out


def _samples(folder: Path) -> dict[str, dict]:
    out = {}
    for shard, key, m in iter_samples(folder, ("json", "observation.npy", "state.npy", "caption_states.npy")):
        out[key] = {"shard": shard, "members": m, "meta": json.loads(m["json"])}
    return out


@pytest.fixture(scope="module")
def cond(dt_tiny_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cond") / "c"
    build_conditioner(dt_tiny_shards, out, per_event=K, samples_per_shard=8, progress=False)
    return out


def test_times_are_spread_deduplicated_and_start_at_the_event_start():
    assert observation_times(10, 9, 3) == [10, 13, 16]
    assert observation_times(10, 2, 3) == [10, 11]  # floor(0), floor(2/3), floor(4/3): 0, 0, 1
    assert observation_times(5, 1, 4) == [5]
    for length in range(1, 12):
        for k in range(1, 7):
            times = observation_times(0, length, k)
            assert times[0] == 0 and len(times) == min(length, k) and times[-1] < length


def test_samples_follow_their_events(cond, dt_tiny_shards, dt_tiny, dt_events):
    source = _source(dt_tiny_shards)
    got = _samples(cond)
    want_keys = {f"{k}_t{t:05d}" for k, s in source.items()
                 for t in observation_times(s["meta"]["start"], s["meta"]["length"], K)}
    assert set(got) == want_keys
    assert len(got) == sum(min(s["meta"]["length"], K) for s in source.values())
    assert any(s["meta"]["length"] >= K for s in source.values())
    # the done captions from the dataset's own events.jsonl (not from the shards)
    l1 = sorted((e for e in dt_events(dt_tiny) if e["level"] == "L1"),
                key=lambda e: (e["episode_index"], e["index"]))
    for key, s in got.items():
        meta, ev = s["meta"], source[s["meta"]["event_key"]]
        src, t = ev["meta"], meta["time"]
        assert key == f"{meta['event_key']}_t{t:05d}"
        assert src["start"] <= t < src["end"]
        assert meta["remaining"] == src["end"] - t >= 1
        assert meta["offset"] == t - src["start"]
        for name in ("caption", "next_caption", "task", "episode_id", "event_index", "level",
                     "start", "end", "length", "fps", "vl_cluster", "action_cluster", "views"):
            assert meta[name] == src[name], (key, name)
        assert meta["done_captions"] == [e["caption"] for e in l1 if e["episode_index"] == src["episode_id"]
                                         and e["end"] <= t]
        obs = _npy(s["members"]["observation.npy"])
        assert obs.dtype == np.uint8 and obs.shape == ev["frames"].shape[1:]
        np.testing.assert_array_equal(obs, ev["frames"][t - src["start"]])
        state = _npy(s["members"]["state.npy"])
        assert state.dtype == np.float32
        np.testing.assert_array_equal(state, ev["states"][t - src["start"]])
        assert list(s["members"]) == ["json", "observation.npy", "state.npy"]
    # one known episode in full: its last event, observed at its start, has every other one done
    ep0 = [e for e in l1 if e["episode_index"] == 0]
    last = ep0[-1]
    meta = got[f"ep000000_L1_{last['index']:03d}_t{last['start']:05d}"]["meta"]
    assert meta["done_captions"] == [e["caption"] for e in ep0[:-1]] and meta["next_caption"] == ""
    first = got[f"ep000000_L1_{ep0[0]['index']:03d}_t{ep0[0]['start']:05d}"]["meta"]
    assert first["done_captions"] == []


def test_index_is_what_the_loader_checks(cond, dt_tiny_shards):
    index = json.loads((cond / "index.json").read_text())
    src = json.loads((dt_tiny_shards / "index.json").read_text())
    assert index["kind"] == "conditioner" and index["per_event"] == K and "kind" not in src
    assert index["source"] == str(dt_tiny_shards.resolve())
    assert index["build"]["source_key"] == src["build"]["key"]
    assert index["stats"] == src["stats"]
    for k in ("image_size", "views", "fps", "action_dim", "state_dim", "level"):
        assert index[k] == src[k]
    samples = _samples(cond)
    assert index["total_samples"] == len(samples) == sum(s["samples"] for s in index["shards"])
    assert len(index["shards"]) == -(-len(samples) // 8)
    per_shard = Counter(s["shard"] for s in samples.values())
    vl = Counter(s["meta"]["vl_cluster"] for s in samples.values())
    for s in index["shards"]:
        assert s["samples"] == per_shard[s["name"]]
        assert sum(s["vl_cluster"].values()) == sum(s["action_cluster"].values()) == s["samples"]
    assert index["vl_cluster_counts"] == {str(c): n for c, n in sorted(vl.items())}
    verify_shards(cond, loader_index(cond), "sha256")  # sizes, counts and sha256 agree
    assert not inspect_shards(cond)["problems"]


def test_rebuild_is_byte_identical_and_a_rerun_reuses(cond, dt_tiny_shards, tmp_path):
    other = tmp_path / "again"
    index = build_conditioner(dt_tiny_shards, other, per_event=K, samples_per_shard=8, workers=2,
                              progress=False)
    assert not index["reused"]
    names = sorted(p.name for p in cond.iterdir())
    assert names == sorted(p.name for p in other.iterdir())
    for name in names:
        assert (cond / name).read_bytes() == (other / name).read_bytes(), name
    before = (other / "shard-000000.tar").stat().st_mtime_ns
    assert build_conditioner(dt_tiny_shards, other, per_event=K, samples_per_shard=8, progress=False)["reused"]
    assert (other / "shard-000000.tar").stat().st_mtime_ns == before
    changed = build_conditioner(dt_tiny_shards, other, per_event=2, samples_per_shard=8, progress=False)
    assert not changed["reused"] and changed["per_event"] == 2
    assert changed["total_samples"] < index["total_samples"]


def test_help_names_the_verb_and_an_example(dt_cli):
    proc = dt_cli("build-conditioner", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--per-event" in proc.stdout and "example:" in proc.stdout
    assert "python -m data_tools build-conditioner --src" in proc.stdout
    assert "build-conditioner" in dt_cli("--help").stdout


def test_cli_builds_and_reports(dt_cli, dt_tiny_shards, tmp_path):
    proc = dt_cli("build-conditioner", "--src", dt_tiny_shards, "--out", tmp_path / "c",
                  "--per-event", "2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    total = json.loads((tmp_path / "c" / "index.json").read_text())["total_samples"]
    assert f"{total} conditioner samples" in proc.stdout


def test_bad_input_is_named(cond, dt_tiny_shards, dt_cli, tmp_path):
    proc = dt_cli("build-conditioner", "--src", cond, "--out", tmp_path / "x", "--quiet")
    assert proc.returncode == 1 and "kind 'conditioner'" in proc.stderr and str(cond) in proc.stderr
    plain = tmp_path / "plain"
    plain.mkdir()
    proc = dt_cli("build-conditioner", "--src", plain, "--out", tmp_path / "x", "--quiet")
    assert proc.returncode == 1 and f"{plain}/index.json not found" in proc.stderr
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=f"{taken} exists.*not a conditioner-shard folder"):
        build_conditioner(dt_tiny_shards, taken, progress=False)
    assert (taken / "notes.txt").read_text() == "mine"
    with pytest.raises(DataToolsError, match="--per-event"):
        build_conditioner(dt_tiny_shards, tmp_path / "y", per_event=0, progress=False)


def test_a_sample_without_frames_is_named(dt_shards_copy, tmp_path):
    path = dt_shards_copy / "shard-000001.tar"
    with tarfile.open(path) as tar:
        samples = {}
        for m in tar:
            key, _, ext = m.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    victim = sorted(samples)[2]
    del samples[victim]["frames.npy"]
    with open(path, "wb") as fh:
        writer = DeterministicTarWriter(fh)
        for key, members in samples.items():
            writer.write_sample(key, members)
        writer.close()
    out = tmp_path / "c"
    with pytest.raises(DataToolsError, match=f"{path}: sample {victim} has no frames.npy member"):
        build_conditioner(dt_shards_copy, out, per_event=2, samples_per_shard=8, progress=False)
    assert not out.exists() and not any(p.name.startswith(".c") for p in tmp_path.iterdir())


def _close(got: np.ndarray, want: np.ndarray) -> bool:
    """Equal up to one float16 step (or 1e-5 near zero), as in test_dt_textstates."""
    want16 = want.astype(np.float16)
    gap = np.abs(got.astype(np.float32) - want16.astype(np.float32))
    return got.shape == want.shape and bool((gap <= np.spacing(np.abs(want16)).astype(np.float32) + 1e-5).all())


@pytest.mark.usefixtures("dt_one_thread")
def test_embed_captions_adds_the_target_caption_states(cond, dt_tiny_shards, dt_tiny_wan, tmp_path):
    from transformers import AutoTokenizer, UMT5EncoderModel

    folder = Path(shutil.copytree(cond, tmp_path / "c"))
    embed_captions(folder, dt_tiny_wan / "text_encoder", batch_size=7, progress=False)
    tok = AutoTokenizer.from_pretrained(dt_tiny_wan / "tokenizer")
    enc = UMT5EncoderModel.from_pretrained(dt_tiny_wan / "text_encoder").eval()
    cache: dict[str, np.ndarray] = {}

    def direct(text: str) -> np.ndarray:
        if text not in cache:
            with torch.no_grad():
                cache[text] = enc(input_ids=tok(text, return_tensors="pt")["input_ids"]).last_hidden_state[0].numpy()
        return cache[text]

    got = _samples(folder)
    assert set(got) == set(_samples(cond))
    for key, s in got.items():
        states = _npy(s["members"]["caption_states.npy"])
        assert states.dtype == np.float16 and _close(states, direct(s["meta"]["caption"])), key
    index = json.loads((folder / "index.json").read_text())
    assert index["kind"] == "conditioner" and index["text_states"]["complete"]
    verify_shards(folder, loader_index(folder), "sha256")
    assert not inspect_shards(folder)["problems"]
    # build-conditioner again on the same input keeps the embedded shards
    assert build_conditioner(dt_tiny_shards, folder, per_event=K, samples_per_shard=8, progress=False)["reused"]

