"""Shards read from a real S3 server (moto's) and a real HTTP server on loopback, compared
with the same shards read from the local folder: the same samples in the same order, the
same resume, and the same quarantine when a shard vanishes or its connection breaks."""

from __future__ import annotations

import logging
import shutil

import pytest

from wallwm_pretrain.config import CaptionDropConfig, DataConfig, load_config
from wallwm_pretrain.data import EventLoader, ShardError
from wallwm_pretrain.data.source import check_location, file_url

from servers import BUCKET

LENGTHS = [5, 9, 12, 16, 7, 20, 11, 8, 14, 6, 10, 13, 15, 9, 17, 12]
TINY = [
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.ffn_hidden_size=64",
    "model.text_layers=1", "model.image_size=32", "model.patch_size=16", "data.batch_size=4",
    "data.max_frames=16", "data.shuffle_buffer=8", "train.log_every=1", "optim.warmup_steps=2",
    "train.device=cpu",
]


def train(tmp_path, shards, name, *extra):
    from wallwm_pretrain.parallel import shutdown_parallel
    from wallwm_pretrain.trainer import Trainer

    cfg = load_config(None, TINY + [f"data.shards={shards}", f"train.runs_root={tmp_path / 'runs'}",
                                    f"train.run_name={name}", *extra])
    trainer = Trainer(cfg)
    try:
        summary = trainer.train()
    finally:
        shutdown_parallel()
    return [v for _, v in trainer.history["loss"]], summary


def data_cfg(shards, **kw):
    base = dict(shards=str(shards), batch_size=4, shuffle_buffer=8, max_frames=16, seed=3,
                caption_drop=CaptionDropConfig(rho_min=0.0, rho_max=0.0, l_min=1, l_max=2))
    base.update(kw)
    return DataConfig(**base)


def keys_of(loader, epochs):
    out = []
    while loader.epoch < epochs:
        out.append(next(loader).keys)
    return out


def test_training_from_s3_equals_training_from_the_folder(tmp_path, shard_writer, s3):
    """Sample for sample: the same losses at every step, straight and across a resume, with and
    without the node-local cache (whose size bound holds)."""
    folder = shard_writer(tmp_path / "shards", LENGTHS, clusters=[(i % 3, i % 2) for i in range(len(LENGTHS))])
    url = s3.upload(folder, "smoke")
    balance = ["data.balance.alpha_vl=0.0", "data.balance.alpha_action=0.5"]
    local, _ = train(tmp_path, folder, "local", "train.steps=6", "train.save_every=0", *balance)
    remote, _ = train(tmp_path, url, "s3", "train.steps=6", "train.save_every=0", *balance)
    assert remote == local and len(local) == 6
    # stop at step 3, resume from the checkpoint: still the same six losses
    cache = tmp_path / "cache"
    bound = ["data.cache_dir=" + str(cache), "data.cache_max_gb=" + str(2.5 * max(
        p.stat().st_size for p in folder.glob("*.tar")) / 1e9)]
    train(tmp_path, url, "split", "train.steps=6", "train.stop_after=3", "train.save_every=0", *balance, *bound)
    resumed, summary = train(tmp_path, url, "split", "train.steps=6", "train.resume=auto", *balance, *bound)
    assert summary.start_step == 3 and resumed == local  # the history holds steps 1..6
    cached = list(cache.iterdir())
    assert 1 <= len(cached) <= 2  # four shards read, at most two fit the bound
    assert sum(p.stat().st_size for p in cached) <= 2.5 * max(p.stat().st_size for p in folder.glob("*.tar"))


def test_s3_shards_through_loader_workers_equal_the_folder(tmp_path, shard_writer, s3):
    """Two DataLoader worker processes per rank, two data-parallel ranks: each reads its part
    of the bucket as it reads its part of the folder."""
    folder = shard_writer(tmp_path / "shards", LENGTHS, per_shard=2)
    url = s3.upload(folder, "workers")
    for rank in range(2):
        local = EventLoader(data_cfg(folder, num_workers=2, batch_size=2), dp_rank=rank, dp_size=2)
        remote = EventLoader(data_cfg(url, num_workers=2, batch_size=2), dp_rank=rank, dp_size=2)
        assert keys_of(remote, 1) == keys_of(local, 1)


def test_a_shard_that_vanishes_from_the_bucket_is_quarantined_as_a_missing_file(tmp_path, shard_writer, s3, caplog):
    folder = shard_writer(tmp_path / "shards", [9] * 12, per_shard=4)
    url = s3.upload(folder, "vanish")
    local = EventLoader(data_cfg(folder, max_bad_samples=1))
    remote = EventLoader(data_cfg(url, max_bad_samples=1))
    strict = EventLoader(data_cfg(url))
    # all start (index read, shards verified), then the shard goes away
    (folder / "shard-000001.tar").unlink()
    s3.client().delete_object(Bucket=BUCKET, Key="vanish/shard-000001.tar")
    with caplog.at_level(logging.WARNING, logger="wallwm_pretrain.data"):
        remote_keys = keys_of(remote, 3)
    assert remote_keys == keys_of(local, 3)
    assert remote.quarantined == local.quarantined == {"shard-000001.tar": 0}
    assert remote.bad_samples == 1
    gone = f"{url}/shard-000001.tar"
    warned = [r.getMessage() for r in caplog.records if "quarantining" in r.getMessage() and "s3://" in r.getMessage()]
    assert len(warned) == 1 and f"{gone}: cannot open (not found)" in warned[0]
    # without a budget the run stops, naming the URL; a loader started now names it at start
    with pytest.raises(ShardError, match=f"^{gone}: cannot open"):
        keys_of(strict, 1)
    with pytest.raises(ShardError, match=r"^s3://wallwm-shards/vanish: shards listed in index.json are missing: \['shard-000001.tar'\]"):
        EventLoader(data_cfg(url))


def test_http_shards_with_a_reset_connection_are_retried_to_the_same_samples(
        tmp_path, shard_writer, http, http_root, caplog):
    folder = shard_writer(tmp_path / "shards", LENGTHS)
    shutil.copytree(folder, http_root / "smoke")
    url = f"{http.url}/smoke"
    shard = "/smoke/shard-000002.tar"
    http.faults.at[shard] = ((http_root / "smoke" / "shard-000002.tar").stat().st_size // 2, 2)  # twice
    with caplog.at_level(logging.WARNING, logger="wallwm_pretrain.data"):
        remote = keys_of(EventLoader(data_cfg(url)), 2)
    assert remote == keys_of(EventLoader(data_cfg(folder)), 2)
    assert len(http.faults.broken) == 2  # the server did break the connection, twice
    retried = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retried) == 2 and all(f"{url}/shard-000002.tar" in m for m in retried)


def test_a_connection_that_keeps_breaking_is_quarantined_as_a_tar_cut_there(
        tmp_path, shard_writer, http, http_root, caplog):
    """The samples before the break are read in that epoch, as from a local tar cut at that byte;
    then the shard is quarantined for the rest of the run; and so with the node-local cache."""
    folder = shard_writer(tmp_path / "shards", [9] * 12, per_shard=4)
    shutil.copytree(folder, http_root / "flaky")
    name = "shard-000001.tar"
    cut = (folder / name).stat().st_size * 3 // 5
    http.faults.at[f"/flaky/{name}"] = (cut, -1)  # every response carrying that byte
    damaged = tmp_path / "cut"
    shutil.copytree(folder, damaged)
    with open(damaged / name, "r+b") as fh:
        fh.truncate(cut)
    local = EventLoader(data_cfg(damaged, verify="none", max_bad_samples=1))
    expected = keys_of(local, 3)
    for extra in ({}, {"cache_dir": str(tmp_path / "cache")}):
        caplog.clear()
        remote = EventLoader(data_cfg(f"{http.url}/flaky", max_bad_samples=1, **extra))
        with caplog.at_level(logging.WARNING, logger="wallwm_pretrain.data"):
            assert keys_of(remote, 3) == expected
        assert remote.quarantined == local.quarantined == {name: 0}
        warned = [r.getMessage() for r in caplog.records if "quarantining" in r.getMessage()]
        assert len(warned) == 1 and f"{http.url}/flaky/{name}: read of bytes" in warned[0]
    assert len(expected[0]) * 4 > 8  # some samples of the damaged shard were read in epoch 0


def test_pipe_shards_equal_the_folder(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "shards", LENGTHS)
    url = f"pipe:cat {folder}/{{name}}"
    assert keys_of(EventLoader(data_cfg(url, verify="sha256")), 2) == keys_of(EventLoader(data_cfg(folder)), 2)
    with pytest.raises(Exception, match="data.verify=size cannot check pipe:"):
        EventLoader(data_cfg(url))
    (folder / "shard-000001.tar").unlink()
    loader = EventLoader(data_cfg(url, verify="none", max_bad_samples=1))
    keys_of(loader, 2)
    assert loader.quarantined == {"shard-000001.tar": 0}


def test_locations_that_would_leak_or_cannot_name_files_are_refused():
    for bad, says in [("s3://key:secret@bucket/p", "credentials in a shard URL are refused"),
                      ("https://u:p@host/p", "credentials in a shard URL are refused"),
                      ("https://host/p?X-Amz-Signature=abc", "no query string"),
                      ("pipe:cat /data/shard.tar", "{name}")]:
        with pytest.raises(ShardError, match=None) as err:
            check_location(bad)
        assert says in str(err.value) and "secret" not in str(err.value) and "abc" not in str(err.value)
    assert file_url("s3://b/p/", "index.json") == "s3://b/p/index.json"
    assert file_url("pipe:aws s3 cp s3://b/p/{name} -", "x.tar") == "pipe:aws s3 cp s3://b/p/x.tar -"


def test_data_tools_inspect_reads_a_bucket_as_the_folder(tmp_path, shard_writer, s3):
    from data_tools.inspection import inspect_shards

    folder = shard_writer(tmp_path / "shards", LENGTHS, clusters=[(i % 3, i % 2) for i in range(len(LENGTHS))])
    url = s3.upload(folder, "inspect")
    local, remote = inspect_shards(folder), inspect_shards(url)
    assert remote.pop("shards") == url and local.pop("shards") == str(folder)
    assert remote == local and remote["total_samples"] == len(LENGTHS)  # problems included: the same
