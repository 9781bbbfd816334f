"""Named pipelines of workers, on the public request/reply API (``meshq.patterns.pipeline``).

``Worker(node, "resize", handler)`` offers a stage on any node;
``Pipeline(node, "resize")`` pushes tasks to every worker of that name the
mesh knows, as workers come and go. Tasks travel in batches (one request
per batch, answered with one result per task), so the per-task cost is far
below one request each.

Flow control is by credit: at most ``credit`` batches are in flight per
worker; when every worker is full, ``push`` waits for room up to its
``timeout``, then raises ``meshq.Timeout``.

What a worker held when it died is not done. Unlike plain ZeroMQ
PUSH/PULL, where such tasks vanish without a trace, each unanswered batch is
counted in ``lost`` (or, with ``redeliver=True``, sent to another worker:
then a task may run twice). ``completed + failed + lost`` always accounts
for every pushed task once the pipeline is drained.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import msgpack

import meshq

__all__ = ["Pipeline", "Result", "Worker"]

log = logging.getLogger("meshq.patterns.pipeline")

TaskHandler = Callable[[object], object]


def stage_service(stage: str) -> str:
    """The service name a stage's workers offer."""
    return f"pipeline/{stage}"


class Worker:
    """Offers pipeline stage ``stage`` on ``node``: ``handler(task)`` returns the task's result.

    A handler that raises fails that task only (the producer sees it in
    ``failed`` and in the result); the worker goes on with the next one.
    """

    def __init__(self, node: meshq.Node, stage: str, handler: TaskHandler) -> None:
        self.node = node
        self.stage = stage
        self._handler = handler
        #: Tasks handled, and those whose handler raised.
        self.done = 0
        self.errors = 0
        node.serve(stage_service(stage), self._run_batch)

    def _run_batch(self, batch: object) -> object:
        if not isinstance(batch, list):
            raise TypeError("a pipeline batch is a list of tasks")
        outcomes: list[list[object]] = []
        for task in batch:
            try:
                outcomes.append([True, self._handler(task)])
            except BaseException as exc:  # one bad task must not sink the batch
                self.errors += 1
                outcomes.append([False, _describe(exc)])
            self.done += 1
        try:
            msgpack.packb(outcomes, use_bin_type=True)
        except Exception:  # some result cannot travel: find it, fail that task alone
            for outcome in outcomes:
                try:
                    msgpack.packb(outcome[1], use_bin_type=True)
                except Exception as exc:
                    self.errors += 1
                    outcome[:] = [False, _describe(exc)]
        return outcomes


def _describe(exc: BaseException) -> str:
    """``"Type: message"``, whatever the exception's ``str()`` does."""
    try:
        text = str(exc)
    except BaseException:
        text = "<unprintable>"
    return f"{type(exc).__name__}: {text}"[:4096].encode("utf-8", "replace").decode()


class Result(NamedTuple):
    """The outcome of one task: ``value`` if ``ok``, else ``error`` says what the handler raised.

    (A named tuple: one is made per task.)
    """

    task: object
    ok: bool
    value: object = None
    error: str = ""


class Pipeline:
    """The producer side of stage ``stage``: push tasks, collect results.

    Use from one thread. ``batch`` tasks at most travel in one request;
    ``credit`` batches at most are in flight per worker; a batch unanswered
    within ``timeout`` seconds is lost (counted) or, with ``redeliver``,
    retried once on another worker. The timeout runs from the moment a batch
    is sent, and a worker handles its batches in turn: allow for
    ``credit * batch`` tasks' work. Larger batches are faster for small
    tasks (bench/pipeline.py: 256 reaches 0.87 of raw PUSH/PULL, 64 about
    0.55) but lose more at once when a worker dies. With ``keep_results=False`` only the
    counters are kept (fire and forget, as with PUSH/PULL, but counted);
    otherwise results wait in memory until :meth:`results` takes them.
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
    ) -> None:
        if batch < 1 or credit < 1 or timeout <= 0:
            raise ValueError("need batch >= 1, credit >= 1 and timeout > 0 seconds")
        self.node = node
        self.stage = stage
        self._service = stage_service(stage)
        self._batch = batch
        self._credit = credit
        self._timeout = timeout
        self._retries = 1 if redeliver else 0
        self._keep_results = keep_results
        self._in_flight: collections.deque[tuple[list[object], meshq.RequestFuture]] = (
            collections.deque()
        )
        self._results: collections.deque[Result] = collections.deque()
        #: Tasks pushed; answered ok; answered with the handler's error; lost
        #: with a worker that died or never answered.
        self.pushed = 0
        self.completed = 0
        self.failed = 0
        self.lost = 0
        #: The lost tasks themselves (the latest 10,000), for a retry of your own.
        self.lost_tasks: collections.deque[object] = collections.deque(maxlen=10_000)

    def push(self, task: object, timeout: float | None = None) -> None:
        """Send one task (a batch of one). See :meth:`push_many`."""
        self.push_many([task], timeout=timeout)

    def push_many(self, tasks: Iterable[object], timeout: float | None = None) -> None:
        """Send tasks in batches, waiting for room when every worker is full.

        Raises meshq.Timeout if no room opens within ``timeout`` seconds
        (None: wait as long as it takes), meshq.NoProviders if no worker of
        the stage is on the mesh.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = list(tasks)
        workers = self._workers()  # once per call: the directory is rebuilt per look
        for start in range(0, len(pending), self._batch):
            chunk = pending[start : start + self._batch]
            self._wait_for_room(deadline, workers)
            future = self.node.request_async(
                self._service, chunk, timeout=self._timeout, retries=self._retries
            )
            self._in_flight.append((chunk, future))
            self.pushed += len(chunk)

    def _workers(self) -> int:
        return len(self.node.services().get(self._service, []))

    def _wait_for_room(self, deadline: float | None, workers: int) -> None:
        self._reap()
        while len(self._in_flight) >= self._credit * max(1, workers):
            self._settle_oldest(deadline, f"every worker of {self.stage!r} is full")

    def _settle_oldest(self, deadline: float | None, when_late: str) -> None:
        """Wait for the oldest batch in flight (until ``deadline``), then reap.

        Raises meshq.Timeout(``when_late``) once the deadline has passed.
        """
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise meshq.Timeout(when_late)
        try:
            self._in_flight[0][1].result(timeout=remaining)
        except meshq.MeshqError:
            pass  # an outcome (settled by _reap), or our wait ran out (the next call raises)
        self._reap()

    def _reap(self) -> None:
        """Take every finished batch, oldest first, into results and counters."""
        if self._in_flight:
            self._in_flight[0][1].done()  # reads the replies that have arrived, once
        while self._in_flight and self._in_flight[0][1].ready:
            chunk, future = self._in_flight.popleft()
            self._settle(chunk, future)

    def _settle(self, chunk: list[object], future: meshq.RequestFuture) -> None:
        try:
            outcomes = future.result(timeout=0)
        except (meshq.Timeout, meshq.NoProviders, meshq.Closed):
            self.lost += len(chunk)
            self.lost_tasks.extend(chunk)
            log.warning("%d task(s) of %r lost with their worker", len(chunk), self.stage)
            return
        except meshq.RemoteError as exc:  # the whole batch was refused
            self.failed += len(chunk)
            if self._keep_results:
                self._results.extend(Result(task, False, error=str(exc)) for task in chunk)
            return
        if not (
            isinstance(outcomes, list)
            and len(outcomes) == len(chunk)
            and all(isinstance(o, list) and len(o) == 2 for o in outcomes)
        ):
            self.failed += len(chunk)  # a worker that does not speak the format
            if self._keep_results:
                self._results.extend(Result(task, False, error="malformed reply") for task in chunk)
            return
        keep = self._keep_results
        for task, (ok, value) in zip(chunk, outcomes, strict=True):
            if ok:
                self.completed += 1
                if keep:
                    self._results.append(Result(task, True, value))
            else:
                self.failed += 1
                if keep:
                    self._results.append(Result(task, False, error=str(value)))

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every pushed batch is answered or lost; meshq.Timeout after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._in_flight:
            self._settle_oldest(deadline, f"{len(self._in_flight)} batch(es) still in flight")

    def results(self) -> Iterator[Result]:
        """Results collected so far, oldest first (each is handed out once)."""
        self._reap()
        while self._results:
            yield self._results.popleft()

    @property
    def in_flight(self) -> int:
        """Tasks sent and not yet answered or lost."""
        return sum(len(chunk) for chunk, _ in self._in_flight)
