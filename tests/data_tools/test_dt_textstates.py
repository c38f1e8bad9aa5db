"""embed-captions: the states are what a direct call of the transformers UMT5 encoder gives, the
empty-string states sit beside index.json, a re-run does nothing, bad input names the file."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from data_tools.errors import DataToolsError
from data_tools.textstates import embed_captions
from wallwm_pretrain.data.index import read_index as loader_index
from wallwm_pretrain.data.verify import verify_shards

pytestmark = pytest.mark.usefixtures("dt_one_thread")
TEXTS = ("caption", "next_caption", "task")


def _samples(tar_path: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path) as tar:
        for m in tar:
            key, _, ext = m.name.partition(".")
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _close(got: np.ndarray, want: np.ndarray) -> bool:
    """Equal up to one float16 step (or 1e-5 near zero): padding a batch moves the last float32 bits."""
    want16 = want.astype(np.float16)
    gap = np.abs(got.astype(np.float32) - want16.astype(np.float32))
    return got.shape == want.shape and bool((gap <= np.spacing(np.abs(want16)).astype(np.float32) + 1e-5).all())


def test_states_equal_a_direct_encoder_call(dt_shards_copy, dt_tiny_wan, dt_cli):
    from transformers import AutoTokenizer, UMT5EncoderModel

    before = {p.name: _samples(p) for p in sorted(dt_shards_copy.glob("shard-*.tar"))}
    proc = dt_cli("embed-captions", "--shards", dt_shards_copy, "--text-encoder",
                  dt_tiny_wan / "text_encoder", "--batch-size", "5", "--quiet")
    assert proc.returncode == 0, proc.stderr
    tok = AutoTokenizer.from_pretrained(dt_tiny_wan / "tokenizer")
    enc = UMT5EncoderModel.from_pretrained(dt_tiny_wan / "text_encoder").eval()

    def direct(text: str) -> np.ndarray:  # one text, no padding at all
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return enc(input_ids=ids).last_hidden_state[0].numpy()

    added = {"caption_states.npy", "next_caption_states.npy", "task_states.npy", "text_lengths.npy"}
    for name, old in before.items():
        new = _samples(dt_shards_copy / name)
        assert list(new) == list(old)
        for key, members in new.items():
            assert {k: members[k] for k in old[key]} == old[key]
            assert set(members) == set(old[key]) | added
            meta = json.loads(members["json"])
            lengths = _npy(members["text_lengths.npy"])
            assert lengths.dtype == np.int32 and lengths.shape == (3,)
            for i, text in enumerate(TEXTS):
                got = _npy(members[f"{text}_states.npy"])
                assert got.dtype == np.float16 and got.shape[0] == lengths[i]
                assert _close(got, direct(meta[text] or "")), (key, text)
    empty = np.load(dt_shards_copy / "empty_text_states.npy")
    assert empty.dtype == np.float16 and _close(empty, direct(""))
    index = json.loads((dt_shards_copy / "index.json").read_text())
    spec = index["text_states"]
    assert spec["complete"] and spec["dim"] == enc.config.d_model
    assert spec["empty"]["file"] == "empty_text_states.npy" and spec["empty"]["length"] == len(empty)
    assert spec["tokenizer"] == str((dt_tiny_wan / "tokenizer").resolve())  # found beside the encoder
    assert all(s["text_states"] for s in index["shards"])
    verify_shards(dt_shards_copy, loader_index(dt_shards_copy), "sha256")


def test_rerun_is_a_noop_and_latents_stay(dt_shards_copy, dt_tiny_wan):
    from data_tools.latents import encode_latents

    encode_latents(dt_shards_copy, dt_tiny_wan / "vae", progress=False)
    first = embed_captions(dt_shards_copy, dt_tiny_wan / "text_encoder", progress=False)
    assert first["done"] == first["shards"]
    snap = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in dt_shards_copy.iterdir()}
    again = embed_captions(dt_shards_copy, dt_tiny_wan / "text_encoder", progress=False)
    assert again == {"shards": first["shards"], "done": 0, "skipped": first["shards"]}
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in dt_shards_copy.iterdir()} == snap
    index = json.loads((dt_shards_copy / "index.json").read_text())
    assert index["latents"]["complete"] and all(s["latents"] and s["text_states"] for s in index["shards"])
    for p in dt_shards_copy.glob("shard-*.tar"):
        assert all("latents.npy" in m and "task_states.npy" in m for m in _samples(p).values())


def test_tokenizer_is_looked_for_and_named(dt_shards_copy, dt_tiny_wan, tmp_path):
    alone = Path(shutil.copytree(dt_tiny_wan / "text_encoder", tmp_path / "alone" / "text_encoder"))
    with pytest.raises(DataToolsError, match="no tokenizer files") as err:
        embed_captions(dt_shards_copy, alone, progress=False)
    assert str(alone) in str(err.value) and "--tokenizer" in str(err.value)
    res = embed_captions(dt_shards_copy, alone, tokenizer=dt_tiny_wan / "tokenizer", progress=False)
    assert res["done"] == res["shards"]


def test_another_encoder_needs_force_and_leaves_the_folder_alone(dt_shards_copy, dt_tiny_wan, tmp_path):
    from wallwm_pretrain.convert.tiny import make_tiny

    embed_captions(dt_shards_copy, dt_tiny_wan / "text_encoder", progress=False)
    snap = {p.name: p.read_bytes() for p in dt_shards_copy.iterdir()}
    other = make_tiny(tmp_path / "other", seed=1)["text_encoder"]
    with pytest.raises(DataToolsError, match="--force"):
        embed_captions(dt_shards_copy, other, progress=False)
    assert {p.name: p.read_bytes() for p in dt_shards_copy.iterdir()} == snap
    res = embed_captions(dt_shards_copy, other, progress=False, force=True)
    assert res["done"] == res["shards"]
    assert np.load(dt_shards_copy / "empty_text_states.npy").tobytes() != np.load(
        io.BytesIO(snap["empty_text_states.npy"])).tobytes()


def test_bad_encoder_folders_name_the_file(dt_shards_copy, dt_tiny_wan, tmp_path, dt_cli):
    vae = dt_tiny_wan / "vae"
    cases = [(tmp_path / "nowhere", [tmp_path / "nowhere", "not found"]),
             (vae, [vae / "config.json", "UMT5EncoderModel", "AutoencoderKLWan"])]
    for folder, needles in cases:
        with pytest.raises(DataToolsError) as err:
            embed_captions(dt_shards_copy, folder, progress=False)
        assert all(str(n) in str(err.value) for n in needles), err.value
        proc = dt_cli("embed-captions", "--shards", dt_shards_copy, "--text-encoder", folder, "--quiet")
        assert proc.returncode == 1 and all(str(n) in proc.stderr for n in needles)
    assert "text_states" not in json.loads((dt_shards_copy / "index.json").read_text())
