"""Admission and micro-batching: at most N requests in flight (the rest get 503), and films that arrive together run as one forward pass on the one inference thread."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Gate", "MicroBatcher", "Job"]


class Gate:
    """Counts the requests admitted; :meth:`try_enter` refuses past ``limit`` instead of queueing (no pile-up).

    Event-loop only (not thread-safe): every call happens on the server's loop.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0

    def try_enter(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1


@dataclass(eq=False)
class Job:
    """One film waiting for its batch, and the future its probability arrives in."""

    image: np.ndarray
    future: asyncio.Future = field(repr=False)


@dataclass
class BatchStats:
    """How the batches came out (health shows them): batches run and films in them."""

    batches: int = 0
    films: int = 0
    largest: int = 0

    def add(self, size: int) -> None:
        self.batches += 1
        self.films += size
        self.largest = max(self.largest, size)

    def to_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "films": self.films, "largest": self.largest,
                "mean": round(self.films / self.batches, 2) if self.batches else None}


class MicroBatcher:
    """Gathers films into batches of up to ``max_batch`` and runs ``run_batch`` on ``executor``.

    A batch starts as soon as the model is free. Films that queued while the previous batch ran go together at
    once; a lone film waits at most ``max_wait_s`` for company, and only while ``expected()`` says more admitted
    requests are on their way (still uploading or decoding), so a single client never waits for nothing.
    """

    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray], executor: Executor, max_batch: int,
                 max_wait_s: float, expected: Callable[[], int] = lambda: 0):
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.expected = expected
        self.stats = BatchStats()
        self._pending: list[Job] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def submit(self, image: np.ndarray) -> Job:
        job = Job(image, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._arrived.set()
        return job

    def abandon(self, future: asyncio.Future) -> None:
        """Drop a film whose request gave up (time limit) if its batch has not started; a running batch finishes."""
        for job in self._pending:
            if job.future is future:
                self._pending.remove(job)
                future.cancel()
                return

    async def _gather(self) -> list[Job]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(self._pending) < min(self.max_batch, self.expected()):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        jobs, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
        return jobs

    async def _loop(self) -> None:
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            jobs = await self._gather()
            if not jobs:
                continue
            batch = np.stack([job.image for job in jobs])
            try:
                probabilities = await asyncio.wrap_future(self.executor.submit(self.run_batch, batch))
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure, the loop goes on
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.stats.add(len(jobs))
            for job, probability in zip(jobs, probabilities):
                if not job.future.done():
                    job.future.set_result(float(probability))
            await asyncio.sleep(0)  # let the answered requests leave the gate before the next batch counts them
