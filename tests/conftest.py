"""Shared fixtures: tiny contract-conforming shards written into tmp_path, single-process groups."""

from __future__ import annotations

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
        shards.append({"name": name, "samples": count})
    count = lambda axis: {str(c): sum(1 for v in clusters if v[axis] == c) for c in sorted({v[axis] for v in clusters})}  # noqa: E731
    index = {"format_version": 1, "level": "L1", "shards": shards, "total_samples": len(lengths),
             "vl_cluster_counts": count(0), "action_cluster_counts": count(1)}
    (folder / "index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture
def shard_writer():
    """The :func:`write_shards` helper (fixtures are importable under --import-mode=importlib)."""
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
    from data_tools.metaworld import gl

    try:
        return gl.check_rendering()
    except (gl.MetaWorldUnavailable, gl.RenderingUnavailable) as exc:
        problem = str(exc)
    # Outside the except block, so the report is the one line that names what to install.
    pytest.fail(f"Meta-World cannot run on this machine: {problem}", pytrace=False)


@pytest.fixture(scope="session")
def mw_backend() -> str:
    return require_rendering()
