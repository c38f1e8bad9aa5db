"""Every kind of bad request gets an error that names the key and what was expected, and the
server keeps serving: the same connection answers the next good request, other clients too."""

from __future__ import annotations

import numpy as np
import pytest
from websockets.sync.client import connect

from wallwm_pretrain.client import PolicyClient, ServerError
from wallwm_pretrain.wire import packb, unpackb


def _drop(key):
    return lambda o: {k: v for k, v in o.items() if k != key}


def _image(view, value):
    return lambda o: {**o, "images": {**o["images"], view: value}}


BAD = [
    ("missing images", _drop("images"), ["missing key 'images'", "corner, gripperPOV"]),
    ("missing state", _drop("state"), ["missing key 'state'", "float32 [39]"]),
    ("missing prompt", _drop("prompt"), ["missing key 'prompt'", "next event's description"]),
    ("missing view", lambda o: {**o, "images": {"corner": o["images"]["corner"]}}, ["missing key 'images.gripperPOV'"]),
    ("unknown view", _image("topview", np.zeros((32, 32, 3), np.uint8)),
     ["unknown view 'topview'", "corner, gripperPOV"]),
    ("unknown key", lambda o: {**o, "imgs": 1}, ["unknown key 'imgs'", "did you mean 'images'"]),
    ("image dtype", _image("corner", np.zeros((32, 32, 3), np.float32)), ["images.corner", "float32", "expected uint8"]),
    ("image shape", _image("gripperPOV", np.zeros((32, 32), np.uint8)), ["images.gripperPOV", "(32, 32)", "[H, W, 3]"]),
    ("image type", _image("corner", "pixels"), ["images.corner", "numpy uint8 array", "str"]),
    ("state shape", lambda o: {**o, "state": np.zeros(7, np.float32)}, ["state", "(7,)", "expected (39,)"]),
    ("state dtype", lambda o: {**o, "state": np.zeros(39, np.int64)}, ["state", "int64", "float"]),
    ("state NaN", lambda o: {**o, "state": np.where(np.arange(39) == 4, np.nan, o["state"])},
     ["state", "NaN", "index 4"]),
    ("prompt type", lambda o: {**o, "prompt": 3}, ["prompt", "non-empty string", "int"]),
    ("seed", lambda o: {**o, "seed": -1}, ["seed", "integer in [0, 2**63)"]),
    ("not a map", lambda o: [1, 2], ["must be a map", "list"]),
]


def test_each_bad_request_is_named_and_the_connection_keeps_working(start_server, obs_factory):
    server = start_server()
    good = obs_factory(0)
    with PolicyClient(server.url) as client:
        for name, mutate, needles in BAD:
            with pytest.raises(ServerError) as err:
                client.infer(mutate(good))
            for needle in needles:
                assert needle in str(err.value), f"{name}: {needle!r} not in {str(err.value)!r}"
            assert client.infer(good)["actions"].shape == (48, 4), name  # still served


def test_frames_that_are_not_requests(start_server):
    server = start_server()
    with connect(server.url) as ws:
        unpackb(ws.recv())  # metadata first
        ws.send("hello")
        assert ws.recv() == "error: requests must be binary msgpack frames (got a text frame)"
        ws.send(b"\xc1\xc1")
        assert ws.recv().startswith("error: the frame is not a msgpack message")
        ws.send(packb({"images": {"corner": {b"__ndarray__": True, b"data": b"12", b"dtype": "<f4", b"shape": [9]}}}))
        assert "malformed numpy array" in ws.recv()


def _sized(obs: dict, nbytes: int) -> dict:
    """``obs`` with one unknown key padded so that the whole frame is ``nbytes`` bytes or a few more."""
    pad = nbytes - len(packb(obs))
    return {**obs, "padding": np.zeros(pad, np.uint8)}


@pytest.mark.parametrize("factor", [1.5, 3.0])
def test_oversized_requests_get_the_error_reply_and_the_connection_stays_open(start_server, obs_factory, factor):
    limit = 64 << 10
    server = start_server(max_request_bytes=limit)
    assert server.metadata["server"]["max_request_bytes"] == limit
    assert server.metadata["server"]["max_frame_bytes"] == 8 * limit  # the stated ceiling
    good = obs_factory(0)
    big = _sized(good, int(factor * limit))
    size = len(packb(big))
    assert factor * limit <= size < factor * limit + 64
    with connect(server.url) as ws:  # the raw frames: the documented text frame, then service goes on
        unpackb(ws.recv())
        ws.send(packb(big))
        reply = ws.recv()
        assert isinstance(reply, str) and reply.startswith(
            f"error: request of {size} bytes is over the server's limit of {limit} bytes (--max-request-mb)"), reply
        assert "uint8 [32, 32, 3]" in reply
        ws.send(packb(good))
        assert unpackb(ws.recv())["actions"].shape == (48, 4)
    with PolicyClient(server.url) as client:  # the client raises on the text frame and keeps its connection
        with pytest.raises(ServerError, match=f"request of {size} bytes is over the server's limit"):
            client.infer(big)
        assert client.infer(good)["actions"].shape == (48, 4)


def test_frames_over_the_stated_ceiling_close_only_that_connection(start_server, obs_factory):
    server = start_server(max_request_bytes=64 << 10, max_frame_bytes=128 << 10)
    assert server.metadata["server"]["max_frame_bytes"] == 128 << 10
    good = obs_factory(0)
    with PolicyClient(server.url) as client, PolicyClient(server.url) as other:
        with pytest.raises(ServerError, match=r"over the server's limit of 65536 bytes.*uint8 \[32, 32, 3\]"):
            client.infer(_sized(good, 100 << 10))  # under the ceiling: a reply
        assert client.infer(good)["actions"].shape == (48, 4)
        with pytest.raises(ServerError, match="code 1009"):
            client.infer(_sized(good, 129 << 10))  # over the ceiling: not read, connection closed
        assert other.infer(good)["actions"].shape == (48, 4)  # other clients are unaffected


def test_a_ceiling_below_the_request_limit_is_refused(engine):
    from wallwm_pretrain.serve.server import PolicyServer

    with pytest.raises(ValueError, match=r"max_frame_bytes \(2048\) must be at least max_request_bytes \(4096\)"):
        PolicyServer(engine, max_request_bytes=4096, max_frame_bytes=2048)
