"""Pipeline workers (``@node.worker``), result sinks, and the batch format they share.

The worker's half of a pipeline (running a batch and answering it in the
agreed format, forwarding results to a sink), built on the node's public
service seams (deferred replies and tickers). ``meshq.patterns.Worker`` is
a thin class over :func:`serve_worker`, and ``Node.worker`` imports it when
first used (the core imports no pattern at load time); the producer side
(``meshq.patterns.Pipeline``) and ``meshq.patterns.Sink`` build on the same
names and formats. docs/PROTOCOL.md (9.9) specifies them:

* A worker of stage ``S`` serves ``pipeline/S``. A request is a batch:
  either a list of tasks (results go back to the producer: the reply is
  ``{"values": [...]}``, one value per task, when every task succeeded, else
  a list of ``[ok, value_or_error]``, one per task) or a map
  ``{"tasks": [...], "sink": name, "timeout": seconds}``, whose results go
  to a sink (the reply then carries only ``[ok, error_or_nil]`` per task,
  plus ``undelivered``: "" or why the sink did not take them).
* A sink named ``N`` serves ``pipeline-sink/N``. A delivery is
  ``{"stage": S, "results": [[task, ok, value_or_error], ...]}``.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import msgpack

from meshq.errors import PayloadTooLarge
from meshq.requester import RequestFuture
from meshq.seams import MeshNode
from meshq.services import ReplyTo

__all__ = [
    "BatchRunner",
    "SinkAccept",
    "TaskHandler",
    "describe",
    "serve_sink",
    "serve_worker",
    "sink_service",
    "stage_service",
]

log = logging.getLogger("meshq.workers")

TaskHandler = Callable[[object], object]
#: Takes one delivery: the stage's name and ``(task, ok, value_or_error)`` per task.
SinkAccept = Callable[[str, list[tuple[object, bool, object]]], None]

_MAX_SINK_TIMEOUT = 300.0  # seconds; a producer's larger value is capped

# Sinks by node, so a worker hands results to a sink on its own node
# directly: a node's service thread runs one handler at a time, so a worker
# handler calling its own node's sink service would wait on itself.
_local_sinks: weakref.WeakKeyDictionary[MeshNode, dict[str, SinkAccept]] = (
    weakref.WeakKeyDictionary()
)
_local_sinks_lock = threading.Lock()


def stage_service(stage: str) -> str:
    """The service name a stage's workers offer. Raises ValueError for an empty stage."""
    if not stage:
        raise ValueError("a pipeline stage needs a name")
    return f"pipeline/{stage}"


def sink_service(name: str) -> str:
    """The service name a sink offers. Raises ValueError for an empty name."""
    if not name:
        raise ValueError("a sink needs a name")
    return f"pipeline-sink/{name}"


def describe(exc: BaseException) -> str:
    """``"Type: message"``, whatever the exception's ``str()`` does (at most 4096 chars)."""
    try:
        text = str(exc)
    except BaseException:
        text = "<unprintable>"
    return f"{type(exc).__name__}: {text}"[:4096].encode("utf-8", "replace").decode()


@dataclass
class _Forwarded:
    """A batch whose results are on their way to a remote sink."""

    future: RequestFuture
    reply: ReplyTo
    outcomes: list[list[object]]
    sink: str
    deadline: float  # monotonic time the sink's answer is due by


class BatchRunner:
    """The service handler of one worker: runs each task of a batch through ``handler``.

    A task whose handler raises fails alone (its outcome carries the error);
    so does a result msgpack cannot send. Counters: ``done`` tasks handled,
    ``errors`` of them failed, ``undelivered`` whose results no sink took.
    """

    def __init__(self, node: MeshNode, stage: str, handler: TaskHandler) -> None:
        self.node = node
        self.stage = stage
        self.handler = handler
        self.done = 0
        self.errors = 0
        self.undelivered = 0
        self._waiting: list[_Forwarded] = []  # batches whose results went to a remote sink

    def handle(self, batch: object, reply: ReplyTo) -> None:
        """The stage's service handler: answers at once, or once a remote sink took the results.

        Waiting for a remote sink never blocks the service thread (the
        request is in flight while other requests, a sink's deliveries
        included, are served), so two nodes whose workers feed each other's
        sinks cannot deadlock. Raises TypeError for a batch not in the format.
        """
        if isinstance(batch, list):
            values, errors = self._run(batch)
            if not errors:  # the common case: the compact reply, the values alone
                try:
                    reply.send({"values": values})
                    return
                except PayloadTooLarge:
                    raise  # answered already, as an error for the whole batch
                except Exception:  # some value cannot travel: the full reply says which
                    pass
            outcomes = self._outcomes(values, errors)
            try:
                reply.send(outcomes)  # encoded once: no separate check that every result can
            except PayloadTooLarge:
                raise
            except Exception:  # some result cannot travel: find it, fail that task alone
                self._sendable(outcomes)
                reply.send(outcomes)
            return
        if not isinstance(batch, dict):
            raise TypeError("a pipeline batch is a list of tasks or a map")
        tasks, sink, timeout = batch.get("tasks"), batch.get("sink"), batch.get("timeout")
        if not (
            isinstance(tasks, list)
            and isinstance(sink, str)
            and sink
            and isinstance(timeout, (int, float))
            and not isinstance(timeout, bool)
            and timeout > 0
        ):
            raise TypeError("a sink batch needs tasks (list), sink (str) and timeout (s > 0)")
        outcomes = self._outcomes(*self._run(tasks))
        self._sendable(outcomes)
        results = [
            (task, bool(ok), value) for task, (ok, value) in zip(tasks, outcomes, strict=True)
        ]
        with _local_sinks_lock:
            local = _local_sinks.get(self.node, {}).get(sink)
        if local is not None:
            try:
                local(self.stage, results)
                reply.send(self._answer(outcomes, ""))
            except Exception as exc:
                reply.send(self._answer(outcomes, self._undelivered(sink, len(results), exc)))
            return
        wait = min(float(timeout), _MAX_SINK_TIMEOUT)
        try:
            # No retry: a sink that answers late may still have taken the
            # results, and a second try would hand them over twice.
            future = self.node.request_async(
                sink_service(sink),
                {"stage": self.stage, "results": [list(r) for r in results]},
                timeout=wait,
                retries=0,
            )
        except Exception as exc:  # no sink of that name, say
            reply.send(self._answer(outcomes, self._undelivered(sink, len(results), exc)))
            return
        self._waiting.append(_Forwarded(future, reply, outcomes, sink, time.monotonic() + wait))

    def tick(self, now: float, idle: bool) -> float | None:
        """Answer the batches whose sink replied (service thread); seconds until it must look again.

        The service thread wakes for the sinks' replies as they arrive
        (while a ticker waits, it polls its request sockets too); the time
        returned is when the earliest sink's answer is overdue.
        """
        if not self._waiting:
            return None
        self._waiting[0].future.done()  # reads every reply that is in, expires the overdue
        still = []
        for forwarded in self._waiting:
            if not forwarded.future.ready:
                still.append(forwarded)
                continue
            undelivered = ""
            try:
                forwarded.future.result(0)
            except Exception as exc:
                undelivered = self._undelivered(forwarded.sink, len(forwarded.outcomes), exc)
            forwarded.reply.send(self._answer(forwarded.outcomes, undelivered))
        self._waiting = still
        if not still:
            return None
        return max(0.0, min(forwarded.deadline for forwarded in still) - now)

    def _answer(self, outcomes: list[list[object]], undelivered: str) -> object:
        if undelivered:
            self.undelivered += len(outcomes)
        return {
            "outcomes": [[ok, None if ok else value] for ok, value in outcomes],
            "undelivered": undelivered,
        }

    def _undelivered(self, sink: str, count: int, exc: BaseException) -> str:
        log.warning("%d result(s) not delivered to sink %r: %s", count, sink, exc)
        return describe(exc)

    def _run(self, tasks: list[object]) -> tuple[list[object], dict[int, str]]:
        """Run every task: (values, errors), value i task i's result, or None where it raised.

        ``errors`` maps the index of each task that raised to what it raised
        (describe); in the common case it is empty, and no list is made per task.
        """
        values: list[object] = []
        append, handler = values.append, self.handler  # locals: this loop runs per task
        errors: dict[int, str] = {}
        for task in tasks:
            try:
                append(handler(task))
            except BaseException as exc:  # one bad task must not sink the batch
                errors[len(values)] = describe(exc)
                append(None)
        self.done += len(tasks)
        self.errors += len(errors)
        return values, errors

    @staticmethod
    def _outcomes(values: list[object], errors: dict[int, str]) -> list[list[object]]:
        """The full reply's ``[ok, value_or_error]`` per task."""
        if not errors:
            return [[True, value] for value in values]
        return [
            [False, errors[index]] if index in errors else [True, value]
            for index, value in enumerate(values)
        ]

    def _sendable(self, outcomes: list[list[object]]) -> None:
        """Fail, alone, each task whose result msgpack cannot encode."""
        try:
            msgpack.packb(outcomes, use_bin_type=True)
        except Exception:  # some result cannot travel: find it, fail that task alone
            for outcome in outcomes:
                try:
                    msgpack.packb(outcome[1], use_bin_type=True)
                except Exception as exc:
                    self.errors += 1
                    outcome[:] = [False, describe(exc)]


def serve_worker(node: MeshNode, stage: str, handler: TaskHandler) -> BatchRunner:
    """Offer pipeline stage ``stage`` on ``node``: ``handler(task)`` returns the task's result.

    Raises ValueError for a bad stage name (see Node.serve).
    """
    runner = BatchRunner(node, stage, handler)
    node.serve_deferred(stage_service(stage), runner.handle)
    node.add_ticker(runner.tick)
    return runner


def serve_sink(node: MeshNode, name: str, accept: SinkAccept) -> None:
    """Offer a sink named ``name`` on ``node``: ``accept(stage, results)`` takes each delivery.

    What ``accept`` raises refuses the delivery: the worker reports the
    batch's results as undelivered to its producer. Workers on the same node
    call ``accept`` directly. Raises ValueError for a bad name.
    """

    def take(delivery: object) -> object:
        if not (isinstance(delivery, dict) and isinstance(delivery.get("stage"), str)):
            raise TypeError("a sink delivery is a map with a stage")
        entries = delivery.get("results")
        if not isinstance(entries, list) or not all(
            isinstance(e, list) and len(e) == 3 and isinstance(e[1], bool) for e in entries
        ):
            raise TypeError("a sink delivery's results are [task, ok, value] lists")
        accept(delivery["stage"], [(e[0], e[1], e[2]) for e in entries])
        return None

    node.serve(sink_service(name), take)
    with _local_sinks_lock:
        _local_sinks.setdefault(node, {})[name] = accept
