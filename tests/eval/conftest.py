"""Fixtures for the evaluation tests: one tiny Meta-World recording, its L1 and L3 shards, and a
tiny event-mode and chunk-mode checkpoint trained on them, all built once per session.

The recording needs the metaworld package and a headless OpenGL library. Where either is
missing the tests that use it fail (never skip) with the message of
``data_tools.metaworld.gl``, which names the pip requirement or the Debian packages to install.

Torch runs single-threaded here: the tiny models' matmuls are microseconds of work, and with two
intra-op threads on a shared 2-core machine each one waits milliseconds for a busy core.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "metaworld.yaml"


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    return train_tiny(mw_shards["L3"], tmp_path_factory.mktemp("eval_train"), "mw_chunk", "model.mode=chunk")


@pytest.fixture
def eval_cli(capsys):
    """cli(*args) -> (exit code, stdout, stderr) of ``python -m wallwm_pretrain.eval`` in-process."""
    from wallwm_pretrain.eval.__main__ import main

    def cli(*args) -> tuple[int, str, str]:
        capsys.readouterr()
        # CPU unless a test asks otherwise (a later --device wins): in-process, as the trainer above
        code = main(["--device", "cpu", *(str(a) for a in args)])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return cli
