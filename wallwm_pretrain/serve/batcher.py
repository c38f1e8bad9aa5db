"""Dynamic batching: requests of concurrent clients share one forward pass.

The event loop admits each request (or refuses it at once when ``max_queue`` requests are
already admitted and unanswered: a clear "server busy" answer instead of an unbounded wait) and
awaits a future. One worker thread takes the oldest request, waits up to ``max_wait_ms`` for up
to ``max_batch - 1`` more, runs them together and resolves each future with its own result.
The trade-off is the usual one: a lone request waits up to ``max_wait_ms`` for company that may
not come, and a batch is as slow as its slowest member, in exchange for fewer, wider forward
passes when many robots ask at once. ``max_batch=1`` turns batching off (no waiting at all).
The model runs on this one thread only, so the event loop stays free for I/O and checks.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any, Callable


class ServerBusy(RuntimeError):
    """The bounded queue is full; the client should retry later or slow down."""


class Batcher:
    """Runs ``run_batch(items) -> results`` (one result per item, same order) on batches.

    Args:
        run_batch: the model call; raising fails every request of that batch.
        max_batch: most requests per forward pass.
        max_wait_ms: how long the oldest request waits for more to join its batch.
        max_queue: most requests admitted and not yet answered (waiting or running).
    """

    def __init__(self, run_batch: Callable[[list], list], max_batch: int = 1, max_wait_ms: float = 0.0,
                 max_queue: int = 64) -> None:
        for name, value, low in (("max_batch", max_batch, 1), ("max_queue", max_queue, 1), ("max_wait_ms", max_wait_ms, 0)):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        self.run_batch, self.max_batch, self.max_wait = run_batch, max_batch, max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._queue: queue.Queue = queue.Queue()
        self._admitted = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="policy-batcher", daemon=True)
        self.batches = 0  # counters for the benchmark and the logs
        self.requests = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    @property
    def admitted(self) -> int:
        with self._cond:
            return self._admitted

    def wait_admitted(self, n: int, timeout: float | None = None) -> bool:
        """Block until at least ``n`` requests are admitted and unanswered (an event, not a poll)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._admitted >= n, timeout)

    async def submit(self, item: Any) -> tuple[Any, dict]:
        """The item's result and its timing (queue_ms, infer_ms, batch_size); raises ServerBusy."""
        with self._cond:
            if self._admitted >= self.max_queue:
                raise ServerBusy(f"server busy: {self._admitted} requests are waiting or running "
                                 f"(limit --max-queue {self.max_queue}); retry later")
            self._admitted += 1
            self._cond.notify_all()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((item, future, loop, time.perf_counter()))
        return await future

    def _take_batch(self, first) -> list:
        batch = [first]
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            left = deadline - time.perf_counter()
            try:
                nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:  # stop() while collecting: finish this batch, then stop
                self._queue.put(None)
                break
            batch.append(nxt)
        return batch

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = self._take_batch(first)
            start = time.perf_counter()
            try:
                results, error = self.run_batch([item for item, *_ in batch]), None
            except Exception as exc:  # delivered to every waiting client, the worker keeps going
                results, error = [None] * len(batch), exc
            infer_ms = (time.perf_counter() - start) * 1000.0
            self.batches += 1
            self.requests += len(batch)
            with self._cond:
                self._admitted -= len(batch)
                self._cond.notify_all()
            for (_, future, loop, queued), result in zip(batch, results):
                timing = {"queue_ms": (start - queued) * 1000.0, "infer_ms": infer_ms, "batch_size": len(batch)}
                loop.call_soon_threadsafe(_resolve, future, result, timing, error)


def _resolve(future: asyncio.Future, result, timing: dict, error: Exception | None) -> None:
    if future.done():  # the client went away while its request ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result((result, timing))
