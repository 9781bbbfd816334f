"""Sinks by name: where a pipeline's results go (``meshq.patterns.sink``).

``Sink(node, "resize-results")`` on any node collects the results of every
``Pipeline(..., sink="resize-results")``. Many sinks may share a name:
workers spread deliveries over them (least outstanding requests, as
requests do), preferring a sink on their own node. A delivery is a batch's
results; the worker answers its producer only after a sink took them, so
the producer's counters stay true (a batch no sink took counts as
``failed`` and ``undelivered`` there).

What a sink does not give: results already taken by a sink whose node then
dies are gone with it (the producer counted them completed); a worker that
dies after its sink took a batch but before answering leaves the batch
counted ``lost`` though the sink has it (with ``redeliver=True`` it may then
reach a sink twice); order across batches and workers is not kept.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import meshq
from meshq.deadlines import within

from .pipeline import Result
from .worker import serve_sink

__all__ = ["AsyncSink", "Sink"]


class _SinkBuffer:
    """Results waiting to be taken, bounded; shared by the sync and asyncio sinks."""

    def __init__(self, node: meshq.Node, name: str, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self.name = name
        self._max_pending = max_pending
        self._pending: collections.deque[Result] = collections.deque()
        self._lock = threading.Lock()
        self._wake: Callable[[], None] = lambda: None
        #: Results taken in; deliveries refused because ``max_pending`` were waiting.
        self.received = 0
        self.refused = 0
        serve_sink(node, name, self._accept)

    def _accept(self, stage: str, results: list[tuple[object, bool, object]]) -> None:
        # On the node's service thread (or a worker's, on this node).
        with self._lock:
            if len(self._pending) + len(results) > self._max_pending:
                self.refused += 1
                raise OverflowError(f"sink {self.name!r} holds {len(self._pending)} results")
            self._pending.extend(
                Result(task, True, value) if ok else Result(task, False, error=str(value))
                for task, ok, value in results
            )
            self.received += len(results)
        self._wake()

    def _take(self) -> Result | None:
        with self._lock:
            return self._pending.popleft() if self._pending else None

    def _take_all(self) -> Iterator[Result]:
        while (result := self._take()) is not None:
            yield result

    @property
    def pending(self) -> int:
        """Results received and not yet taken."""
        return len(self._pending)


class Sink(_SinkBuffer):
    """Collects pipeline results sent to ``name``; ``get()`` or ``results()`` takes them.

    At most ``max_pending`` results wait here: a delivery that would exceed
    it is refused (counted in ``refused``), and its producer counts those
    tasks as undelivered. Raises ValueError for a bad name.
    """

    def __init__(self, node: meshq.Node, name: str, *, max_pending: int = 100_000) -> None:
        self._arrived = threading.Condition()
        super().__init__(node, name, max_pending)
        self._wake = self._notify

    def _notify(self) -> None:
        with self._arrived:
            self._arrived.notify_all()

    def get(self, timeout: float | None = None) -> Result:
        """The next result; meshq.Timeout if none arrives within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._arrived:
            while (result := self._take()) is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise meshq.Timeout(f"no result in sink {self.name!r} within {timeout} s")
                self._arrived.wait(remaining)
        return result

    def results(self) -> Iterator[Result]:
        """The results received so far, oldest first (each is handed out once)."""
        return self._take_all()


class AsyncSink(_SinkBuffer):
    """The asyncio form of :class:`Sink`, on a :class:`meshq.AsyncNode`: ``await sink.get()``."""

    def __init__(self, node: meshq.AsyncNode, name: str, *, max_pending: int = 100_000) -> None:
        self._loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()
        super().__init__(node.node, name, max_pending)
        self._wake = self._notify

    def _notify(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._arrived.set)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more

    async def get(self, timeout: float | None = None) -> Result:
        """See :meth:`Sink.get`."""
        deadline = None if timeout is None else self._loop.time() + timeout
        while (result := self._take()) is None:
            self._arrived.clear()
            if self._pending:  # arrived between the take and the clear
                continue
            remaining = None if deadline is None else deadline - self._loop.time()
            if remaining is not None and remaining <= 0:
                raise meshq.Timeout(f"no result in sink {self.name!r} within {timeout} s")
            with contextlib.suppress(meshq.Timeout):  # checked above on the next round
                await within(self._arrived.wait(), remaining)
        return result

    def results(self) -> Iterator[Result]:
        """See :meth:`Sink.results`."""
        return self._take_all()
