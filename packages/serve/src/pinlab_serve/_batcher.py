"""Micro-batching: concurrent requests share one model call (image embeddings, session scores)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Collects inputs for up to `window_s` (or `max_batch` of them) and runs `run_batch` on
    them at once; `window_s=0` batches only what is already waiting, so a lone request never
    waits, and under load each model call takes everything that queued during the last one.

    The model runs in a worker thread so the event loop keeps accepting requests (and
    queueing the next batch) while a batch is computed.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R]],
        window_s: float,
        max_batch: int,
        on_batch: Callable[[int], None],
    ) -> None:
        self._run_batch = run_batch
        self._window_s = window_s
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """`run_batch`'s result for `item`, computed in a batch with its neighbours."""
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run(self._queue))
        assert self._queue is not None
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _run(self, queue: asyncio.Queue[tuple[T, asyncio.Future[R]]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self._window_s
            while len(batch) < self._max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            while len(batch) < self._max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            live = [(item, fut) for item, fut in batch if not fut.done()]
            if not live:
                continue
            self._on_batch(len(live))
            try:
                results = await asyncio.to_thread(self._run_batch, [item for item, _ in live])
            except Exception as exc:  # each waiting request reports the failure itself
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for result, (_, fut) in zip(results, live, strict=True):
                if not fut.done():
                    fut.set_result(result)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
