"""Robot-side client of the policy server (``python -m wallwm_pretrain.serve``).

    from wallwm_pretrain.client import PolicyClient

    with PolicyClient("ws://127.0.0.1:8000") as policy:
        print(policy.metadata["views"], policy.metadata["image_size"])
        reply = policy.infer({"images": {"corner": rgb, "gripperPOV": wrist},
                              "state": state, "prompt": "reach for the puck", "seed": 0})
        actions = reply["actions"]  # float32 [T, A] in robot units

Synchronous and small on purpose: it needs numpy, msgpack and websockets only (no torch), so it
runs on a robot's computer as it is. One request at a time per client; :class:`ChunkRunner`
overlaps the next request with executing the current chunk. openpi's clients speak the same
protocol; this one also turns the server's text-frame errors into :class:`ServerError`.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from wallwm_pretrain.wire import packb, unpackb


class ServerError(RuntimeError):
    """The server refused or failed a request; the message is the server's."""


class ServerBusy(ServerError):
    """The server's queue is full; retrying later may succeed."""


class PolicyClient:
    """A connection to a policy server.

    Args:
        uri: ``ws://host:port``.
        api_key: sent as ``Authorization: Api-Key <api_key>`` when the server requires one.
        open_timeout: seconds to wait for the connection and the metadata.
    """

    def __init__(self, uri: str = "ws://127.0.0.1:8000", api_key: str | None = None, open_timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        try:
            self._ws = connect(uri, additional_headers=headers, max_size=None, compression=None,
                               open_timeout=open_timeout)
        except InvalidStatus as exc:
            body = exc.response.body.decode(errors="replace").strip() if exc.response.body else ""
            raise ServerError(f"{uri} refused the connection: HTTP {exc.response.status_code} {body}") from None
        except OSError as exc:
            raise ServerError(f"cannot connect to {uri}: {exc.strerror or exc}") from None
        self.uri = uri
        self._metadata = unpackb(self._recv())

    @property
    def metadata(self) -> dict[str, Any]:
        """What the server sent first: mode, dims, fps, views, image size, normalisation, step."""
        return self._metadata

    def _recv(self) -> bytes:
        try:
            message = self._ws.recv()
        except ConnectionClosed as exc:
            raise self._closed(exc) from None
        if isinstance(message, str):
            cls = ServerBusy if message.startswith("error: server busy") else ServerError
            raise cls(message.removeprefix("error: "))
        return message

    def infer(self, observation: dict[str, Any]) -> dict[str, Any]:
        """One observation -> the server's action dict (``actions``, ``server_timing``, ...)."""
        try:
            self._ws.send(packb(observation))
        except ConnectionClosed as exc:  # the server closed it before this request (found on send)
            raise self._closed(exc) from None
        return unpackb(self._recv())

    def _closed(self, exc: ConnectionClosed) -> ServerError:
        """One message for a closed connection, whether the send or the receive found it."""
        code, reason = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else ("none", "no reason")
        return ServerError(f"{self.uri} closed the connection (code {code}: {reason})")

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> "PolicyClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class RunStats:
    steps: int = 0  # actions executed
    requests: int = 0  # chunks requested
    stalls: int = 0  # times the action queue ran dry and the robot waited for a chunk
    skipped: int = 0  # leading actions of new chunks dropped because their time had passed


class ChunkRunner:
    """Executes the current chunk while the next one is being computed (asynchronous inference).

    When the actions left in the current chunk fall to ``threshold`` times its length (LeRobot's
    ``chunk_size_threshold``), a fresh observation is sent in the background. When its chunk
    arrives, the actions executed since that observation are dropped from its front (they
    belong to moments already past) and the rest replaces the queue. ``threshold=0`` waits for
    each chunk to run out before asking (no overlap, as plain synchronous execution); ``1``
    asks again right after every chunk arrives. The trade-off: overlap hides the server's
    latency from the robot, but the executed chunk was planned from an older observation.

    Args:
        client: a connected :class:`PolicyClient` (used from one background thread).
        observe: returns the current observation dict.
        act: executes one action (e.g. sends it to the robot and waits for the control tick).
        threshold: fraction of the chunk left at which the next request is sent, in [0, 1].
    """

    def __init__(self, client: PolicyClient, observe: Callable[[], dict], act: Callable[[np.ndarray], None],
                 threshold: float = 0.5) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.client, self.observe, self.act, self.threshold = client, observe, act, threshold
        self.stats = RunStats()
        self.wait_s = 0.0

    def run(self, steps: int, stop: Callable[[], bool] = lambda: False) -> RunStats:
        """Execute ``steps`` actions (fewer if ``stop()`` turns true); returns the counters."""
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="policy-request") as pool:
            queue: deque = deque()
            chunk_len = 1
            pending: concurrent.futures.Future | None = None
            sent_at = 0  # step at which the pending observation was taken
            while self.stats.steps < steps and not stop():
                if pending is None and len(queue) <= self.threshold * chunk_len:
                    pending, sent_at = pool.submit(self.client.infer, self.observe()), self.stats.steps
                    self.stats.requests += 1
                if pending is not None and (pending.done() or not queue):
                    if not queue and self.stats.steps:  # the first chunk is always waited for
                        self.stats.stalls += 1
                    started = time.perf_counter()
                    actions = pending.result()["actions"]
                    self.wait_s += time.perf_counter() - started
                    pending = None
                    late = self.stats.steps - sent_at
                    chunk_len = len(actions)
                    queue = deque(actions[min(late, len(actions)):])
                    self.stats.skipped += min(late, len(actions))
                    if not queue:
                        continue
                self.act(queue.popleft())
                self.stats.steps += 1
        return self.stats
