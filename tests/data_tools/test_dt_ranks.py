"""encode-latents / embed-captions split over ranks: two processes at once, then --finalize,
give the same folder as one process, byte for byte; a rank run again does nothing; finalize
names a shard nobody did (with the rank that owns it) and one done twice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data_tools.errors import DataToolsError
from data_tools.latents import encode_latents
from data_tools.ranks import finalize, rank_and_world
from data_tools.textstates import IDENTITY, embed_captions

REPO = Path(__file__).resolve().parents[2]
LENGTHS = [5, 9, 12, 16, 7, 20, 11, 8, 14, 6, 10, 13]

pytestmark = pytest.mark.usefixtures("dt_one_thread")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "data_tools", *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, **(env or {})))


def finish(proc) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


def test_two_rank_processes_equal_one_process(tmp_path, shard_writer, dt_tiny_wan):
    one = shard_writer(tmp_path / "one", LENGTHS, per_shard=2, views=1)
    two = Path(shutil.copytree(one, tmp_path / "two"))
    original_index = (two / "index.json").read_bytes()
    encode_latents(one, dt_tiny_wan / "vae", progress=False)
    vae = ["encode-latents", "--shards", two, "--vae", dt_tiny_wan / "vae", "--quiet"]
    # one rank by flags, the other as srun starts it (its variables only)
    ranks = [cli(*vae, "--rank", "0", "--world", "2"), cli(*vae, env={"SLURM_PROCID": "1", "SLURM_NTASKS": "2"})]
    outs = [finish(p) for p in ranks]
    assert "rank 1 of 2 (from Slurm (SLURM_PROCID/SLURM_NTASKS))" in outs[1]
    assert all("3 shard(s) encoded, 0 already done, 3 of rank" in o for o in outs), outs
    assert (two / "index.json").read_bytes() == original_index  # ranks leave it to --finalize
    assert snapshot(one) != snapshot(two)
    finish(cli("encode-latents", "--shards", two, "--finalize"))
    assert snapshot(two) == snapshot(one)  # every tar and index.json, byte for byte; no ledger left
    # run again: nothing to do, and the folder stays the same
    again = encode_latents(two, dt_tiny_wan / "vae", progress=False, rank=1, world=2)
    assert again["done"] == 0 and again["skipped"] == 3
    assert finalize(two, "latents", ("fingerprint",))["recorded"] == 0
    assert snapshot(two) == snapshot(one)


def test_finalize_names_what_is_missing_or_done_twice(tmp_path, shard_writer, dt_tiny_wan):
    one = shard_writer(tmp_path / "one", LENGTHS, per_shard=2, views=1)
    parts = Path(shutil.copytree(one, tmp_path / "parts"))
    embed_captions(one, dt_tiny_wan / "text_encoder", progress=False)
    embed_captions(parts, dt_tiny_wan / "text_encoder", progress=False, rank=0, world=3)
    with pytest.raises(DataToolsError) as err:
        finalize(parts, "text_states", IDENTITY)
    text = str(err.value)
    assert "shard-000001.tar: not done (rank 1 of 3 owns it" in text
    assert "shard-000005.tar: not done (rank 2 of 3 owns it" in text and "shard-000000.tar" not in text
    embed_captions(parts, dt_tiny_wan / "text_encoder", progress=False, rank=1, world=3)
    # a record of the same shard by a second rank: finalize refuses
    ledger = parts / ".text_states.ranks"
    twice = ledger / "rank-00002-of-00003"
    twice.mkdir()
    shutil.copy(ledger / "rank-00000-of-00003" / "spec.json", twice)
    shutil.copy(ledger / "rank-00000-of-00003" / "shard-000000.tar.json", twice)
    with pytest.raises(DataToolsError, match="shard-000000.tar: done more than once"):
        finalize(parts, "text_states", IDENTITY)
    shutil.rmtree(twice)
    embed_captions(parts, dt_tiny_wan / "text_encoder", progress=False, rank=2, world=3)
    finalize(parts, "text_states", IDENTITY)
    assert snapshot(parts) == snapshot(one)  # incl. empty_text_states.npy


def test_rank_and_world_come_from_flags_torchrun_or_slurm():
    assert rank_and_world(None, None, {}) == (0, 1, "one process")
    assert rank_and_world(None, None, {"RANK": "3", "WORLD_SIZE": "4", "SLURM_PROCID": "0",
                                       "SLURM_NTASKS": "1"})[:2] == (3, 4)
    assert rank_and_world(None, None, {"SLURM_PROCID": "1", "SLURM_NTASKS": "2"})[:2] == (1, 2)
    assert rank_and_world(2, 5, {"RANK": "0", "WORLD_SIZE": "1"})[:2] == (2, 5)
    for bad in [(None, 2), (2, 2), (-1, 2)]:
        with pytest.raises(DataToolsError):
            rank_and_world(*bad, {})
