"""The training loader in conditioner mode over real build-conditioner output (clustered, with
text states): ConditionerBatch fields against the samples on disk, the caption never dropped,
resume, cluster balance and bad-sample skipping as in event mode, and mode / shard-kind
mismatches stopping at start naming the folder."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from data_tools.cluster_run import run_clustering
from data_tools.conditioner import build_conditioner
from data_tools.shards import build_shards
from data_tools.tario import DeterministicTarWriter
from data_tools.textstates import embed_captions
from wallwm_pretrain.batch import ConditionerBatch
from wallwm_pretrain.config import BalanceConfig, CaptionDropConfig, ConfigError, DataConfig
from wallwm_pretrain.data import SampleError
from wallwm_pretrain.data.balance import ClusterBalance
from wallwm_pretrain.data.conditioner import ConditionerSample
from wallwm_pretrain.data.cookers import Normalizer
from wallwm_pretrain.data.loader import EventLoader, read_cooked

pytestmark = pytest.mark.usefixtures("dt_one_thread")


@pytest.fixture(scope="module")
def folders(dt_tiny, dt_tiny_wan, tmp_path_factory) -> dict[str, Path]:
    """Clustered event shards of the tiny dataset, and their conditioner shards with text states."""
    base = tmp_path_factory.mktemp("cload")
    run_clustering(dt_tiny, base / "clusters.json", vl_k=3, action_k=2, seed=0)
    events = base / "events"
    build_shards(dt_tiny, events, level="L1", seed=0, image_size=32, samples_per_shard=8,
                 clusters=base / "clusters.json", progress=False)
    cond = base / "cond"
    build_conditioner(events, cond, per_event=3, samples_per_shard=8, progress=False)
    embed_captions(cond, dt_tiny_wan / "text_encoder", progress=False)
    return {"events": events, "cond": cond}


def _disk(folder: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for path in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                data = tar.extractfile(m).read()
                out.setdefault(key, {})[ext] = json.loads(data) if ext == "json" else np.load(io.BytesIO(data))
    return out


def _cfg(folder: Path, **kw) -> DataConfig:
    base = dict(shards=str(folder), mode="conditioner", batch_size=4, shuffle_buffer=8, seed=1,
                caption_drop=CaptionDropConfig(rho_min=0.0, rho_max=0.0, l_min=1, l_max=2))
    return DataConfig(**{**base, **kw})


def test_batches_carry_the_samples(folders):
    cond = folders["cond"]
    disk = _disk(cond)
    index = json.loads((cond / "index.json").read_text())
    mean, std = (np.asarray(index["stats"]["state"][k], np.float32) for k in ("mean", "std"))
    # caption drop certain for every length: the caption is a target and must stay whole
    drop = CaptionDropConfig(rho_min=1.0, rho_max=1.0, l_min=1, l_max=2)
    loader = EventLoader(_cfg(cond, caption_drop=drop, length_buckets=[2, 4]))
    empty = np.load(cond / "empty_text_states.npy")
    seen = 0
    for _ in range(3):
        batch = next(loader)
        assert isinstance(batch, ConditionerBatch) and batch.size == 4
        v, h, w, c = disk[batch.keys[0]]["observation.npy"].shape
        assert batch.observation.shape == (4, v, h, w, c) and batch.observation.dtype == torch.uint8
        assert batch.state.dtype == torch.float32 and batch.lengths.tolist() == [1, 1, 1, 1]
        assert batch.text_valid.dtype == torch.bool and batch.text_valid.shape == batch.text_states.shape[:2]
        for i, key in enumerate(batch.keys):
            d = disk[key]
            meta = d["json"]
            np.testing.assert_array_equal(batch.observation[i].numpy(), d["observation.npy"])
            np.testing.assert_allclose(batch.state[i].numpy(), (d["state.npy"] - mean) / np.maximum(std, 1e-6), rtol=1e-6)
            assert batch.remaining[i].item() == meta["remaining"] >= 1
            assert (batch.task[i], batch.done[i], batch.caption[i]) == (meta["task"], meta["done_captions"], meta["caption"])
            n = int(batch.text_valid[i].sum())
            assert batch.text_valid[i, :n].all() and batch.text_states[i, n:].abs().sum() == 0
            np.testing.assert_array_equal(batch.text_states[i, :n].numpy(), d["caption_states.npy"])
            assert n != len(empty) or not np.array_equal(d["caption_states.npy"], empty)
            seen += 1
        real = int(batch.text_valid.sum())
        assert batch.padding_efficiency() == pytest.approx(real / batch.text_valid.numel())
    assert seen == 12
    part = batch.rows(1, 3)
    assert part.size == 2 and part.keys == batch.keys[1:3] and part.caption == batch.caption[1:3]
    assert part.done == batch.done[1:3] and part.text_states.shape[0] == 2
    moved = batch.to("cpu")
    assert torch.equal(moved.observation, batch.observation) and moved.caption == batch.caption


def test_read_cooked_gives_every_sample(folders):
    cond = folders["cond"]
    cooked = list(read_cooked(cond, _cfg(cond), 64, Normalizer()))
    assert all(isinstance(s, ConditionerSample) for s in cooked)
    assert sorted(s.key for s in cooked) == sorted(_disk(cond))
    with pytest.raises(ConfigError, match="data.mode=event"):
        list(read_cooked(cond, _cfg(cond, mode="event"), 64, Normalizer()))


def test_restored_loader_yields_the_same_batches(folders):
    cfg = _cfg(folders["cond"], batch_size=3)
    straight = EventLoader(cfg)
    per_epoch = json.loads((folders["cond"] / "index.json").read_text())["total_samples"] // 3
    ref = [next(straight) for _ in range(per_epoch + 3)]  # crosses an epoch boundary
    first = EventLoader(cfg)
    for _ in range(per_epoch - 1):
        next(first)
    resumed = EventLoader(cfg)
    resumed.load_state_dict(first.state_dict())
    for want in ref[per_epoch - 1:]:
        got = next(resumed)
        assert got.keys == want.keys
        assert torch.equal(got.observation, want.observation) and torch.equal(got.state, want.state)
        assert torch.equal(got.text_states, want.text_states) and got.done == want.done
    assert resumed.epoch == 1


def test_cluster_balance_thins_as_in_event_mode(folders):
    cond = folders["cond"]
    index = json.loads((cond / "index.json").read_text())
    assert len(index["vl_cluster_counts"]) == 3 and len(index["action_cluster_counts"]) == 2
    balance = BalanceConfig(alpha_vl=0.0, alpha_action=0.0)
    cfg = _cfg(cond, batch_size=1, shuffle_buffer=0, balance=balance)
    rule = ClusterBalance(index, balance, cfg.seed)
    disk = _disk(cond)
    want = {k for k, d in disk.items() if rule.keep(d["json"], k, 0)}
    assert 0 < len(want) < len(disk)
    loader = EventLoader(cfg)
    got = [next(loader).keys[0] for _ in range(len(want))]
    assert sorted(got) == sorted(want) and loader.epoch == 0


def _rewrite(path: Path, key: str, fn) -> None:
    with tarfile.open(path) as tar:
        samples: dict[str, dict[str, bytes]] = {}
        for m in tar:
            k, _, ext = m.name.partition(".")
            samples.setdefault(k, {})[ext] = tar.extractfile(m).read()
    fn(samples[key])
    with open(path, "wb") as fh:
        writer = DeterministicTarWriter(fh)
        for k, members in samples.items():
            writer.write_sample(k, members)
        writer.close()


def test_a_bad_sample_is_named_or_skipped_within_the_budget(folders, tmp_path):
    cond = Path(shutil.copytree(folders["cond"], tmp_path / "c"))
    shard = cond / "shard-000000.tar"
    with tarfile.open(shard) as tar:
        victim = tar.getmembers()[0].name.partition(".")[0]
    _rewrite(shard, victim, lambda m: m.pop("observation.npy"))
    total = json.loads((cond / "index.json").read_text())["total_samples"]
    with pytest.raises(SampleError, match=f"shard-000000.tar: sample {victim}: missing key 'observation.npy'"):
        strict = EventLoader(_cfg(cond, verify="none", batch_size=1))
        for _ in range(total):
            next(strict)
    loader = EventLoader(_cfg(cond, verify="none", batch_size=1, max_bad_samples=1))
    keys = [next(loader).keys[0] for _ in range(total - 1)]
    assert victim not in keys and len(set(keys)) == total - 1
    assert loader.bad_samples == 1 and loader.state_dict()["bad_sample_ids"] == [f"shard-000000.tar#{victim}"]


def test_mode_and_shard_kind_must_agree(folders):
    cond, events = folders["cond"], folders["events"]
    for mode in ("event", "chunk"):
        with pytest.raises(ConfigError, match=f"data.mode={mode} but {cond} holds conditioner shards.*data.mode=conditioner"):
            EventLoader(_cfg(cond, mode=mode))
    with pytest.raises(ConfigError, match=f"data.mode=conditioner but {events} holds event shards.*build-conditioner --src {events}"):
        EventLoader(_cfg(events))
    with pytest.raises(ConfigError, match="data.mode must be"):
        _cfg(cond, mode="conditioners")


def test_worker_processes_cover_the_epoch_once(folders):
    cond = folders["cond"]
    total = json.loads((cond / "index.json").read_text())["total_samples"]
    loader = EventLoader(_cfg(cond, num_workers=2, batch_size=2, shuffle_buffer=0))
    keys = []
    while loader.epoch == 0:
        batch = next(loader)
        assert isinstance(batch, ConditionerBatch)
        if loader.epoch == 0:
            keys += batch.keys
    # each worker drops its last odd sample at most
    assert len(keys) == len(set(keys)) and total - 2 <= len(keys) <= total
