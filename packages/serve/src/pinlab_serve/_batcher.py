"""Micro-batching: concurrent image queries share one encoder call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import numpy as np

from pinlab_data.contracts import Float32Array, ImageArray

Embed = Callable[[ImageArray], Float32Array]


class MicroBatcher:
    """Collects images for up to `window_s` (or `max_batch` of them) and embeds them at once.

    The encoder runs in a worker thread so the event loop keeps accepting requests (and
    queueing the next batch) while a batch is being embedded.
    """

    def __init__(
        self, embed: Embed, window_s: float, max_batch: int, on_batch: Callable[[int], None]
    ) -> None:
        self._embed = embed
        self._window_s = window_s
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._queue: asyncio.Queue[tuple[ImageArray, asyncio.Future[Float32Array]]] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def embed(self, image: ImageArray) -> Float32Array:
        """The (d,) embedding of one (S, S, 3) image, computed in a batch with its neighbours."""
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run(self._queue))
        assert self._queue is not None
        future: asyncio.Future[Float32Array] = asyncio.get_running_loop().create_future()
        await self._queue.put((image, future))
        return await future

    async def _run(
        self, queue: asyncio.Queue[tuple[ImageArray, asyncio.Future[Float32Array]]]
    ) -> None:
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
            live = [(img, fut) for img, fut in batch if not fut.done()]
            if not live:
                continue
            self._on_batch(len(live))
            try:
                vectors = await asyncio.to_thread(self._embed, np.stack([img for img, _ in live]))
            except Exception as exc:  # each waiting request reports the failure itself
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for row, (_, fut) in enumerate(live):
                if not fut.done():
                    fut.set_result(vectors[row])

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
