"""Fixtures for the evaluation tests (the tiny Meta-World recording, shards and event/chunk
checkpoints they use are built once per session in ``tests/conftest.py``, shared with the
serving tests).

Torch runs single-threaded here: the tiny models' matmuls are microseconds of work, and with two
intra-op threads on a shared 2-core machine each one waits milliseconds for a busy core.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
