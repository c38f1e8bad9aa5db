"""``sbatch launch/prepare.sh encode-latents ...`` on the real two-node Slurm (``cluster.py``):
one task per node, each encoding its share of the shards with the tiny VAE on CPU, then the
finalize step; the folder equals the one-process result byte for byte."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from cluster import wait_for

REPO = Path(__file__).resolve().parents[2]
LENGTHS = [5, 9, 12, 16, 7, 20, 11, 8, 14, 6, 10, 13]
JOB_S = 600  # bound on the job: two tasks start Python, load a tiny VAE, encode 12 short clips


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_nodes_encode_latents_like_one_process(slurm, tmp_path, shard_writer, monkeypatch):
    from data_tools.latents import encode_latents
    from wallwm_pretrain.convert.tiny import make_tiny

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    vae = make_tiny(tmp_path / "models" / "tiny-wan", seed=0)["vae"]
    one = shard_writer(tmp_path / "one", LENGTHS, per_shard=2, views=1)
    nodes = Path(shutil.copytree(one, tmp_path / "nodes"))
    encode_latents(one, vae, progress=False)
    job = slurm.sbatch(
        "--job-name=prep", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1",
        "--time=30", f"--output={tmp_path}/%x-%j.out", "--export=ALL",
        "launch/prepare.sh", "encode-latents", "--shards", str(nodes), "--vae", str(vae),
        env={"PYTHON": sys.executable, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}, cwd=REPO)
    wait_for(lambda: slurm.job(job).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"), JOB_S,
             f"job {job} to end")
    info = slurm.job(job)
    said = (tmp_path / f"prep-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["NodeList"] == "n[1-2]", (info, said)
    assert "encode-latents on 2 task(s) over 2 node(s)" in said
    for rank in (0, 1):
        assert f"rank {rank} of 2 (from Slurm (SLURM_PROCID/SLURM_NTASKS))" in said
        assert f"3 shard(s) encoded, 0 already done, 3 of rank {rank}/2" in said
    assert "latents: finalised" in said and "6 shard(s) recorded by the ranks" in said
    assert snapshot(nodes) == snapshot(one)  # every tar and index.json, byte for byte
