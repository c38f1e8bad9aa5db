"""The training loader over real WebDataset tars: batches, splits, determinism, resume, errors."""

import io
from collections import Counter

import numpy as np
import pytest
import torch

from wallwm_pretrain.config import CaptionDropConfig, DataConfig
from wallwm_pretrain.data import EventLoader, SampleError, ShardError
from wallwm_pretrain.captions import decode_caption
from wallwm_pretrain.data.captions import drop_probability

LENGTHS = [5, 9, 12, 16, 7, 20, 11, 8, 14, 6, 10, 13, 15, 9, 17, 12]


def cfg(folder, **kw):
    base = dict(shards=str(folder), batch_size=4, shuffle_buffer=8, max_frames=16, seed=3,
                caption_drop=CaptionDropConfig(rho_min=0.0, rho_max=0.0, l_min=1, l_max=2))
    base.update(kw)
    return DataConfig(**base)


def take(loader, n):
    return [next(loader) for _ in range(n)]


def test_batches_are_padded_with_lengths(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "s", LENGTHS)
    batch = next(EventLoader(cfg(folder)))
    b, t = batch.actions.shape[:2]
    assert b == 4 and t % 4 == 0 and t >= int(batch.lengths.max())
    assert batch.frames.shape == (4, t, 2, 32, 32, 3) and batch.frames.dtype == torch.uint8
    for i, n in enumerate(batch.lengths.tolist()):
        assert n <= 16  # cropped to max_frames
        assert torch.all(batch.actions[i, n:] == 0) and torch.all(batch.frames[i, n:] == 0)
        assert batch.actions[i, :n].abs().sum() > 0
    assert batch.caption[:, 0].eq(1).all()  # begin token
    assert decode_caption(batch.caption[0].numpy()).startswith("reach for cube")


def test_same_seed_same_batches_other_seed_differs(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "s", LENGTHS)
    keys = lambda c: [b.keys for b in take(EventLoader(c), 6)]  # noqa: E731
    assert keys(cfg(folder)) == keys(cfg(folder))
    assert keys(cfg(folder)) != keys(cfg(folder, seed=4))


def test_epoch_sees_every_sample_once(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "s", LENGTHS)
    loader = EventLoader(cfg(folder))
    seen = [k for b in take(loader, len(LENGTHS) // 4) for k in b.keys]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == len(LENGTHS)
    assert loader.epoch == 0
    next(loader)
    assert loader.epoch == 1 and loader.batches_in_epoch == 1


def test_data_parallel_ranks_split_disjointly(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "s", LENGTHS)
    per_rank = []
    for rank in range(2):
        loader = EventLoader(cfg(folder, batch_size=2), dp_rank=rank, dp_size=2)
        per_rank.append({k for b in take(loader, 4) for k in b.keys})
    assert not per_rank[0] & per_rank[1]
    assert len(per_rank[0] | per_rank[1]) == len(LENGTHS)


def test_workers_cover_the_epoch(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "s", LENGTHS)
    loader = EventLoader(cfg(folder, num_workers=2, batch_size=2, shuffle_buffer=0))
    seen = Counter(k for b in take(loader, 8) for k in b.keys)
    assert len(seen) == len(LENGTHS) and set(seen.values()) == {1}


def test_state_dict_restores_the_position(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "s", LENGTHS)
    straight = EventLoader(cfg(folder))
    ref = take(straight, 7)  # crosses an epoch boundary (4 batches per epoch)
    first = EventLoader(cfg(folder))
    take(first, 3)
    state = first.state_dict()
    resumed = EventLoader(cfg(folder))
    resumed.load_state_dict(state)
    for a, b in zip(ref[3:], take(resumed, 4)):
        assert a.keys == b.keys
        assert torch.equal(a.actions, b.actions) and torch.equal(a.caption, b.caption)


def test_chunk_mode_windows_use_the_task(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "s", [20, 8, 12, 16])
    loader = EventLoader(cfg(folder, batch_size=2, shuffle_buffer=0, mode="chunk", chunk_horizon=8))
    batches = take(loader, 4)  # 20->3 windows, 8->1, 12->2, 16->2: 8 windows
    lengths = sorted(n for b in batches for n in b.lengths.tolist())
    assert lengths == [4, 4, 8, 8, 8, 8, 8, 8]
    assert all(decode_caption(c.numpy()).startswith("task") for b in batches for c in b.caption)


def test_length_aware_caption_drop():
    ramp = CaptionDropConfig(rho_min=0.1, rho_max=0.9, l_min=129, l_max=220)
    assert drop_probability(50, ramp) == 0.1 and drop_probability(400, ramp) == 0.9
    assert drop_probability((129 + 220) / 2, ramp) == pytest.approx(0.5)
    assert drop_probability(150, ramp) < drop_probability(180, ramp)


def test_caption_drop_frequency_follows_length(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "s", [4] * 24 + [16] * 24, per_shard=8)
    ramp = CaptionDropConfig(rho_min=0.0, rho_max=1.0, l_min=5, l_max=15)
    loader = EventLoader(cfg(folder, caption_drop=ramp, batch_size=8))
    dropped = Counter()
    for batch in take(loader, 6):
        for n, cap in zip(batch.lengths.tolist(), batch.caption):
            dropped[(n, bool((cap[1:] == 0).all()))] += 1
    assert dropped[(4, True)] == 0 and dropped[(16, False)] == 0  # p = 0 and p = 1 exactly


def _npy(x):
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda s: s.pop("state.npy"), "missing key 'state.npy'"),
        (lambda s: s.update({"actions.npy": _npy(np.full((9, 4), np.nan, np.float32))}), "NaN or inf"),
        (lambda s: s.update({"actions.npy": _npy(np.zeros((9, 4), np.float64))}), "'actions.npy' must be float32"),
        (lambda s: s.update({"actions.npy": _npy(np.zeros((3, 4), np.float32))}), "lengths differ"),
    ],
)
def test_bad_samples_name_shard_sample_and_key(tmp_path, shard_writer, corrupt, message):
    folder = shard_writer(tmp_path / "s", [9] * 4, corrupt={2: corrupt})
    with pytest.raises(SampleError, match=message) as err:
        take(EventLoader(cfg(folder, shuffle_buffer=0, batch_size=1)), 4)
    assert "shard-000000.tar" in str(err.value) and "ep000000_L1_002" in str(err.value)


def test_missing_index_and_too_few_shards(tmp_path, shard_writer):
    with pytest.raises(ShardError, match="index.json not found"):
        EventLoader(cfg(tmp_path))
    folder = shard_writer(tmp_path / "s", [9] * 4)
    with pytest.raises(ShardError, match="1 shards cannot feed"):
        EventLoader(cfg(folder), dp_rank=0, dp_size=2)


def _truncate(path, fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def test_bad_input_within_budget_is_skipped_counted_and_resumable(tmp_path, shard_writer):
    bad = lambda s: s.update({"actions.npy": _npy(np.full((9, 4), np.inf, np.float32))})  # noqa: E731
    folder = shard_writer(tmp_path / "s", [9] * 12, per_shard=4, corrupt={1: bad, 6: bad})
    _truncate(folder / "shard-000002.tar", 0.3)  # partial samples and the tar error: more skips
    loader = EventLoader(cfg(folder, shuffle_buffer=0, batch_size=1, max_bad_samples=20, verify="none"))
    keys = []
    while loader.epoch == 0:
        keys += next(loader).keys
    keys.pop()  # the first batch of epoch 1
    assert "ep000000_L1_001" not in keys and "ep000002_L1_000" not in keys  # samples 1 and 6
    assert 1 <= len(keys) <= 12 - 2 - 1 and len(set(keys)) == len(keys)
    assert loader.bad_samples == 3  # two bad samples + the unreadable tar, each once
    assert loader.state_dict()["bad_samples"] == loader.bad_samples
    with pytest.raises(Exception, match="max_bad_samples=2"):
        take(EventLoader(cfg(folder, shuffle_buffer=0, batch_size=1, max_bad_samples=2, verify="none")), 12)
