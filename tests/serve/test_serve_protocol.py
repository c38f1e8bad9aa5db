"""The policy server end to end over real sockets on 127.0.0.1: wire format, metadata, health,
inference equal to the in-process policy, determinism, batching, the bounded queue, the API key.

In-process references run the same loaded model (under the engine's lock), so "equal" means the
server added nothing and lost nothing between the client's arrays and the model.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from sim.imageops import resize_area
from wallwm_pretrain.client import PolicyClient, ServerBusy, ServerError
from wallwm_pretrain.wire import WireError, packb, unpackb

VIEWS = ["corner", "gripperPOV"]


def in_process(engine, obs_list, seed):
    """Plans of one noise stream seeded ``seed``, in order, computed without the server."""
    policy = engine.policy
    gen = policy.new_episode(seed)
    out = []
    with engine.lock:
        for obs in obs_list:
            frame = np.stack([resize_area(obs["images"][v], policy.image_size) for v in VIEWS])
            out.append(policy.plan(frame, obs["state"], obs["prompt"], gen))
    return out


def test_wire_round_trip_keeps_dtype_shape_and_values():
    msg = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.zeros((2, 0, 3), np.uint8),
           "c": np.array([1, -2], dtype=">i8"), "s": np.float32(2.5), "n": {"x": [1, "y", None]}, "t": "text"}
    back = unpackb(packb(msg))
    for key in "abc":
        assert back[key].dtype == msg[key].dtype and back[key].shape == msg[key].shape
        np.testing.assert_array_equal(back[key], msg[key])
    back["a"][0, 0] = 7  # decoded arrays are writable copies
    assert back["s"] == 2.5 and type(back["s"]) is np.float32
    assert back["n"] == {"x": [1, "y", None]} and back["t"] == "text"
    with pytest.raises(WireError, match="object"):
        packb({"o": np.array([object()])})
    with pytest.raises(WireError, match="not a msgpack message"):
        unpackb(b"\xc1garbage")


def test_metadata_health_and_infer_equal_in_process(engine, start_server, obs_factory, mw_shards):
    server = start_server()
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz") as resp:
        assert resp.status == 200 and resp.read() == b"OK\n"
    with PolicyClient(server.url) as client:
        meta = client.metadata
        assert meta["mode"] == "event" and meta["protocol"] == "wallwm-policy/1"
        assert (meta["action_dim"], meta["state_dim"], meta["horizon"], meta["fps"]) == (4, 39, 48, 80)
        assert meta["views"] == VIEWS and meta["image_size"] == [32, 32] and meta["checkpoint_step"] == 4
        stats = json.loads((mw_shards["L1"] / "index.json").read_text())["stats"]
        np.testing.assert_allclose(meta["normalization"]["action_mean"], stats["action"]["mean"], rtol=1e-6)
        np.testing.assert_allclose(meta["normalization"]["state_std"], stats["state"]["std"], rtol=1e-6)
        assert set(meta["observation"]) >= {"images", "state", "prompt"}

        obs = obs_factory(1, seed=5)
        reply = client.infer(obs)
        assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (48, 4)
        assert isinstance(reply["remaining_steps"], float)
        timing = reply["server_timing"]
        assert timing["batch_size"] == 1 and timing["infer_ms"] > 0 and timing["queue_ms"] >= 0
        (ref,) = in_process(engine, [obs], 5)
        # Same model, same noise, same batch of one: bit for bit.
        np.testing.assert_array_equal(reply["actions"], ref.actions)
        assert reply["remaining_steps"] == ref.remaining
        # Actions come back in robot units: de-normalised with the training statistics.
        assert not np.allclose(reply["actions"].mean(0), 0.0, atol=0.05)


def test_other_image_sizes_are_resized_on_the_server(start_server, obs_factory):
    server = start_server()
    big = obs_factory(2, size=64, seed=3)
    small = {**big, "images": {v: resize_area(img, 32) for v, img in big["images"].items()}}
    with PolicyClient(server.url) as client:
        np.testing.assert_array_equal(client.infer(big)["actions"], client.infer(small)["actions"])


def test_fixed_seed_is_deterministic_and_a_stream_continues(engine, start_server, obs_factory):
    server = start_server()
    a, b = obs_factory(3, seed=11), obs_factory(4, prompt="grasp the puck")
    with PolicyClient(server.url) as one, PolicyClient(server.url) as two:
        first = [one.infer(a)["actions"], one.infer(b)["actions"]]
        again = [two.infer(a)["actions"], two.infer(b)["actions"]]
        other = one.infer({**a, "seed": 12})["actions"]
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], first[1])  # the second request draws fresh noise ...
    assert not np.array_equal(first[0], other)  # ... and another seed other noise
    ref = in_process(engine, [a, b], 11)  # ... exactly as an in-process episode with seed 11
    np.testing.assert_array_equal(first[0], ref[0].actions)
    np.testing.assert_array_equal(first[1], ref[1].actions)


def test_batching_gives_each_client_its_own_answer(engine, start_server, obs_factory):
    # A long max wait makes the four requests meet in one batch however slowly they arrive;
    # it only bounds how long the batch waits, no speed is asserted.
    server = start_server(max_batch=4, max_wait_ms=60_000)
    requests = [obs_factory(10 + i, prompt=p, seed=100 + i)
                for i, p in enumerate(["reach for the puck", "grasp the puck", "lower the gripper", "move it to the goal"])]
    replies: list = [None] * 4
    clients = [PolicyClient(server.url) for _ in requests]

    def ask(i):
        replies[i] = clients[i].infer(requests[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    assert [r["server_timing"]["batch_size"] for r in replies] == [4, 4, 4, 4]
    for obs, reply in zip(requests, replies):
        (alone,) = in_process(engine, [obs], obs["seed"])
        # Batched matmuls round differently from single ones: measured differences ~2e-7 on
        # actions of order 1, so 1e-5 is float32 noise, far below any real difference.
        np.testing.assert_allclose(reply["actions"], alone.actions, atol=1e-5, rtol=0)
        assert reply["remaining_steps"] == pytest.approx(alone.remaining, abs=1e-5)
    for i in range(4):
        for j in range(i):
            assert np.abs(replies[i]["actions"] - replies[j]["actions"]).max() > 1e-3


def test_full_queue_is_answered_at_once_and_the_server_recovers(engine, start_server, obs_factory):
    server = start_server(max_batch=1, max_queue=2)
    replies: list = [None, None]
    clients = [PolicyClient(server.url) for _ in range(3)]

    def ask(i):
        replies[i] = clients[i].infer(obs_factory(i, seed=i))

    with engine.lock:  # the model is busy: admitted requests wait, a third finds the queue full
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        assert server.batcher.wait_admitted(2, timeout=60)
        with pytest.raises(ServerBusy, match=r"--max-queue 2"):
            clients[2].infer(obs_factory(2))
    for t in threads:
        t.join()
    assert all(r["actions"].shape == (48, 4) for r in replies)
    assert clients[2].infer(obs_factory(2))["actions"].shape == (48, 4)  # same connection, served now
    for c in clients:
        c.close()


def test_api_key_is_enforced(start_server, obs_factory):
    server = start_server(api_key="s3cret")
    with pytest.raises(ServerError, match="HTTP 401"):
        PolicyClient(server.url)
    with pytest.raises(ServerError, match="HTTP 401"):
        PolicyClient(server.url, api_key="wrong")
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz") as resp:
        assert resp.status == 200  # the health check stays open for load balancers
    with PolicyClient(server.url, api_key="s3cret") as client:
        assert client.metadata["server"]["api_key_required"] is True
        assert client.infer(obs_factory(0))["actions"].shape == (48, 4)


def test_binds_to_loopback_by_default(engine):
    from wallwm_pretrain.serve.__main__ import build_parser
    from wallwm_pretrain.serve.server import PolicyServer

    assert PolicyServer(engine).host == "127.0.0.1"
    assert build_parser().parse_args(["--ckpt", "x"]).host == "127.0.0.1"


class RecordingClient:
    """A real PolicyClient that also keeps every chunk it received, in order."""

    def __init__(self, client):
        self.client, self.chunks = client, []

    def infer(self, obs):
        reply = self.client.infer(obs)
        self.chunks.append(reply["actions"])
        return reply


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_chunk_runner_executes_chunks_while_the_next_is_requested(start_server, obs_factory, threshold):
    from wallwm_pretrain.client import ChunkRunner

    server = start_server()
    executed = []
    with PolicyClient(server.url) as client:
        rec = RecordingClient(client)
        observations = iter([obs_factory(0, seed=7)] + [obs_factory(i) for i in range(1, 50)])
        runner = ChunkRunner(rec, lambda: next(observations), executed.append, threshold=threshold)
        stats = runner.run(100)
    assert stats.steps == len(executed) == 100 and stats.requests == len(rec.chunks)
    if threshold == 0.0:
        # No overlap: chunk after chunk, each executed whole, nothing skipped.
        assert stats.requests == 3 and stats.skipped == 0
        np.testing.assert_array_equal(np.stack(executed), np.concatenate(rec.chunks)[:100])
    else:
        # The next chunk is asked for when 24 of 48 actions are left, so more requests than
        # without overlap; every executed action is one of a received chunk, in order.
        assert stats.requests >= 3
        flat = np.concatenate(rec.chunks)
        rows = [int(np.flatnonzero((flat == a).all(1))[0]) for a in executed]
        assert rows == sorted(rows) and rows[:24] == list(range(24))


def test_a_failure_inside_the_model_closes_only_that_connection(engine, start_server, obs_factory):
    server = start_server()
    with PolicyClient(server.url) as client:
        engine.policy.denoise_steps = 0  # a setting the sampler refuses only once a request runs
        try:
            with pytest.raises(ServerError, match=r"(?s)Traceback.*denoise_steps must be >= 1"):
                client.infer(obs_factory(0))
        finally:
            engine.policy.denoise_steps = 10
        with pytest.raises(ServerError, match="code 1011"):  # that connection was closed ...
            client.infer(obs_factory(0))
    with PolicyClient(server.url) as other:  # ... and the server goes on serving
        assert other.infer(obs_factory(0))["actions"].shape == (48, 4)
