"""Fixtures for the serving tests: the session's tiny event-mode checkpoint (``tests/conftest.py``)
loaded once per module, and real servers on 127.0.0.1 with a free port.

A module's servers share one loaded model (its lock serialises them) and megatron-core's
single-process state, which the fixture creates and tears down around the module; a test that
runs the in-process evaluation (which creates and tears that state down itself) must not have a
server alive at the same time, so it lives in its own module.
"""

from __future__ import annotations

import numpy as np
import pytest

VIEWS = ["corner", "gripperPOV"]


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def engine(event_run):
    from wallwm_pretrain.serve.engine import PolicyEngine

    return PolicyEngine.load(event_run)  # local layers: no process group needed


@pytest.fixture
def start_server(engine):
    """start_server(**PolicyServer kwargs) -> a started server on 127.0.0.1 (stopped after the test)."""
    from wallwm_pretrain.serve.server import PolicyServer

    servers = []

    def start(**kw):
        server = PolicyServer(engine, host="127.0.0.1", port=0, **kw)
        server.start_in_thread()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def make_obs(rng_seed: int = 0, size: int = 32, prompt: str = "reach for the puck", **extra) -> dict:
    """A valid request: random images per view and 39-D state (from rng_seed), a prompt, extra keys."""
    rng = np.random.default_rng(rng_seed)
    obs = {"images": {v: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for v in VIEWS},
           "state": rng.normal(size=39).astype(np.float32), "prompt": prompt}
    obs.update(extra)
    return obs


@pytest.fixture
def obs_factory():
    return make_obs
