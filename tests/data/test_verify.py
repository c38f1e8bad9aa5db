"""Shards checked against index.json at start; a broken shard or sample costs one entry per run."""

import io
import json
import logging
import tarfile

import numpy as np
import pytest

from wallwm_pretrain.config import CaptionDropConfig, DataConfig
from wallwm_pretrain.data import BadInputError, EventLoader, SampleError, ShardError


def cfg(folder, **kw):
    base = dict(shards=str(folder), batch_size=1, shuffle_buffer=0, max_frames=16, seed=3, length_buckets=[],
                caption_drop=CaptionDropConfig(rho_min=0.0, rho_max=0.0, l_min=1, l_max=2))
    base.update(kw)
    return DataConfig(**base)


def cut_inside_a_member(path):
    """Cut the tar in the middle of its last sample's frames member."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 5])


def npy(x):
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def test_every_mismatch_is_reported_before_the_first_batch(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "s", [9] * 12, per_shard=4)
    cut_inside_a_member(folder / "shard-000000.tar")
    with open(folder / "shard-000002.tar", "ab") as fh:
        fh.write(b"\0" * 512)  # one extra block: the size differs, the samples do not
    index = json.loads((folder / "index.json").read_text())
    with pytest.raises(ShardError) as err:
        EventLoader(cfg(folder))
    text = str(err.value)
    first = index["shards"][0]
    found = (folder / "shard-000000.tar").stat().st_size
    assert f"shard-000000.tar: size expected {first['bytes']} bytes, found {found}" in text
    assert f"shard-000002.tar: size expected {index['shards'][2]['bytes']} bytes, " in text
    assert "shard-000001.tar" not in text and "3 mismatch(es)" in text


def test_sample_count_is_checked_when_the_index_records_no_size(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "s", [9] * 8, per_shard=4)
    index = json.loads((folder / "index.json").read_text())
    for shard in index["shards"]:
        del shard["bytes"]
    index["shards"][1]["samples"] = 5
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardError, match=r"shard-000001\.tar: samples expected 5, found 4"):
        EventLoader(cfg(folder))


def test_sha256_finds_a_flipped_byte_that_size_cannot(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "s", [9] * 8, per_shard=4)
    path = folder / "shard-000001.tar"
    with tarfile.open(path) as tar:
        frames = next(m for m in tar if m.name.endswith(".frames.npy"))
    data = bytearray(path.read_bytes())
    data[frames.offset_data + frames.size // 2] ^= 0x01  # a pixel: same size, same members
    path.write_bytes(bytes(data))
    EventLoader(cfg(folder))  # data.verify=size passes
    with pytest.raises(ShardError, match=r"shard-000001\.tar: sha256 expected [0-9a-f]{64}, found [0-9a-f]{64}"):
        EventLoader(cfg(folder, verify="sha256"))


def test_an_unreadable_shard_is_one_error_naming_it(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "s", [9] * 8, per_shard=4)
    cut_inside_a_member(folder / "shard-000001.tar")
    loader = EventLoader(cfg(folder, verify="none"))
    with pytest.raises(ShardError) as err:
        for _ in range(8):
            next(loader)
    text = str(err.value)
    assert text.count("shard-000001.tar") == 1 and "\n" not in text
    assert "past the end" in text and "(" not in text.split("past the end")[0].split(":")[0]


def test_an_unreadable_shard_is_quarantined_once_for_the_run(tmp_path, shard_writer, caplog):
    folder = shard_writer(tmp_path / "s", [9] * 12, per_shard=4)
    cut_inside_a_member(folder / "shard-000001.tar")
    loader = EventLoader(cfg(folder, verify="none", max_bad_samples=1))
    keys = {0: [], 1: [], 2: [], 3: []}
    with caplog.at_level(logging.WARNING, logger="wallwm_pretrain.data"):
        while loader.epoch < 4:
            keys[loader.epoch] += next(loader).keys
    assert loader.bad_samples == 1 and list(loader.quarantined) == ["shard-000001.tar"]
    warnings = [r for r in caplog.records if "shard-000001.tar" in r.getMessage()]
    assert len(warnings) == 1
    # the samples before the damage are read in the epoch that found it, never again after
    assert len(keys[0]) > 8 and len(keys[1]) == len(keys[2]) == 8


def test_a_bad_sample_is_counted_once_not_once_per_epoch(tmp_path, shard_writer, caplog):
    bad = lambda s: s.update({"actions.npy": npy(np.full((9, 4), np.nan, np.float32))})  # noqa: E731
    folder = shard_writer(tmp_path / "s", [9] * 8, per_shard=4, corrupt={5: bad})
    loader = EventLoader(cfg(folder, max_bad_samples=1))
    with caplog.at_level(logging.WARNING, logger="wallwm_pretrain.data"):
        while loader.epoch < 3:
            next(loader)
    assert loader.bad_samples == 1
    assert len([r for r in caplog.records if "ep000001_L1_002" in r.getMessage()]) == 1


def test_a_resumed_run_does_not_count_known_problems_again(tmp_path, shard_writer, caplog):
    bad = lambda s: s.update({"state.npy": npy(np.zeros(3, np.float64))})  # noqa: E731
    folder = shard_writer(tmp_path / "s", [9] * 12, per_shard=4, corrupt={2: bad})
    cut_inside_a_member(folder / "shard-000002.tar")
    first = EventLoader(cfg(folder, verify="none", max_bad_samples=2))
    while first.epoch < 1:
        next(first)
    state = first.state_dict()
    assert state["bad_samples"] == 2 and state["quarantined"] == {"shard-000002.tar": 0}
    straight = [next(first).keys for _ in range(10)]
    resumed = EventLoader(cfg(folder, verify="none", max_bad_samples=2))
    resumed.load_state_dict(json.loads(json.dumps(state)))  # as stored in a checkpoint
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wallwm_pretrain.data"):
        again = [next(resumed).keys for _ in range(10)]
    assert again == straight and resumed.bad_samples == 2 and not caplog.records


def test_without_a_budget_a_bad_sample_stops_naming_shard_sample_and_key(tmp_path, shard_writer):
    bad = lambda s: s.update({"frames.npy": npy(np.zeros((9, 2, 32, 32, 3), np.uint8))[:-7]})  # noqa: E731
    folder = shard_writer(tmp_path / "s", [9] * 4, corrupt={1: bad})
    loader = EventLoader(cfg(folder))
    with pytest.raises(SampleError) as err:
        for _ in range(4):
            next(loader)
    text = str(err.value)
    assert text.startswith(f"{folder / 'shard-000000.tar'}: sample ep000000_L1_001: key 'frames.npy': ")
    assert "55296 bytes, the payload has 55289" in text and "\n" not in text


def test_budget_exceeded_names_the_count(tmp_path, shard_writer):
    bad = lambda s: s.pop("json")  # noqa: E731
    folder = shard_writer(tmp_path / "s", [9] * 8, per_shard=4, corrupt={1: bad, 6: bad})
    loader = EventLoader(cfg(folder, max_bad_samples=1))
    with pytest.raises(BadInputError, match=r"2 problems skipped so far \(2 bad samples, 0 unreadable shards\)"):
        for _ in range(8):
            next(loader)


def test_problems_of_several_ranks_merge_for_another_layout():
    from wallwm_pretrain.data.badinput import merge_problems

    ranks = [{"epoch": 2, "bad_sample_ids": ["a.tar#k1"], "quarantined": {"b.tar": 1}},
             {"epoch": 2, "bad_sample_ids": ["a.tar#k1", "c.tar#k2"], "quarantined": {"b.tar": 0, "d.tar": 2}}]
    assert merge_problems(ranks) == {"bad_samples": 4, "bad_sample_ids": ["a.tar#k1", "c.tar#k2"],
                                     "quarantined": {"b.tar": 0, "d.tar": 2}}
