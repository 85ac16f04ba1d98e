"""A queue that a gRPC stream consumes as its request (or response) iterator.

gRPC's sync API pulls outgoing messages from an iterator on its own thread; writers on other
threads put into this queue, and ``close`` ends the iterator, which half-closes the stream.
"""

from __future__ import annotations

import queue
from typing import Generic, Iterator, TypeVar, Union

T = TypeVar("T")


class _End:
    pass


_END = _End()


class WriteQueue(Generic[T]):
    def __init__(self) -> None:
        self._queue: "queue.SimpleQueue[Union[T, _End]]" = queue.SimpleQueue()

    def put(self, item: T) -> None:
        self._queue.put(item)

    def backlog(self) -> int:
        """Items put and not yet taken by the stream (approximate, as queue.qsize)."""
        return self._queue.qsize()

    def close(self) -> None:
        self._queue.put(_END)

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if isinstance(item, _End):
                return
            yield item
