"""The websocket policy server: openpi's message shape, dynamic batching, checks, an API key.

Per connection: the server sends its metadata (one msgpack frame), then answers each binary
msgpack observation with a binary msgpack action dict, in order. Problems the client can fix
(a bad key, shape, dtype, NaN, unknown view, an oversized request, a full queue) are answered
with a text frame ``error: <key>: <what was expected>`` and the connection stays open, so a
robot can correct itself; openpi clients raise on any text frame, which is the same signal.
Oversized requests get that reply up to a hard ceiling on one frame (``max_frame_bytes``, by
default 8x the request limit, stated in the metadata): the websocket library buffers a whole
frame before the server sees it, so a frame beyond the ceiling is not read and only that
connection is closed (code 1009, message too big). The ceiling bounds the memory one client can
make the server hold.
An unexpected failure inside the model is answered with its traceback as a text frame and that
one connection is closed (code 1011); other clients keep being served. ``GET /healthz`` is
plain HTTP and needs no key; everything else needs ``Authorization: Api-Key <key>`` when the
server has one. The server binds to 127.0.0.1 unless told otherwise: a policy moves a robot,
so exposing it is a deliberate choice.

Noise: each connection has its own sampling generator (seeded from the server's seed and the
connection's number); a request with ``seed`` restarts it. A client that sends the seed at the
start of an episode therefore gets the same plans as the in-process evaluation with that seed,
whatever else the server is doing (batching does not mix noise between clients).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import threading
import traceback
from http import HTTPStatus
from typing import Any, Callable

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from wallwm_pretrain.serve.batcher import Batcher, ServerBusy
from wallwm_pretrain.serve.engine import PolicyEngine
from wallwm_pretrain.serve.spec import RequestError
from wallwm_pretrain.wire import WireError, packb, unpackb

log = logging.getLogger("wallwm_pretrain.serve")


class PolicyServer:
    """Serves one :class:`PolicyEngine`.

    Args:
        engine: the model.
        host, port: where to listen (port 0: any free port; see :attr:`port` once started).
        api_key: when set, connections must send ``Authorization: Api-Key <api_key>``.
        max_batch, max_wait_ms, max_queue: dynamic batching (see :mod:`.batcher`).
        max_request_bytes: larger requests are answered with an error and the connection stays open.
        seed: base of the per-connection noise generators.
        max_frame_bytes: the hard ceiling on one frame (default ``FRAME_CEILING`` x
            ``max_request_bytes``); a larger frame is not read and its connection is closed with
            code 1009 (message too big).
    """

    FRAME_CEILING = 8

    def __init__(self, engine: PolicyEngine, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                 max_batch: int = 1, max_wait_ms: float = 0.0, max_queue: int = 64,
                 max_request_bytes: int = 8 << 20, seed: int = 0, max_frame_bytes: int | None = None) -> None:
        if max_request_bytes < 1024:
            raise ValueError(f"max_request_bytes must be at least 1024, got {max_request_bytes}")
        if max_frame_bytes is None:
            max_frame_bytes = self.FRAME_CEILING * max_request_bytes
        if max_frame_bytes < max_request_bytes:
            raise ValueError(f"max_frame_bytes ({max_frame_bytes}) must be at least max_request_bytes "
                             f"({max_request_bytes}): requests between the two get an error reply")
        self.engine, self.host, self.port, self.api_key = engine, host, port, api_key
        self.max_request_bytes, self.max_frame_bytes, self.seed = max_request_bytes, max_frame_bytes, seed
        self.batcher = Batcher(engine.run_batch, max_batch, max_wait_ms, max_queue)
        self.metadata = engine.metadata(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                                        max_request_bytes=max_request_bytes, max_frame_bytes=max_frame_bytes,
                                        api_key_required=api_key is not None)
        self._connections = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None

    # --- HTTP side of the handshake: health check and API key ---------------------------------

    def _process_request(self, connection: ServerConnection, request) -> Any:
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "OK\n")
        if self.api_key is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Api-Key {self.api_key}".encode()):
                return connection.respond(HTTPStatus.UNAUTHORIZED,
                                          "missing or wrong API key: send the header 'Authorization: Api-Key <key>'\n")
        return None

    # --- one connection -------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        generator = self.engine.new_generator(self.seed * 1_000_003 + next(self._connections))
        await ws.send(packb(self.metadata))
        try:
            async for message in ws:
                reply = await self._answer(message, generator)
                if isinstance(reply, BaseException):
                    await ws.send("".join(traceback.format_exception(reply)))
                    await ws.close(1011, "internal error")
                    return
                await ws.send(reply)
        except ConnectionClosed:
            pass  # the client went away; nothing to answer

    async def _answer(self, message: bytes | str, generator) -> bytes | str | BaseException:
        if isinstance(message, str):
            return "error: requests must be binary msgpack frames (got a text frame)"
        if len(message) > self.max_request_bytes:
            h, w = self.engine.spec.image_size
            return (f"error: request of {len(message)} bytes is over the server's limit of "
                    f"{self.max_request_bytes} bytes (--max-request-mb); the model needs images uint8 "
                    f"[{h}, {w}, 3] per view and a state of {self.engine.spec.state_dim} floats")
        try:
            obs = self.engine.spec.check(unpackb(message))
        except (WireError, RequestError) as exc:
            return f"error: {exc}"
        if obs.seed is not None:
            generator.manual_seed(obs.seed)
        try:
            reply, timing = await self.batcher.submit((obs, generator))
        except ServerBusy as exc:
            return f"error: {exc}"
        except Exception as exc:  # a model failure: reported with its traceback, see the module doc
            log.exception("inference failed")
            return exc
        reply["server_timing"] = timing
        return packb(reply)

    # --- running --------------------------------------------------------------------------------

    async def serve_until_stopped(self, on_ready: Callable[[int], None] | None = None) -> None:
        """Listen until :meth:`stop` (or the task is cancelled); ``on_ready(port)`` once bound."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.batcher.start()
        try:
            async with serve(self._handle, self.host, self.port, process_request=self._process_request,
                             max_size=self.max_frame_bytes, compression=None) as server:
                self.port = server.sockets[0].getsockname()[1]
                if on_ready:
                    on_ready(self.port)
                await self._stop.wait()
        finally:
            self.batcher.stop()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def start_in_thread(self, timeout: float = 30.0) -> int:
        """Serve from a background thread (tests, benchmarks); returns the bound port."""

        def run() -> None:
            try:
                asyncio.run(self.serve_until_stopped(lambda _: self._ready.set()))
            except BaseException as exc:  # surfaced to the caller of start_in_thread
                self._failed = exc
                self._ready.set()

        self._thread = threading.Thread(target=run, name="policy-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the policy server did not start within {timeout} s")
        if self._failed is not None:
            raise RuntimeError(f"the policy server failed to start: {self._failed}") from self._failed
        return self.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"
