"""The stages' streaming helpers: look-ahead order and bound, and the writers' fan-out."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from exo2micro.stages.streaming import FanOut, lookahead, ordered_map


def test_lookahead_keeps_order_and_bounds_the_items_in_flight() -> None:
    started: list[int] = []
    seen: list[tuple[int, list[int]]] = []

    def start(item: int) -> Callable[[], int]:
        started.append(item)
        return lambda: item * 10

    for value in lookahead(start, range(5), 2):
        seen.append((value, list(started)))
    assert [v for v, _ in seen] == [0, 10, 20, 30, 40]
    # the next item is started before the current one is handed over, never more
    assert [len(s) for _, s in seen] == [2, 3, 4, 5, 5]


@pytest.mark.parametrize("threads", [0, 3])
def test_ordered_map_equals_map(threads: int) -> None:
    pool = ThreadPoolExecutor(threads) if threads else None
    try:
        assert list(ordered_map(pool, lambda x: x * x, range(20), 4)) == [x * x for x in range(20)]
    finally:
        if pool is not None:
            pool.shutdown()


def test_fan_out_feeds_every_writer_its_blocks() -> None:
    got: dict[int, list[float]] = {0: [], 1: []}

    def writer(i: int) -> Callable[[Iterable[np.ndarray]], None]:
        return lambda blocks: got[i].extend(float(b.sum()) for b in blocks)

    with FanOut([writer(0), writer(1)], depth=1) as fan:
        for k in range(4):
            fan.put([np.full(3, k), np.full(3, -k)])
    assert got == {0: [0.0, 3.0, 6.0, 9.0], 1: [0.0, -3.0, -6.0, -9.0]}


def test_fan_out_reraises_a_writers_error() -> None:
    def broken(blocks: Iterable[np.ndarray]) -> None:
        next(iter(blocks))
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), FanOut([broken], depth=1) as fan:
        for _ in range(10):
            fan.put([np.zeros(2)])
