"""Dynamic batching: concurrent infer requests for one model version share one forward pass.

As Triton's dynamic batcher does: requests queue per model version; a batch goes to the
model when it holds ``max_batch`` rows or when its oldest request has waited
``max_delay`` seconds, whichever comes first. While a batch runs, new requests queue up
and form the next one, so under load batches fill without waiting at all. A request
larger than ``max_batch`` runs on its own; requests are never split.

The forward pass runs in a worker thread (the gateway's executor), never on the event
loop. No task is left running while the queue is empty, so a version that was swapped
out is simply dropped once its last request has its answer.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BatchResult:
    """One request's rows of the batch's outputs (numpy arrays, first axis = the request's rows)."""

    logits: np.ndarray
    scores: np.ndarray | None = None


Forward = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
BatchHook = Callable[[int, float], None]  # (rows, seconds) after every forward pass


class DynamicBatcher:
    def __init__(self, forward: Forward, executor: Executor, *, max_batch: int = 32, max_delay: float = 0.002,
                 on_batch: BatchHook | None = None):
        if max_batch < 1 or max_delay < 0:
            raise ValueError("max_batch must be >= 1 and max_delay >= 0")
        self.forward, self.executor = forward, executor
        self.max_batch, self.max_delay = max_batch, max_delay
        self.on_batch = on_batch
        self._queue: deque[tuple[np.ndarray, asyncio.Future, float]] = deque()
        self._rows = 0
        self._full: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def submit(self, x: np.ndarray) -> BatchResult:
        """Queue ``x`` (rows first) and wait for its rows of the outputs."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((x, future, time.monotonic()))
        self._rows += len(x)
        if self._full is None:
            self._full = asyncio.Event()
        if self._rows >= self.max_batch:
            self._full.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return await future

    @property
    def idle(self) -> bool:
        return not self._queue and (self._task is None or self._task.done())

    async def _drain(self) -> None:
        while self._queue:
            wait = self._queue[0][2] + self.max_delay - time.monotonic()
            if self._rows < self.max_batch and wait > 0:
                self._full.clear()
                try:
                    await asyncio.wait_for(self._full.wait(), wait)
                except asyncio.TimeoutError:
                    pass
            batch = self._take()
            live = [(x, f) for x, f, _ in batch if not f.done()]  # a cancelled request needs no answer
            if not live:
                continue
            try:
                started = time.perf_counter()
                logits, scores = await asyncio.get_running_loop().run_in_executor(
                    self.executor, self.forward, np.concatenate([x for x, _ in live]) if len(live) > 1 else live[0][0])
                if self.on_batch is not None:
                    self.on_batch(sum(len(x) for x, _ in live), time.perf_counter() - started)
            except BaseException as exc:  # the requests get the error; the batcher goes on
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
                if not isinstance(exc, Exception):
                    raise
                continue
            start = 0
            for x, future in live:
                stop = start + len(x)
                if not future.done():
                    future.set_result(BatchResult(logits[start:stop], None if scores is None else scores[start:stop]))
                start = stop

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future, float]]:
        batch = [self._queue.popleft()]
        rows = len(batch[0][0])
        while self._queue and rows + len(self._queue[0][0]) <= self.max_batch:
            item = self._queue.popleft()
            rows += len(item[0])
            batch.append(item)
        self._rows -= sum(len(x) for x, _, _ in batch)
        return batch
