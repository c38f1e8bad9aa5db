"""Shared fixtures: tiny contract-conforming shards written into tmp_path, single-process groups,
and (built once per session, for the evaluation and serving tests) one tiny Meta-World
recording, its L1 and L3 shards, and a tiny event-mode and chunk-mode checkpoint trained on them.

The recording needs the metaworld package and a headless OpenGL library. Where either is
missing the tests that use it fail (never skip) with the message of ``sim.metaworld.gl``, which
names the pip requirement or the Debian packages to install.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
warnings.filterwarnings("ignore", module="megatron")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: not on the path
# The skip policy's hooks (a skip outside skip_policy.ALLOWED fails the session).
from skip_policy import pytest_runtest_logreport, pytest_sessionfinish, pytest_terminal_summary  # noqa: E402,F401


_SCHEDULING = (os.sched_getscheduler(0), os.sched_getparam(0))


@pytest.fixture(autouse=True)
def _ordinary_scheduling():
    """Every test starts with the session's scheduling policy.

    Some video encoders switch the calling thread to real-time SCHED_FIFO 99 when run as root
    (SVT-AV1; ``data_tools.video`` undoes it for its own encoder, tested in test_dt_units.py),
    and every process started afterwards inherits it; then a multi-process test whose ranks
    busy-wait takes every core and starves the threads they wait for. Another library's
    encoder (e.g. one a LeRobot writer runs) must not hang the rest of the suite that way.
    """
    yield
    if (os.sched_getscheduler(0), os.sched_getparam(0)) != _SCHEDULING:
        os.sched_setscheduler(0, *_SCHEDULING)


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def write_shards(
    folder: Path,
    lengths: list[int],
    per_shard: int = 4,
    views: int = 2,
    size: int = 32,
    action_dim: int = 4,
    state_dim: int = 8,
    seed: int = 0,
    corrupt: dict | None = None,
    clusters: list[tuple[int, int]] | None = None,
) -> Path:
    """Write event samples with the DESIGN.md keys; ``corrupt`` = {sample_index: fn(sample)}."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards = []
    clusters = clusters or [(0, 0)] * len(lengths)
    for s0 in range(0, len(lengths), per_shard):
        name = f"shard-{s0 // per_shard:06d}.tar"
        count = 0
        with wds.TarWriter(str(folder / name)) as sink:
            for i in range(s0, min(len(lengths), s0 + per_shard)):
                t = lengths[i]
                states = rng.normal(size=(t, state_dim)).astype(np.float32)
                meta = {
                    "episode_id": i // 3, "event_index": i % 3, "level": "L1",
                    "caption": f"reach for cube {i}", "next_caption": "grasp it", "task": f"task {i // 3}",
                    "start": 0, "end": t, "fps": 10, "vl_cluster": clusters[i][0], "action_cluster": clusters[i][1],
                }
                sample = {
                    "__key__": f"ep{i // 3:06d}_L1_{i % 3:03d}",
                    "json": json.dumps(meta).encode(),
                    "actions.npy": _npy(rng.normal(size=(t, action_dim)).astype(np.float32)),
                    "state.npy": _npy(states[0]),
                    "states.npy": _npy(states),
                    "frames.npy": _npy(rng.integers(0, 256, size=(t, views, size, size, 3), dtype=np.uint8)),
                }
                if corrupt and i in corrupt:
                    corrupt[i](sample)
                sink.write(sample)
                count += 1
        data = (folder / name).read_bytes()
        shards.append({"name": name, "samples": count, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    count = lambda axis: {str(c): sum(1 for v in clusters if v[axis] == c) for c in sorted({v[axis] for v in clusters})}  # noqa: E731
    index = {"format_version": 1, "level": "L1", "shards": shards, "total_samples": len(lengths),
             "vl_cluster_counts": count(0), "action_cluster_counts": count(1),
             "image_size": size, "views": [f"cam{v}" for v in range(views)], "fps": 10,
             "action_dim": action_dim, "state_dim": state_dim}
    (folder / "index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="session")
def shard_writer():
    """The :func:`write_shards` helper (fixtures are importable under --import-mode=importlib, where
    ``from conftest import`` may find another folder's conftest)."""
    return write_shards


@pytest.fixture
def single_process():
    """megatron-core model-parallel state for one CPU process."""
    from wallwm_pretrain.parallel import init_parallel, shutdown_parallel

    ctx = init_parallel(1, 1, "cpu", seed=0)
    yield ctx
    shutdown_parallel()


def require_rendering() -> str:
    """The headless OpenGL backend of this machine; where Meta-World or rendering is missing, the
    test fails (never skips) with the one line that names what to install."""
    from sim.metaworld import gl

    try:
        return gl.check_rendering()
    except (gl.MetaWorldUnavailable, gl.RenderingUnavailable) as exc:
        problem = str(exc)
    # Outside the except block, so the report is the one line that names what to install.
    pytest.fail(f"Meta-World cannot run on this machine: {problem}", pytrace=False)


@pytest.fixture(scope="session")
def mw_backend() -> str:
    return require_rendering()


# pick-place at the recorder's defaults (64 px render, corner + gripperPOV, 200-step budget),
# with the 39-D state that configs/metaworld.yaml trains on: two expert episodes of ~65 steps.
TASK = "pick-place-v3"
RECORD = dict(tasks=[TASK], episodes_per_task=2, seed=0, state="full")
TINY_MODEL = [
    "model.hidden_size=32", "model.num_heads=4", "model.ffn_hidden_size=64", "model.num_layers=1",
    "model.text_layers=1", "data.batch_size=2", "data.length_buckets=[]", "data.shuffle_buffer=4",
    "train.steps=4", "train.log_every=2", "train.save_every=0", "optim.warmup_steps=1",
    "train.device=cpu",  # in this process megatron runs patched for CPU, also on a GPU machine
]
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "metaworld.yaml"


@pytest.fixture(scope="session")
def mw_recording(mw_backend, tmp_path_factory) -> Path:
    """Two successful expert episodes of pick-place-v3 (LeRobot v3.0 + events.jsonl)."""
    from data_tools.metaworld import RecordConfig, record_metaworld

    out = tmp_path_factory.mktemp("eval_mw") / "rec"
    out.mkdir()
    summary = record_metaworld(out, RecordConfig(**RECORD), progress=False)
    assert summary["episodes"] == 2, summary
    return out


@pytest.fixture(scope="session")
def mw_shards(mw_recording, tmp_path_factory) -> dict[str, Path]:
    """level -> shard folder: L1 (events, for event mode) and L3 (whole episodes, chunk mode)."""
    from data_tools.shards import build_shards

    base = tmp_path_factory.mktemp("eval_shards")
    out = {}
    for level in ("L1", "L3"):
        out[level] = base / level
        build_shards(mw_recording, out[level], level=level, seed=0, image_size=32, progress=False)
    return out


def train_tiny(shards: Path, runs: Path, name: str, *extra: str) -> Path:
    """A few steps of configs/metaworld.yaml with a tiny model; returns the run folder."""
    from wallwm_pretrain.config import load_config
    from wallwm_pretrain.parallel import shutdown_parallel
    from wallwm_pretrain.trainer import Trainer

    cfg = load_config(CONFIG, TINY_MODEL + [f"data.shards={shards}", f"train.runs_root={runs}",
                                            f"train.run_name={name}", *extra])
    try:
        summary = Trainer(cfg).train()
    finally:
        shutdown_parallel()
    assert summary.end_step == 4
    return runs / name


@pytest.fixture(scope="session")
def event_run(mw_shards, tmp_path_factory) -> Path:
    return train_tiny(mw_shards["L1"], tmp_path_factory.mktemp("eval_train"), "mw_event")


@pytest.fixture(scope="session")
def chunk_run(mw_shards, tmp_path_factory) -> Path:
    return train_tiny(mw_shards["L3"], tmp_path_factory.mktemp("eval_train"), "mw_chunk", "data.mode=chunk")
