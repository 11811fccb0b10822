"""Streaming helpers of the stages: bounded look-ahead over a thread pool, and fan-out of row
blocks to several writer threads.

The stages process full-resolution images as a stream of row blocks (``TILE`` rows each) and
never hold a whole image. Two patterns recur, and both live here so that every stage bounds
its memory the same way:

* **Look-ahead** (:func:`lookahead`, :func:`ordered_map`): the work of the next blocks runs on
  a thread pool while the caller consumes the current one (merges its histograms, encodes and
  writes it). Results come back in input order, and at most ``ahead`` blocks are started and
  not yet handed to the caller, so memory is ``ahead`` blocks' results plus the one being
  consumed, whatever the image size. NumPy, OpenCV and the codecs release the GIL, so threads
  give real parallelism; the readers serialise their own file access.
* **Fan-out** (:class:`FanOut`): one producer hands each block to several pull-style writers
  (``writer(blocks)``: :func:`exo2micro.io.tiffio.write_tiled`,
  :func:`exo2micro.io.fitsio.write_streamed`), each running in its own thread on a bounded queue,
  so encoding several files overlaps and a slow writer holds back the producer instead of
  letting blocks pile up in memory.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")

#: A pull-style writer: consumes an iterable of row blocks and writes one file from them.
Writer = Callable[[Iterable[np.ndarray]], None]


def lookahead(start: Callable[[T], Callable[[], R]], items: Iterable[T], ahead: int
              ) -> Iterator[R]:
    """The results of ``items`` in order, each item started ahead of its use.

    ``start(item)`` begins the item's work (typically submits it to a pool) and returns a
    function that waits for it and returns its result. Items are started in order; once
    ``ahead`` of them are started and not yet yielded, the oldest is waited for and yielded.
    With ``ahead = 2`` the next item therefore runs while the caller consumes the current one
    (double buffering), and never more than two items' results exist besides the one the
    caller holds. A failed item raises when its result is due, in order.
    """
    pending: deque[Callable[[], R]] = deque()
    for item in items:
        pending.append(start(item))
        if len(pending) >= ahead:
            yield pending.popleft()()
    while pending:
        yield pending.popleft()()


def ordered_map(pool: ThreadPoolExecutor | None, fn: Callable[[T], R], items: Iterable[T],
                ahead: int) -> Iterator[R]:
    """``map(fn, items)`` in order, with at most ``ahead`` items in flight on ``pool``
    (:func:`lookahead`); without a pool, plain ``map`` in the caller's thread."""
    if pool is None:
        return map(fn, items)

    submit = pool.submit

    def start(item: T) -> Callable[[], R]:
        future: Future[R] = submit(fn, item)
        return future.result

    return lookahead(start, items, ahead)


class _Aborted(Exception):
    """Raised inside a writer when the producer failed, so the writer discards its file."""


_END = object()
_ABORT = object()


class FanOut:
    """Feeds row blocks to several pull-style writers (``writer(blocks)``), each in a thread.

    ``put(blocks)`` hands block ``i`` to writer ``i``. Each writer has its own queue of
    ``depth`` blocks, so at most ``depth`` blocks per writer wait in memory besides the one it
    is encoding, and ``put`` blocks while a writer's queue is full (``depth = 1``, what the
    stages use, keeps one block queued per writer). On leaving the ``with`` block normally
    every writer finishes its file; on an exception every writer is aborted (its temporary
    file removed by :func:`exo2micro.io.atomic.atomic_path`). A writer's own error is re-raised in
    the producer, at its next ``put`` or on leaving the ``with`` block.
    """

    def __init__(self, writers: Sequence[Writer], depth: int = 2) -> None:
        self._queues: list[queue.Queue[Any]] = [queue.Queue(maxsize=depth) for _ in writers]
        self._errors: list[BaseException | None] = [None] * len(writers)
        self._threads = [threading.Thread(target=self._run, args=(i, w), daemon=True,
                                          name=f"exo2micro-writer-{i}")
                         for i, w in enumerate(writers)]
        for t in self._threads:
            t.start()

    def _stream(self, i: int) -> Iterator[np.ndarray]:
        while True:
            item = self._queues[i].get()
            if item is _END:
                return
            if item is _ABORT:
                raise _Aborted
            yield item

    def _run(self, i: int, writer: Writer) -> None:
        try:
            writer(self._stream(i))
        except _Aborted:
            pass
        except BaseException as exc:
            self._errors[i] = exc

    def _put(self, i: int, item: Any) -> bool:
        """Queue ``item`` for writer ``i``; False when that writer has stopped."""
        while self._threads[i].is_alive():
            try:
                self._queues[i].put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def put(self, blocks: Sequence[np.ndarray]) -> None:
        """Hand ``blocks[i]`` to writer ``i``; raises the error of a writer that stopped."""
        for i, block in enumerate(blocks):
            if not self._put(i, block):
                raise self._errors[i] or RuntimeError(
                    f"writer {i} stopped before its image was complete")

    def __enter__(self) -> FanOut:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        token = _END if exc_type is None else _ABORT
        for i in range(len(self._threads)):
            self._put(i, token)
        for t in self._threads:
            t.join()
        if exc_type is None:
            for err in self._errors:
                if err is not None:
                    raise err
