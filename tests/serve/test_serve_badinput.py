"""Every kind of bad request gets an error that names the key and what was expected, and the
server keeps serving: the same connection answers the next good request, other clients too."""

from __future__ import annotations

import numpy as np
import pytest
from websockets.sync.client import connect

from wallwm_pretrain.client import PolicyClient, ServerError
from wallwm_pretrain.serve.wire import packb, unpackb


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


def test_oversized_requests(start_server, obs_factory):
    server = start_server(max_request_bytes=64 << 10)
    good = obs_factory(0)
    # ~70 KB: over the 64 KiB limit, under twice it: answered with an error, connection kept.
    big = {**good, "images": {**good["images"], "corner": np.zeros((150, 150, 3), np.uint8)}}
    # ~240 KB: over twice the limit: not even read; that one connection is closed (1009).
    huge = {**good, "images": {v: np.zeros((200, 200, 3), np.uint8) for v in good["images"]}}
    with PolicyClient(server.url) as client, PolicyClient(server.url) as other:
        with pytest.raises(ServerError, match=r"over the server's limit of 65536 bytes.*uint8 \[32, 32, 3\]"):
            client.infer(big)
        assert client.infer(good)["actions"].shape == (48, 4)
        with pytest.raises(ServerError, match="code 1009"):
            client.infer(huge)
        assert other.infer(good)["actions"].shape == (48, 4)  # other clients are unaffected
