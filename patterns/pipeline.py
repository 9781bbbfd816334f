"""Named pipelines of workers, on the public request/reply API (``meshq.patterns.pipeline``).

``Worker(node, "resize", handler)`` (or ``@node.worker("resize")``) offers a
stage on any node; ``Pipeline(node, "resize")`` pushes tasks to every worker
of that name the mesh knows, as workers come and go. Tasks travel in
batches (one request per batch, answered with one outcome per task), so the
per-task cost is far below one request each. The batch format and the
worker's half live in the core (meshq/workers.py) so that the core's
``@node.worker`` decorator needs nothing from here.

Flow control is by credit: at most ``credit`` batches are in flight per
worker; when every worker is full, ``push`` waits for room up to its
``timeout``, then raises ``meshq.Timeout``.

Results come back to the producer, or with ``sink="name"`` go to a
:class:`~meshq.patterns.Sink` of that name on any node (spread over the sinks
of that name; a worker prefers one on its own node). The producer still
learns every task's fate, as the worker answers after the sink took them.

What a worker held when it died is not done. Unlike plain ZeroMQ
PUSH/PULL, where such tasks vanish without a trace, each unanswered batch is
counted in ``lost`` (or, with ``redeliver=True``, sent to another worker:
then a task may run twice). ``completed + failed + lost`` always accounts
for every pushed task once the pipeline is drained.

:class:`Pipeline` and :class:`AsyncPipeline` share their bookkeeping
(:class:`_Ledger`, no I/O); only the waiting differs.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import operator
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, NamedTuple, TypeVar

import meshq

from .worker import serve_worker, stage_service

__all__ = ["AsyncPipeline", "Pipeline", "Result", "Worker"]

log = logging.getLogger("meshq.patterns.pipeline")

TaskHandler = Callable[[object], object]


class Worker:
    """Offers pipeline stage ``stage`` on ``node``: ``handler(task)`` returns the task's result.

    A handler that raises fails that task only (the producer sees it in
    ``failed`` and in the result); the worker goes on with the next one.
    The same as ``@node.worker(stage)``, with counters.
    """

    def __init__(self, node: meshq.Node, stage: str, handler: TaskHandler) -> None:
        self.node = node
        self.stage = stage
        self._runner = serve_worker(node, stage, handler)

    @property
    def done(self) -> int:
        """Tasks handled."""
        return self._runner.done

    @property
    def errors(self) -> int:
        """Tasks whose handler raised (or whose result could not be sent)."""
        return self._runner.errors

    @property
    def undelivered(self) -> int:
        """Tasks whose results no sink took."""
        return self._runner.undelivered


class Result(NamedTuple):
    """The outcome of one task: ``value`` if ``ok``, else ``error`` says what the handler raised.

    (A named tuple: one is made per task.) With a sink, the producer's
    results carry no ``value``: it went to the sink.
    """

    task: object
    ok: bool
    value: object = None
    error: str = ""


_first = operator.itemgetter(0)
_second = operator.itemgetter(1)
# Endless and stateless, so shared by every batch kept for later (see _Ledger.take).
_RESULTS = itertools.repeat(Result)
_OK = itertools.repeat(True)
_NOT_OK = itertools.repeat(False)
_NO_VALUE = itertools.repeat(None)
_NO_ERROR = itertools.repeat("")

#: One finished batch's results, not yet made: tasks, oks, values, errors.
_Fields = tuple[list[object], Iterable[bool], Iterable[object], Iterable[str]]

H = TypeVar("H")  # how a shell waits on one batch: a RequestFuture, an asyncio.Task


class _Ledger(Generic[H]):
    """A producer's bookkeeping, without I/O: batches in flight, counters, results."""

    def __init__(
        self,
        stage: str,
        *,
        batch: int,
        credit: int,
        timeout: float,
        redeliver: bool,
        keep_results: bool,
        sink: str | None,
    ) -> None:
        if batch < 1 or credit < 1 or timeout <= 0:
            raise ValueError("need batch >= 1, credit >= 1 and timeout > 0 seconds")
        if sink is not None and not sink:
            raise ValueError("a sink name is not empty")
        self.stage = stage
        self.service = stage_service(stage)
        self.batch = batch
        self.credit = credit
        self.timeout = timeout
        self.retries = 1 if redeliver else 0
        self.keep_results = keep_results
        self.sink = sink
        self.in_flight: collections.deque[tuple[list[object], H]] = collections.deque()
        # Finished batches' results, made as they are taken (take): a batch
        # waits here as its fields (tasks, oks, values, errors: the last three
        # lists or endless repeats), or once partly taken as an iterator of
        # Results, never as one Result per task. Results held by the thousand
        # cost little to make but are scanned by each of Python's garbage
        # collections: at batch 64, a fifth of the producer's time when every
        # Result was made at once. (Two objects the collector tracks per batch.)
        self.finished: collections.deque[_Fields | Iterator[Result]] = collections.deque()
        self.pushed = 0
        self.completed = 0
        self.failed = 0
        self.lost = 0
        self.undelivered = 0
        self.lost_tasks: collections.deque[object] = collections.deque(maxlen=10_000)

    def chunks(self, tasks: Iterable[object]) -> Iterator[list[object]]:
        pending = list(tasks)
        for start in range(0, len(pending), self.batch):
            yield pending[start : start + self.batch]

    def request(self, chunk: list[object]) -> object:
        """What one batch's request carries."""
        if self.sink is None:
            return chunk
        # The worker's wait for the sink stays within our timeout.
        return {"tasks": chunk, "sink": self.sink, "timeout": self.timeout / 3}

    def full(self, workers: int) -> bool:
        return len(self.in_flight) >= self.credit * max(1, workers)

    def sent(self, chunk: list[object], handle: H) -> None:
        self.in_flight.append((chunk, handle))
        self.pushed += len(chunk)

    def settle(self, chunk: list[object], reply: object, error: BaseException | None) -> None:
        """Account for one answered (or failed) batch: ``reply``, or the ``error`` it raised."""
        if isinstance(error, (meshq.Timeout, meshq.NoProviders, meshq.Closed)):
            self.lost += len(chunk)
            self.lost_tasks.extend(chunk)
            log.warning("%d task(s) of %r lost with their worker", len(chunk), self.stage)
            return
        if error is not None:  # RemoteError: the whole batch was refused
            self._fail_all(chunk, str(error))
            return
        if self.sink is None and type(reply) is dict:  # the compact reply: every task ok
            values = reply.get("values") if len(reply) == 1 else None
            if type(values) is not list or len(values) != len(chunk):
                self._fail_all(chunk, "malformed reply")
                return
            self.completed += len(chunk)
            if self.keep_results:
                self._keep(chunk, _OK, values, _NO_ERROR)
            return
        undelivered = ""
        outcomes = reply
        if self.sink is not None:
            if not isinstance(reply, dict) or not isinstance(reply.get("undelivered"), str):
                self._fail_all(chunk, "malformed reply")  # a worker that does not speak it
                return
            outcomes, undelivered = reply.get("outcomes"), reply["undelivered"]
        # The shape checks run in C (map over the outcomes), not per task in Python.
        if not (
            type(outcomes) is list
            and len(outcomes) == len(chunk)
            and set(map(type, outcomes)) == {list}
            and set(map(len, outcomes)) == {2}
        ):
            self._fail_all(chunk, "malformed reply")
            return
        if undelivered:
            self.undelivered += len(chunk)
            self._fail_all(chunk, f"results not delivered to sink {self.sink!r}: {undelivered}")
            return
        oks = list(map(bool, map(_first, outcomes)))
        ok_count = oks.count(True)
        self.completed += ok_count
        self.failed += len(chunk) - ok_count
        if not self.keep_results:
            return
        if ok_count == len(chunk):  # the common case: every task ok
            # One list of values, so that the outcomes' lists go now.
            values = list(map(_second, outcomes)) if self.sink is None else _NO_VALUE
            self._keep(chunk, _OK, values, _NO_ERROR)
            return
        with_values = self.sink is None
        results = []
        for task, ok, (_, value) in zip(chunk, oks, outcomes, strict=True):
            if ok:
                results.append(Result(task, True, value if with_values else None))
            else:
                results.append(Result(task, False, error=str(value)))
        self.finished.append(iter(results))

    def _keep(
        self,
        chunk: list[object],
        oks: Iterable[bool],
        values: Iterable[object],
        errors: Iterable[str],
    ) -> None:
        """Keep one batch's results, to be made when taken."""
        self.finished.append((chunk, oks, values, errors))

    def take(self) -> Iterator[Result]:
        """The finished results, oldest first, each handed out once.

        A caller that stops midway leaves the rest of its batch for the next
        take: a batch being taken is a map or a list iterator, which ``yield
        from`` cannot close.
        """
        finished = self.finished
        while finished:
            batch = finished[0]
            if isinstance(batch, tuple):  # not taken from yet
                # Result(task, ok, value, error) for each task, made in C: what
                # Result._make does, without a Python call per task (0.4 us each).
                fields = zip(*batch, strict=False)  # all but the tasks may be endless
                batch = finished[0] = map(tuple.__new__, _RESULTS, fields)
            yield from batch
            finished.popleft()

    def _fail_all(self, chunk: list[object], error: str) -> None:
        self.failed += len(chunk)
        if self.keep_results:
            self._keep(chunk, _NOT_OK, _NO_VALUE, itertools.repeat(error))


class _Counters:
    """The producer's counters, read from its ledger (shared by both shells)."""

    _ledger: _Ledger[object]

    @property
    def pushed(self) -> int:
        """Tasks pushed."""
        return self._ledger.pushed

    @property
    def completed(self) -> int:
        """Tasks answered ok."""
        return self._ledger.completed

    @property
    def failed(self) -> int:
        """Tasks answered with the handler's error, refused, or undelivered to the sink."""
        return self._ledger.failed

    @property
    def lost(self) -> int:
        """Tasks lost with a worker that died or never answered."""
        return self._ledger.lost

    @property
    def undelivered(self) -> int:
        """Tasks (also counted in ``failed``) whose results no sink took."""
        return self._ledger.undelivered

    @property
    def lost_tasks(self) -> collections.deque[object]:
        """The lost tasks themselves (the latest 10,000), for a retry of your own."""
        return self._ledger.lost_tasks

    @property
    def in_flight(self) -> int:
        """Tasks sent and not yet answered or lost."""
        return sum(len(chunk) for chunk, _ in self._ledger.in_flight)


class Pipeline(_Counters):
    """The producer side of stage ``stage``: push tasks, collect results.

    Use from one thread. ``batch`` tasks at most travel in one request;
    ``credit`` batches at most are in flight per worker; a batch unanswered
    within ``timeout`` seconds is lost (counted) or, with ``redeliver``,
    retried once on another worker. The timeout runs from the moment a batch
    is sent, and a worker handles its batches in turn: allow for
    ``credit * batch`` tasks' work. Larger batches are faster for small
    tasks (bench/pipeline.py, credit 4: 64 about 0.9 of raw PUSH/PULL, 256
    about 2.4) but lose more at once when a worker dies. With ``keep_results=False`` only the
    counters are kept (fire and forget, as with PUSH/PULL, but counted);
    otherwise results wait in memory until :meth:`results` takes them. With
    ``sink``, results go to the sinks of that name instead (see the module).
    """

    def __init__(
        self,
        node: meshq.Node,
        stage: str,
        *,
        batch: int = 32,
        credit: int = 2,
        timeout: float = 30.0,
        redeliver: bool = False,
        keep_results: bool = True,
        sink: str | None = None,
    ) -> None:
        self.node = node
        self.stage = stage
        self._ledger: _Ledger[meshq.RequestFuture] = _Ledger(  # type: ignore[assignment]
            stage,
            batch=batch,
            credit=credit,
            timeout=timeout,
            redeliver=redeliver,
            keep_results=keep_results,
            sink=sink,
        )

    def push(self, task: object, timeout: float | None = None) -> None:
        """Send one task (a batch of one). See :meth:`push_many`."""
        self.push_many([task], timeout=timeout)

    def push_many(self, tasks: Iterable[object], timeout: float | None = None) -> None:
        """Send tasks in batches, waiting for room when every worker is full.

        Raises meshq.Timeout if no room opens within ``timeout`` seconds
        (None: wait as long as it takes), meshq.NoProviders if no worker of
        the stage is on the mesh.
        """
        ledger = self._ledger
        deadline = None if timeout is None else time.monotonic() + timeout
        workers = self._workers()  # once per call: the directory is rebuilt per look
        for chunk in ledger.chunks(tasks):
            if ledger.full(workers):  # replies are read when room is needed, not per batch
                self._reap()
                while ledger.full(workers):
                    self._settle_oldest(deadline, f"every worker of {self.stage!r} is full")
            payload = ledger.request(chunk)
            future = self.node.request_async(
                ledger.service, payload, timeout=ledger.timeout, retries=ledger.retries
            )
            ledger.sent(chunk, future)

    def _workers(self) -> int:
        return len(self.node.services().get(self._ledger.service, []))

    def _settle_oldest(self, deadline: float | None, when_late: str) -> None:
        """Wait for the oldest batch in flight (until ``deadline``), then reap.

        Raises meshq.Timeout(``when_late``) once the deadline has passed.
        """
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise meshq.Timeout(when_late)
        try:
            self._ledger.in_flight[0][1].result(timeout=remaining)
        except meshq.MeshqError:
            pass  # an outcome (settled by _reap), or our wait ran out (the next call raises)
        self._reap()

    def _reap(self) -> None:
        """Take every finished batch, oldest first, into results and counters."""
        in_flight = self._ledger.in_flight
        if in_flight:
            in_flight[0][1].done()  # reads the replies that have arrived, once
        while in_flight and in_flight[0][1].ready:
            chunk, future = in_flight.popleft()
            try:
                reply, error = future.result(timeout=0), None
            except meshq.MeshqError as exc:
                reply, error = None, exc
            self._ledger.settle(chunk, reply, error)

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every pushed batch is answered or lost; meshq.Timeout after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        in_flight = self._ledger.in_flight
        while in_flight:
            self._settle_oldest(deadline, f"{len(in_flight)} batch(es) still in flight")

    def results(self) -> Iterator[Result]:
        """Results collected so far, oldest first (each is handed out once)."""
        self._reap()
        yield from self._ledger.take()


class AsyncPipeline(_Counters):
    """The asyncio form of :class:`Pipeline`, on a :class:`meshq.AsyncNode`; same arguments.

    ``await push_many(...)``, ``await drain()``; :meth:`results` is a plain
    iterator over what has been collected. Use from one event loop.
    """

    def __init__(
        self,
        node: meshq.AsyncNode,
        stage: str,
        *,
        batch: int = 32,
        credit: int = 2,
        timeout: float = 30.0,
        redeliver: bool = False,
        keep_results: bool = True,
        sink: str | None = None,
    ) -> None:
        self.node = node
        self.stage = stage
        self._ledger: _Ledger[asyncio.Task[object]] = _Ledger(  # type: ignore[assignment]
            stage,
            batch=batch,
            credit=credit,
            timeout=timeout,
            redeliver=redeliver,
            keep_results=keep_results,
            sink=sink,
        )

    async def push(self, task: object, timeout: float | None = None) -> None:
        """Send one task (a batch of one). See :meth:`push_many`."""
        await self.push_many([task], timeout=timeout)

    async def push_many(self, tasks: Iterable[object], timeout: float | None = None) -> None:
        """See :meth:`Pipeline.push_many`."""
        ledger = self._ledger
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        workers = len(self.node.services().get(ledger.service, []))
        if not workers:
            raise meshq.NoProviders(ledger.service)
        for chunk in ledger.chunks(tasks):
            if ledger.full(workers):
                self._reap()
                while ledger.full(workers):
                    await self._settle_oldest(deadline, f"every worker of {self.stage!r} is full")
            payload = ledger.request(chunk)
            request = self.node.request(
                ledger.service, payload, timeout=ledger.timeout, retries=ledger.retries
            )
            ledger.sent(chunk, loop.create_task(request))

    async def _settle_oldest(self, deadline: float | None, when_late: str) -> None:
        remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
        if remaining is not None and remaining <= 0:
            raise meshq.Timeout(when_late)
        await asyncio.wait([self._ledger.in_flight[0][1]], timeout=remaining)
        self._reap()

    def _reap(self) -> None:
        in_flight = self._ledger.in_flight
        while in_flight and in_flight[0][1].done():
            chunk, task = in_flight.popleft()
            try:
                reply, error = task.result(), None
            except meshq.MeshqError as exc:
                reply, error = None, exc
            self._ledger.settle(chunk, reply, error)

    async def drain(self, timeout: float | None = None) -> None:
        """See :meth:`Pipeline.drain`."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        in_flight = self._ledger.in_flight
        while in_flight:
            await self._settle_oldest(deadline, f"{len(in_flight)} batch(es) still in flight")

    def results(self) -> Iterator[Result]:
        """See :meth:`Pipeline.results`."""
        self._reap()
        yield from self._ledger.take()
