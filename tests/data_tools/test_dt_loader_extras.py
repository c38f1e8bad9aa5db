"""The training loader reads what encode-latents / embed-captions added: latents aligned with
the control steps (K_p per latent frame), caption states (the empty string's when dropped),
and model.video_input=latents fails at start, naming the folder, when the shards have none."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch
import pytest

from data_tools.latents import encode_latents
from data_tools.textstates import embed_captions
from wallwm_pretrain.config import CaptionDropConfig, ConfigError, DataConfig, load_config
from wallwm_pretrain.data.dims import resolve_data_dims
from wallwm_pretrain.data.loader import EventLoader, read_cooked
from wallwm_pretrain.data.cookers import Normalizer

pytestmark = pytest.mark.usefixtures("dt_one_thread")


def _members(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for path in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                if ext.endswith(".npy"):
                    out.setdefault(key, {})[ext] = np.load(io.BytesIO(tar.extractfile(m).read()))
    return out


def _cfg(folder: Path, rho: float, **kw) -> DataConfig:
    base = dict(shards=str(folder), batch_size=4, num_workers=0, shuffle_buffer=0, max_frames=8,
                length_buckets=[], caption_drop=CaptionDropConfig(rho_min=rho, rho_max=rho, l_min=1, l_max=2))
    return DataConfig(**{**base, **kw})


@pytest.fixture
def full(dt_shards_copy, dt_tiny_wan) -> Path:
    encode_latents(dt_shards_copy, dt_tiny_wan / "vae", progress=False)
    embed_captions(dt_shards_copy, dt_tiny_wan / "text_encoder", progress=False)
    return dt_shards_copy


@pytest.mark.parametrize("mode", ["event", "chunk"])
def test_cooked_latents_follow_the_crop_and_states_the_text(full, mode):
    crude = _members(full)
    empty = np.load(full / "empty_text_states.npy")
    k = 4
    seen_crop = False
    for rho in (0.0, 1.0):
        cfg = _cfg(full, rho, mode=mode, chunk_horizon=8)
        for s in read_cooked(full, cfg, 64, Normalizer(), video_input="latents", frame_stride=k):
            key, _, window = s.key.partition("/w")
            member = crude[key]
            start = int(window) if window else 0
            if mode == "event":  # find the crop by matching frames (starts on a latent frame)
                t = len(member["frames.npy"])
                starts = [a for a in range(0, t - s.length + 1, k)
                          if np.array_equal(member["frames.npy"][a:a + s.length], s.frames)]
                assert starts, s.key
                start = starts[0]
                seen_crop |= start > 0
            n = -(-s.length // k)
            assert s.latents.dtype == np.float16 and len(s.latents) == n
            np.testing.assert_array_equal(s.latents, member["latents.npy"][start // k: start // k + n])
            text = "caption_states.npy" if mode == "event" else "task_states.npy"
            want = empty if (rho == 1.0 and mode == "event") else member[text]
            np.testing.assert_array_equal(s.caption_states, want)
    if mode == "event":
        assert seen_crop  # some event was longer than max_frames and cropped past its start


def test_batches_carry_padded_latents_and_states(full):
    loader = EventLoader(_cfg(full, 0.0), frame_stride=4, caption_max_bytes=64, video_input="latents")
    batch = next(loader)
    b, t = batch.actions.shape[:2]
    # [B, V, Z, N, h, w]: views and channels first, latent frames in the fourth place
    assert batch.latents.shape[0] == b and batch.latents.shape[3] == t // 4
    assert batch.latents.dtype.is_floating_point
    assert batch.text_states.shape[0] == b and batch.text_valid.shape == batch.text_states.shape[:2]
    assert batch.text_valid.dtype == torch.bool
    for i in range(b):
        n = -(-int(batch.lengths[i]) // 4)
        assert batch.latents[i, :, :, n:].abs().sum() == 0 and batch.latents[i, :, :, :n].abs().sum() > 0
        m = int(batch.text_valid[i].sum())
        assert batch.text_valid[i, :m].all() and batch.text_states[i, m:].abs().sum() == 0
    part = batch.rows(1, 3)
    assert part.latents.shape[0] == part.text_states.shape[0] == part.text_valid.shape[0] == 2
    pixels = next(EventLoader(_cfg(full, 0.0), frame_stride=4, caption_max_bytes=64))
    assert pixels.latents is None and pixels.text_states is not None


def test_latents_asked_of_shards_without_them_fail_naming_the_folder(dt_shards_copy, dt_tiny_wan):
    with pytest.raises(ConfigError, match="records no VAE latents") as err:
        EventLoader(_cfg(dt_shards_copy, 0.0), frame_stride=4, video_input="latents")
    assert str(dt_shards_copy / "index.json") in str(err.value) and "encode-latents" in str(err.value)
    assert "\n" not in str(err.value)
    cfg = load_config(None, [f"data.shards={dt_shards_copy}", "model.video_input=latents"])
    with pytest.raises(ConfigError, match=str(dt_shards_copy)):
        resolve_data_dims(cfg)
    assert resolve_data_dims(load_config(None, [f"data.shards={dt_shards_copy}"])).model.video_input == "pixels"
    encode_latents(dt_shards_copy, dt_tiny_wan / "vae", progress=False)
    assert resolve_data_dims(cfg).model.video_input == "latents"
    with pytest.raises(ConfigError, match="temporal compression"):
        EventLoader(_cfg(dt_shards_copy, 0.0), frame_stride=2, video_input="latents")
    with pytest.raises(ConfigError, match="video_input"):
        load_config(None, ["model.video_input=frames"])
