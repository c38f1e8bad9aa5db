"""encode-latents: the latents are what a direct call of the diffusers Wan VAE gives, the shards
stay verifiable, a re-run does nothing, an interrupted run resumes, bad input names the file."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from data_tools.errors import DataToolsError
from data_tools.latents import encode_latents
from data_tools.tario import DeterministicTarWriter
from wallwm_pretrain.data.index import read_index as loader_index
from wallwm_pretrain.data.verify import verify_shards


pytestmark = pytest.mark.usefixtures("dt_one_thread")


def _samples(tar_path: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path) as tar:
        for m in tar:
            key, _, ext = m.name.partition(".")
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def _direct(vae, frames: np.ndarray) -> np.ndarray:
    """The diffusers VAE called by hand: [N, V, Z, h, w] float32, normalised."""
    # by the rule's definition (the largest 1 + 4k <= T, found by search), not by its formula
    keep = max(n for n in range(1, len(frames) + 1) if n % 4 == 1)
    x = torch.from_numpy(frames[:keep]).permute(1, 4, 0, 2, 3).float() / 127.5 - 1  # [V, 3, T', H, W]
    with torch.no_grad():
        mu = vae.encode(x).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return ((mu - mean) / std).permute(2, 0, 1, 3, 4).numpy()


def test_latents_equal_a_direct_vae_call(dt_shards_copy, dt_tiny_wan, dt_cli):
    from diffusers import AutoencoderKLWan

    before = {s: _samples(dt_shards_copy / s) for s in
              [p.name for p in sorted(dt_shards_copy.glob("shard-*.tar"))]}
    proc = dt_cli("encode-latents", "--shards", dt_shards_copy, "--vae", dt_tiny_wan / "vae",
                  "--batch-size", "3", "--quiet")
    assert proc.returncode == 0, proc.stderr
    vae = AutoencoderKLWan.from_pretrained(dt_tiny_wan / "vae").eval()
    lengths = set()
    for shard, old in before.items():
        new = _samples(dt_shards_copy / shard)
        assert list(new) == list(old)
        for key, members in new.items():
            assert {k: members[k] for k in old[key]} == old[key]  # originals byte for byte
            assert set(members) == set(old[key]) | {"latents.npy"}
            frames = _npy(members["frames.npy"])
            lat = _npy(members["latents.npy"])
            want = _direct(vae, frames).astype(np.float16)
            t, v, h, w = frames.shape[:4]
            lengths.add(t % 4)
            assert lat.dtype == np.float16 and lat.shape == (-(-t // 4), v, 4, h // 4, w // 4)
            # equal up to one float16 step, or 1e-5 near zero: batching several clips moves the
            # last float32 bits (measured up to ~1e-6), which can flip a float16 rounding
            gap = np.abs(lat.astype(np.float32) - want.astype(np.float32))
            assert (gap <= np.spacing(np.abs(want)).astype(np.float32) + 1e-5).all(), key
    assert len(lengths) > 1  # events both of 1 + 4k frames and of other lengths were cut
    index = json.loads((dt_shards_copy / "index.json").read_text())
    spec = index["latents"]
    assert spec["complete"] and spec["member"] == "latents.npy" and spec["dtype"] == "float16"
    assert (spec["z_dim"], spec["temporal_compression"], spec["spatial_compression"]) == (4, 4, 4)
    assert spec["latents_mean"] == vae.config.latents_mean
    assert spec["source"] == str((dt_tiny_wan / "vae").resolve())
    assert all(s["latents"] for s in index["shards"])
    verify_shards(dt_shards_copy, loader_index(dt_shards_copy), "sha256")


def test_rerun_is_a_noop_and_a_crash_resumes(dt_shards_copy, dt_tiny_wan):
    pristine = _snapshot(dt_shards_copy)
    n = len(json.loads(pristine["index.json"][0])["shards"])
    assert n >= 3
    res = encode_latents(dt_shards_copy, dt_tiny_wan / "vae", progress=False)
    assert res == {"shards": n, "done": n, "skipped": 0}
    done = _snapshot(dt_shards_copy)
    assert encode_latents(dt_shards_copy, dt_tiny_wan / "vae", progress=False)["done"] == 0
    assert _snapshot(dt_shards_copy) == done  # not even rewritten

    # A crash after the shards' renames, before index.json was updated: the index as the run
    # left it at its start (the step recorded, no shard flagged, old sizes and sha256), with a
    # half-written tar beside it. The re-run adopts the finished shards, computes nothing.
    index = json.loads(done["index.json"][0])
    index["shards"] = json.loads(pristine["index.json"][0])["shards"]
    index["latents"]["complete"] = False
    (dt_shards_copy / "index.json").write_text(json.dumps(index))
    (dt_shards_copy / "shard-000001.tar.partial").write_bytes(b"half a tar")
    res = encode_latents(dt_shards_copy, dt_tiny_wan / "vae", progress=False)
    assert res == {"shards": n, "done": 0, "skipped": n}
    assert {k: v[0] for k, v in _snapshot(dt_shards_copy).items()} == {k: v[0] for k, v in done.items()}

    # A crash before shard 1 was renamed: its old tar is back, unflagged; only it is computed.
    index = json.loads((dt_shards_copy / "index.json").read_text())
    (dt_shards_copy / "shard-000001.tar").write_bytes(pristine["shard-000001.tar"][0])
    old = json.loads(pristine["index.json"][0])["shards"][1]
    index["shards"][1] = old
    (dt_shards_copy / "index.json").write_text(json.dumps(index))
    res = encode_latents(dt_shards_copy, dt_tiny_wan / "vae", progress=False)
    assert res == {"shards": n, "done": 1, "skipped": n - 1}
    assert {k: v[0] for k, v in _snapshot(dt_shards_copy).items()} == {k: v[0] for k, v in done.items()}


def test_another_vae_needs_force(dt_shards_copy, dt_tiny_wan, tmp_path):
    from wallwm_pretrain.convert.tiny import make_tiny

    encode_latents(dt_shards_copy, dt_tiny_wan / "vae", progress=False)
    other = make_tiny(tmp_path / "other", seed=1)["vae"]
    with pytest.raises(DataToolsError, match="--force"):
        encode_latents(dt_shards_copy, other, progress=False)
    res = encode_latents(dt_shards_copy, other, progress=False, force=True)
    assert res["done"] == res["shards"]
    assert json.loads((dt_shards_copy / "index.json").read_text())["latents"]["source"] == str(other.resolve())


def test_workers_give_the_same_shards(dt_shards_copy, dt_tiny_wan, tmp_path):
    two = Path(shutil.copytree(dt_shards_copy, tmp_path / "two"))
    encode_latents(dt_shards_copy, dt_tiny_wan / "vae", progress=False)
    encode_latents(two, dt_tiny_wan / "vae", workers=2, progress=False)
    for p in sorted(dt_shards_copy.glob("shard-*.tar")):
        assert p.read_bytes() == (two / p.name).read_bytes()


def _fails(dt_cli, shards, vae, *needles):
    with pytest.raises(DataToolsError) as err:
        encode_latents(shards, vae, progress=False)
    for n in needles:
        assert str(n) in str(err.value), f"{n!r} not in {err.value}"
    proc = dt_cli("encode-latents", "--shards", shards, "--vae", vae, "--quiet")
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert all(str(n) in proc.stderr for n in needles)


def test_bad_vae_folders_name_the_file(dt_shards_copy, dt_tiny_wan, tmp_path, dt_cli):
    pristine = _snapshot(dt_shards_copy)
    _fails(dt_cli, dt_shards_copy, tmp_path / "nowhere", tmp_path / "nowhere", "not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(dt_cli, dt_shards_copy, empty, empty / "config.json", "not found")
    enc = dt_tiny_wan / "text_encoder"
    _fails(dt_cli, dt_shards_copy, enc, enc / "config.json", "AutoencoderKLWan", "UMT5EncoderModel")
    assert _snapshot(dt_shards_copy) == pristine


def test_shards_without_frames_fail_naming_the_shard(dt_shards_copy, dt_tiny_wan, dt_cli):
    path = dt_shards_copy / "shard-000000.tar"
    samples = _samples(path)
    with open(path, "wb") as fh:
        writer = DeterministicTarWriter(fh)
        for key, members in samples.items():
            writer.write_sample(key, {k: v for k, v in members.items() if k != "frames.npy"})
        writer.close()
    index = json.loads((dt_shards_copy / "index.json").read_text())
    index["shards"][0].update(bytes=path.stat().st_size,
                              sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    (dt_shards_copy / "index.json").write_text(json.dumps(index))
    stripped = path.read_bytes()
    _fails(dt_cli, dt_shards_copy, dt_tiny_wan / "vae", path, "frames.npy")
    assert path.read_bytes() == stripped
    assert not list(dt_shards_copy.glob("*.partial"))


def test_missing_index_names_the_file(tmp_path, dt_tiny_wan, dt_cli):
    _fails(dt_cli, tmp_path, dt_tiny_wan / "vae", tmp_path / "index.json")


def test_unknown_device_is_refused_before_any_work(dt_shards_copy, dt_tiny_wan):
    pristine = _snapshot(dt_shards_copy)
    with pytest.raises(DataToolsError, match="--device 'nonesuch'"):
        encode_latents(dt_shards_copy, dt_tiny_wan / "vae", device="nonesuch", progress=False)
    assert _snapshot(dt_shards_copy) == pristine


# The cut rule written out by hand, not rebuilt from a formula: for temporal compression r the
# VAE sees the largest 1 + r*k <= T frames and gives 1 + k latent frames.
KEPT_BY_HAND = {
    1: {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 8, 9: 9, 10: 10, 11: 11, 12: 12, 13: 13},
    2: {1: 1, 2: 1, 3: 3, 4: 3, 5: 5, 6: 5, 7: 7, 8: 7, 9: 9, 10: 9, 11: 11, 12: 11, 13: 13},
    4: {1: 1, 2: 1, 3: 1, 4: 1, 5: 5, 6: 5, 7: 5, 8: 5, 9: 9, 10: 9, 11: 9, 12: 9, 13: 13},
}
LATENTS_BY_HAND = {
    1: {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 8, 9: 9, 10: 10, 11: 11, 12: 12, 13: 13},
    2: {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3, 7: 4, 8: 4, 9: 5, 10: 5, 11: 6, 12: 6, 13: 7},
    4: {1: 1, 2: 1, 3: 1, 4: 1, 5: 2, 6: 2, 7: 2, 8: 2, 9: 3, 10: 3, 11: 3, 12: 3, 13: 4},
}


@pytest.mark.parametrize("temporal", sorted(KEPT_BY_HAND))
def test_cut_rule_against_values_written_by_hand(temporal):
    from data_tools.latents import kept_frames, latent_frames

    for t in range(1, 14):
        assert kept_frames(t, temporal) == KEPT_BY_HAND[temporal][t], (t, temporal)
        assert latent_frames(t, temporal) == LATENTS_BY_HAND[temporal][t], (t, temporal)


def test_cut_rule_never_keeps_more_frames_than_the_event_has():
    from data_tools.latents import kept_frames, latent_frames

    for temporal in range(1, 9):
        for t in range(1, 300):
            keep = kept_frames(t, temporal)
            assert 1 <= keep <= t and (keep - 1) % temporal == 0 and t - keep < temporal, (t, temporal)
            assert latent_frames(keep, temporal) == latent_frames(t, temporal) == 1 + (keep - 1) // temporal


@pytest.mark.parametrize("t, temporal", [(0, 4), (-3, 4), (5, 0)])
def test_cut_rule_refuses_empty_events_and_no_compression(t, temporal):
    from data_tools.latents import kept_frames

    with pytest.raises(ValueError, match=f"t={t}, temporal={temporal}"):
        kept_frames(t, temporal)
