"""The CUDA/NCCL path of the trainer, where GPUs are there (the gloo/CPU proofs run everywhere).

On a machine without the GPUs these skip with a reason that skip_policy.ALLOWED lists; on a GPU
node they run the real launcher on the GPUs: one process (CUDA), and two processes over NCCL.
"""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wallwm_pretrain.checkpoint import find_latest, load_checkpoint

REPO = Path(__file__).resolve().parents[2]
LENGTHS = [5, 9, 12, 16, 7, 20, 11, 8, 14, 6, 10, 13, 15, 9, 17, 12] * 2
TINY = [
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.ffn_hidden_size=64",
    "model.image_size=32", "model.patch_size=16", "data.batch_size=2", "data.max_frames=16",
    "data.shuffle_buffer=8", "train.log_every=1", "optim.warmup_steps=2", "train.steps=3",
    "tracking.enabled=false", "train.device=cuda",
]


def gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_trainer(tmp_path, folder, name, nproc):
    """The one place this file starts the trainer."""
    args = [f"data.shards={folder}", f"train.runs_root={tmp_path / 'runs'}", f"train.run_name={name}", *TINY]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "-m", "wallwm_pretrain.train", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ckpt = load_checkpoint(find_latest(tmp_path / "runs" / name))
    return ckpt, json.loads(ckpt.trainer["history"])["loss"]


@pytest.mark.skipif(gpus() < 1, reason="needs a CUDA GPU (train.device=cuda); the CPU/gloo runs cover the rest")
def test_one_gpu_trains_and_saves_a_cpu_loadable_checkpoint(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "shards", LENGTHS)
    ckpt, losses = run_trainer(tmp_path, folder, "gpu1", 1)
    assert ckpt.step == 3 and [s for s, _ in losses] == [1, 2, 3]
    assert all(math.isfinite(v) and v > 0 for _, v in losses)
    assert all(t.device.type == "cpu" for t in ckpt.model.values() if isinstance(t, torch.Tensor))


@pytest.mark.skipif(gpus() < 2, reason="needs 2 CUDA GPUs (NCCL data parallel); the CPU/gloo runs cover the rest")
def test_two_gpus_nccl_data_parallel(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "shards", LENGTHS)
    ckpt, losses = run_trainer(tmp_path, folder, "gpu2", 2)
    assert ckpt.step == 3 and ckpt.trainer["layout"]["dp"] == 2 and len(ckpt.trainer["loaders"]) == 2
    assert all(math.isfinite(v) and v > 0 for _, v in losses)
