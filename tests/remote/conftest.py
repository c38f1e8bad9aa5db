"""Fixtures of the remote-shard tests: a real S3 server (moto's) and an HTTP file server on
loopback, each started for one test and stopped after it, with nothing left running."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: not on the path
from servers import HttpServer, S3Server, clear_fs_instances  # noqa: E402


@pytest.fixture
def s3(monkeypatch):
    server = S3Server()
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    try:
        yield server
    finally:
        clear_fs_instances()
        server.stop()


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    return root


@pytest.fixture
def http(http_root):
    server = HttpServer(http_root)
    try:
        yield server
    finally:
        clear_fs_instances()
        server.stop()


@pytest.fixture(autouse=True)
def _nothing_left_running():
    """Every server thread a test started has ended when it is over."""
    before = set(threading.enumerate())
    yield
    left = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    assert not left, f"threads left running: {left}"
