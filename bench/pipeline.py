"""Pipeline throughput: meshq's Pipeline/Worker against raw pyzmq PUSH/PULL, in the same run.

What it measures
----------------
For each system, one producer process pushes ``count`` tasks to ``--workers``
worker processes (1 by default) over loopback TCP (127.0.0.1); all processes
are started fresh for every run with the multiprocessing "spawn" start
method. A task is the same 100-byte ``bytes`` object every time. The clock
starts on the producer before its first send and stops when the worker side
has handled all ``count`` tasks:

* raw: the producer's pyzmq PUSH socket (bound to an ephemeral port) sends
  each task as one frame with a blocking ``send``; each worker's PULL socket
  receives it with ``recv()`` and counts it. With one worker, the worker
  counts ``count`` tasks, stamps the time and sets an Event. With several,
  each worker adds its count to a shared counter every ``FLUSH_EVERY`` tasks
  and whenever ``IDLE`` seconds pass without one (its last task then came
  before that wait, and the stamp is taken ``IDLE`` earlier); the worker
  that brings the counter to ``count`` stamps the time and sets the Event.
  The producer waits on the Event; elapsed = stamp - start (both
  ``time.perf_counter``, one system-wide monotonic clock on Linux).
* meshq (``meshq-64``, ``meshq-256``): each worker process runs
  ``meshq.patterns.Worker(node, "bench", handler)`` with a handler that
  returns the task unchanged; the producer calls
  ``Pipeline(node, "bench", batch=B, credit=4).push_many(tasks)`` then
  ``drain()``; the clock stops when ``drain()`` returns, and the run checks
  ``pipeline.completed == count`` and (after the clock) that every result
  is the payload. (The Pipeline's defaults are ``batch=32, credit=2``.) The
  nodes find each other by seed (``discovery=False``, no multicast): each
  worker hands its control endpoint to the producer over a pipe, and the
  producer waits (``node.wait_for_service``, bounded) for every worker.

What is compared
----------------
The two do not promise the same thing. Raw PUSH/PULL has no acknowledgement:
the producer learns nothing back, and tasks queued at or held by a worker
that dies are lost without a trace. meshq's pipeline sends each batch as a
request and gets one result per task back (the handler's return value, here
the 100-byte task itself), so every task is acknowledged, and a dead
worker's tasks are counted as lost (or redelivered). The ratio is still
reported as it is: tasks/s through meshq divided by tasks/s through raw
PUSH/PULL doing the same work (the issue's target: at least 0.75).

Warm-up: raw sends 1-byte frames until every worker has received one (no
sleeps); meshq pushes and drains ``warmup_tasks()`` tasks through a first
Pipeline of the same shape (which also opens the DEALER to every worker),
then times a fresh one.

Every loop is bounded: the producer's warm-up in count and time, its sends
by ``count`` and by a send timeout, ``push_many``/``drain`` by timeouts, the
raw workers by a deadline, the meshq workers by a wait with a timeout, and
the orchestrator kills a run's processes after ``RUN_TIMEOUT``.

Reading the numbers
-------------------
``tasks/s`` is ``count`` over the elapsed time of one run; ``ratio`` is a
system's tasks/s over raw's. ``prod cpu`` is the producer process's CPU time
(all threads, ZeroMQ's I/O thread included) per task over the timed window;
``work cpu`` the same summed over the worker processes (read from
``/proc/<pid>/task/*/schedstat``; 0 where that is not available). ``push
s`` is how long the producer's send loop / ``push_many`` took: raw's sends
return long before the worker is done (queued in ZeroMQ), meshq's
``push_many`` returns once the last batch is sent (at most ``credit``
batches per worker unanswered). Each system runs ``--repeat`` times, the
systems rotating who goes first, and the table shows medians. The machines
are shared and noisy; compare ratios from the same run, not absolute numbers
across runs.

Usage::

    python bench/pipeline.py [--repeat N] [--quick] [--count N] [--workers N] [--json PATH]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Literal, TypedDict

import zmq

import meshq

if __package__ in (None, ""):  # run as a script (python bench/x.py): make "bench" importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (
    collect_reports,
    environment,
    paired_ratios,
    print_load,
    ratio,
    write_results,
)
from meshq.patterns import Pipeline, Worker

System = Literal["raw", "meshq-64", "meshq-256"]
SYSTEMS: tuple[System, ...] = ("raw", "meshq-64", "meshq-256")
#: Tasks per batch for the meshq systems (the Pipeline's default is 32).
BATCHES: dict[System, int] = {"meshq-64": 64, "meshq-256": 256}
CREDIT = 4  # batches in flight per worker (the Pipeline's default is 2)
TARGET_RATIO = 0.75

STAGE = "bench"
SIZE = 100  # task payload bytes
WARM_FRAME = b"w"  # raw warm-up: one byte, so length tells it from a task
LOOPBACK = "127.0.0.1"

DEFAULT_COUNT = 100_000
DEFAULT_REPEAT = 6  # a multiple of len(SYSTEMS): each system goes first equally often
DEFAULT_WORKERS = 1
QUICK_COUNT = 10_000
MIN_COUNT = 1_000
MAX_WORKERS = 8
WARMUP_MIN_TASKS = 2_000  # meshq warm-up tasks, at least
FLUSH_EVERY = 1_024  # raw, several workers: tasks between additions to the shared count
IDLE = 0.001  # raw, several workers: seconds without a task before a worker adds its count
SETUP_TIMEOUT = 15.0  # seconds to connect, see every worker, and finish the warm-up
WARMUP_PACE = 0.002  # seconds between raw warm-up frames (waiting on the Events)
MAX_WARMUPS = int(SETUP_TIMEOUT / WARMUP_PACE)
TASK_TIMEOUT = 5.0  # seconds one send, or one batch's answer, may take
PUSH_TIMEOUT = 30.0  # seconds push_many, drain, or the raw workers' count may take
RUN_TIMEOUT = 60.0  # seconds before the orchestrator kills a run's processes
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "pipeline.json"
US = 1e6  # microseconds per second


class WorkerReport(TypedDict):
    role: Literal["worker"]
    index: int
    handled: int  # tasks (raw: counted; meshq: Worker.done, warm-up included)
    errors: int  # meshq: tasks whose handler raised
    error: str


class ProducerReport(TypedDict):
    role: Literal["producer"]
    count: int
    completed: int  # raw: counted by the workers; meshq: pipeline.completed
    failed: int
    lost: int
    warmup_tasks: int
    elapsed_s: float
    push_s: float
    cpu_s: float  # producer process, timed window
    worker_cpu_s: float  # all worker processes, timed window (0 if unknown)
    mismatches: int  # meshq: results that are not the payload
    stats: dict[str, int]
    error: str


Report = WorkerReport | ProducerReport


class RunResult(TypedDict):
    system: System
    batch: int  # 0 for raw
    position: int  # 0: this system went first in its repeat
    count: int
    completed: int
    failed: int
    lost: int
    elapsed_s: float
    tasks_s: float
    push_s: float
    producer_cpu_us: float  # per task
    worker_cpu_us: float  # per task, summed over workers
    handled_by_worker: list[int]  # tasks per worker (meshq: warm-up included)
    mismatches: int
    producer_stats: dict[str, int]
    error: str


class Summary(TypedDict):
    batch: int
    tasks_s: float
    push_s: float
    producer_cpu_us: float
    worker_cpu_us: float
    count: int
    completed: int
    failed: int
    lost: int
    mismatches: int
    runs: list[RunResult]


class Shared:
    """What the raw workers and the producer share (created once per run)."""

    def __init__(self, ctx: multiprocessing.context.SpawnContext, workers: int) -> None:
        self.total: Synchronized[int] = ctx.Value("q", 0)
        self.finish: Synchronized[float] = ctx.Value("d", 0.0)
        self.finished: Event = ctx.Event()
        self.stop: Event = ctx.Event()
        self.ready: list[Event] = [ctx.Event() for _ in range(workers)]


def make_payload(size: int) -> bytes:
    """The same deterministic payload in every process and for every system."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def warmup_tasks(workers: int, batch: int) -> int:
    return max(WARMUP_MIN_TASKS, 2 * workers * CREDIT * batch)


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def process_cpu_s(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far, from /proc (0.0 where unreadable)."""
    total = 0
    for path in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def workers_cpu_s(pids: Sequence[int]) -> float:
    return sum(process_cpu_s(pid) for pid in pids)


def echo(task: object) -> object:
    return task


def source_revision() -> str:
    """The git commit the bench ran on (with "+dirty" for local changes), or ""."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return commit + ("+dirty" if dirty else "")


# --------------------------------------------------------------------------
# Worker processes


def work_raw(index: int, count: int, workers: int, link: Connection, shared: Shared) -> int:
    """Receive and count tasks until the workers together have ``count``; return this one's."""
    if not link.poll(SETUP_TIMEOUT):
        raise TimeoutError("producer sent no endpoint")
    endpoint = link.recv()
    if not isinstance(endpoint, str):
        raise TypeError(f"bad endpoint {endpoint!r}")
    # Alone, the worker knows its share: it counts all of it before it reports.
    flush_every = count if workers == 1 else FLUSH_EVERY
    idle = TASK_TIMEOUT if workers == 1 else IDLE
    context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
    sock = context.socket(zmq.PULL)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        recv = sock.recv
        sock.setsockopt(zmq.RCVTIMEO, int(SETUP_TIMEOUT * 1000))
        recv()  # the first warm-up frame: connected
        shared.ready[index].set()
        sock.setsockopt(zmq.RCVTIMEO, max(1, int(idle * 1000)))
        clock = time.perf_counter
        total = shared.total
        deadline = time.monotonic() + PUSH_TIMEOUT + SETUP_TIMEOUT

        def flush(local: int, stamp: float) -> None:
            with total.get_lock():
                total.value += local
                reached = total.value >= count
            if reached:
                shared.finish.value = stamp
                shared.finished.set()

        handled = 0
        local = 0  # counted here, not yet added to the shared total
        # Bounded by the deadline: every pass either counts a frame or waits `idle`.
        while not shared.finished.is_set() and time.monotonic() < deadline:
            try:
                frame = recv()
            except zmq.Again:
                if local:
                    flush(local, clock() - idle)  # the last task came before this wait
                    handled += local
                    local = 0
                continue
            if len(frame) != SIZE:
                continue  # a late warm-up frame
            local += 1
            if local == flush_every:
                flush(local, clock())
                handled += local
                local = 0
        return handled + local
    finally:
        sock.close(linger=0)
        context.term()


def work_meshq(index: int, link: Connection, shared: Shared) -> tuple[int, int]:
    """Offer the stage until the producer is done; return (handled, handler errors)."""
    with meshq.Node(f"bench-worker-{index}", interfaces=[LOOPBACK], discovery=False) as node:
        worker = Worker(node, STAGE, echo)
        link.send(node.control_endpoints[0])
        shared.stop.wait(RUN_TIMEOUT)  # the service thread handles batches meanwhile
        return int(worker.done), int(worker.errors)


def worker_main(
    system: System,
    index: int,
    count: int,
    workers: int,
    link: Connection,
    shared: Shared,
    reports: Queue[Report],
) -> None:
    try:
        if system == "raw":
            handled, errors = work_raw(index, count, workers, link, shared), 0
        else:
            handled, errors = work_meshq(index, link, shared)
        reports.put(
            WorkerReport(role="worker", index=index, handled=handled, errors=errors, error="")
        )
    except BaseException as exc:
        reports.put(
            WorkerReport(role="worker", index=index, handled=0, errors=0, error=error_text(exc))
        )


# --------------------------------------------------------------------------
# Producer process


def empty_report(count: int, error: str) -> ProducerReport:
    return ProducerReport(
        role="producer",
        count=count,
        completed=0,
        failed=0,
        lost=0,
        warmup_tasks=0,
        elapsed_s=0.0,
        push_s=0.0,
        cpu_s=0.0,
        worker_cpu_s=0.0,
        mismatches=0,
        stats={},
        error=error,
    )


def produce_raw(
    count: int, links: Sequence[Connection], pids: Sequence[int], shared: Shared
) -> ProducerReport:
    payload = make_payload(SIZE)
    context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
    sock = context.socket(zmq.PUSH)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, int(TASK_TIMEOUT * 1000))
        port = sock.bind_to_random_port(f"tcp://{LOOPBACK}")
        for link in links:
            link.send(f"tcp://{LOOPBACK}:{port}")
        send = sock.send

        # Warm-up: 1-byte frames until every worker has received one.
        warmups = 0
        deadline = time.monotonic() + SETUP_TIMEOUT
        while not all(ready.is_set() for ready in shared.ready):
            if warmups >= MAX_WARMUPS or time.monotonic() > deadline:
                raise TimeoutError(f"not every worker saw a warm-up frame after {warmups} sends")
            send(WARM_FRAME)
            warmups += 1
            time.sleep(WARMUP_PACE)

        worker_cpu = workers_cpu_s(pids)
        cpu = time.process_time()
        start = time.perf_counter()
        for _ in range(count):
            send(payload)
        push_s = time.perf_counter() - start
        if not shared.finished.wait(PUSH_TIMEOUT):
            raise TimeoutError(f"workers counted {shared.total.value} of {count} tasks")
        elapsed = shared.finish.value - start
        cpu = time.process_time() - cpu
        worker_cpu = workers_cpu_s(pids) - worker_cpu
        completed = int(shared.total.value)
        return ProducerReport(
            role="producer",
            count=count,
            completed=completed,
            failed=0,
            lost=count - completed,
            warmup_tasks=warmups,
            elapsed_s=elapsed,
            push_s=push_s,
            cpu_s=cpu,
            worker_cpu_s=worker_cpu,
            mismatches=0,
            stats={},
            error="",
        )
    finally:
        sock.close(linger=0)
        context.term()


def wait_for_workers(node: meshq.Node, workers: int) -> None:
    """Wait (bounded) until ``node`` knows ``workers`` providers of the stage."""
    node.wait_for_service(f"pipeline/{STAGE}", workers, timeout=SETUP_TIMEOUT)


def produce_meshq(
    system: System, count: int, links: Sequence[Connection], pids: Sequence[int]
) -> ProducerReport:
    payload = make_payload(SIZE)
    batch = BATCHES[system]
    endpoints = []
    for link in links:
        if not link.poll(SETUP_TIMEOUT):
            raise TimeoutError("a worker sent no endpoint")
        endpoint = link.recv()
        if not isinstance(endpoint, str):
            raise TypeError(f"bad endpoint {endpoint!r}")
        endpoints.append(endpoint)
    with meshq.Node(
        "bench-producer", interfaces=[LOOPBACK], seeds=endpoints, discovery=False
    ) as node:
        wait_for_workers(node, len(links))

        # Warm-up through a pipeline of the same shape: opens a DEALER to every worker.
        warmups = warmup_tasks(len(links), batch)
        warm = Pipeline(node, STAGE, batch=batch, credit=CREDIT, timeout=TASK_TIMEOUT)
        warm.push_many([payload] * warmups, timeout=SETUP_TIMEOUT)
        warm.drain(timeout=SETUP_TIMEOUT)
        if warm.completed != warmups:
            raise RuntimeError(f"warm-up: {warm.completed} of {warmups} tasks completed")

        pipeline = Pipeline(node, STAGE, batch=batch, credit=CREDIT, timeout=TASK_TIMEOUT)
        tasks = [payload] * count
        worker_cpu = workers_cpu_s(pids)
        cpu = time.process_time()
        start = time.perf_counter()
        pipeline.push_many(tasks, timeout=PUSH_TIMEOUT)
        push_s = time.perf_counter() - start
        pipeline.drain(timeout=PUSH_TIMEOUT)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        worker_cpu = workers_cpu_s(pids) - worker_cpu

        mismatches = sum(1 for result in pipeline.results() if result.value != payload)
        return ProducerReport(
            role="producer",
            count=count,
            completed=int(pipeline.completed),
            failed=int(pipeline.failed),
            lost=int(pipeline.lost),
            warmup_tasks=warmups,
            elapsed_s=elapsed,
            push_s=push_s,
            cpu_s=cpu,
            worker_cpu_s=worker_cpu,
            mismatches=mismatches,
            stats=node.stats(),
            error="",
        )


def producer_main(
    system: System,
    count: int,
    links: list[Connection],
    pids: list[int],
    shared: Shared,
    reports: Queue[Report],
) -> None:
    try:
        if system == "raw":
            reports.put(produce_raw(count, links, pids, shared))
        else:
            reports.put(produce_meshq(system, count, links, pids))
    except BaseException as exc:
        reports.put(empty_report(count, error_text(exc)))
    finally:
        shared.stop.set()


# --------------------------------------------------------------------------
# Orchestration


def run_once(system: System, count: int, workers: int, position: int) -> RunResult:
    """``count`` tasks from a fresh producer process to ``workers`` fresh worker processes."""
    ctx = multiprocessing.get_context("spawn")
    pipes = [ctx.Pipe() for _ in range(workers)]
    shared = Shared(ctx, workers)
    reports: Queue[Report] = ctx.Queue()
    worker_processes = [
        ctx.Process(
            target=worker_main,
            args=(system, index, count, workers, pipes[index][1], shared, reports),
            name=f"bench-worker{index}-{system}",
            daemon=True,
        )
        for index in range(workers)
    ]
    for process in worker_processes:
        process.start()
    pids = [process.pid for process in worker_processes if process.pid is not None]
    producer_process = ctx.Process(
        target=producer_main,
        args=(system, count, [pipe[0] for pipe in pipes], pids, shared, reports),
        name=f"bench-producer-{system}",
        daemon=True,
    )
    producer_process.start()
    processes = {"producer": producer_process}
    processes.update({f"worker{i}": process for i, process in enumerate(worker_processes)})
    found, errors = collect_reports(
        processes,
        reports,
        lambda report: "producer" if report["role"] == "producer" else f"worker{report['index']}",
        RUN_TIMEOUT,
        before_join=shared.stop.set,
    )
    producer: ProducerReport | None = found.get("producer")
    worker_reports: dict[int, WorkerReport] = {
        i: found[f"worker{i}"] for i in range(workers) if f"worker{i}" in found
    }
    for left, right in pipes:
        left.close()
        right.close()

    report_in = producer or empty_report(count, "")
    errors += [r["error"] for r in (report_in, *worker_reports.values()) if r["error"]]
    handled = [worker_reports[i]["handled"] if i in worker_reports else 0 for i in range(workers)]
    if system != "raw" and sum(handled) - report_in["warmup_tasks"] != report_in["completed"]:
        errors.append(
            f"workers handled {sum(handled):,} tasks, producer counted "
            f"{report_in['completed']:,} + {report_in['warmup_tasks']:,} warm-up"
        )
    if producer is not None and not producer["error"] and producer["completed"] != count:
        errors.append(f"{producer['completed']:,} of {count:,} tasks completed")
    elapsed = report_in["elapsed_s"]
    completed = report_in["completed"]
    return RunResult(
        system=system,
        batch=BATCHES.get(system, 0),
        position=position,
        count=count,
        completed=completed,
        failed=report_in["failed"],
        lost=report_in["lost"],
        elapsed_s=elapsed,
        tasks_s=completed / elapsed if elapsed > 0 else 0.0,
        push_s=report_in["push_s"],
        producer_cpu_us=report_in["cpu_s"] / completed * US if completed else 0.0,
        worker_cpu_us=report_in["worker_cpu_s"] / completed * US if completed else 0.0,
        handled_by_worker=handled,
        mismatches=report_in["mismatches"],
        producer_stats=report_in["stats"],
        error="; ".join(errors),
    )


def summarise(runs: list[RunResult]) -> Summary:
    def median(key: Literal["tasks_s", "push_s", "producer_cpu_us", "worker_cpu_us"]) -> float:
        return statistics.median(r[key] for r in runs)

    return Summary(
        batch=runs[0]["batch"],
        tasks_s=median("tasks_s"),
        push_s=median("push_s"),
        producer_cpu_us=median("producer_cpu_us"),
        worker_cpu_us=median("worker_cpu_us"),
        count=sum(r["count"] for r in runs),
        completed=sum(r["completed"] for r in runs),
        failed=sum(r["failed"] for r in runs),
        lost=sum(r["lost"] for r in runs),
        mismatches=sum(r["mismatches"] for r in runs),
        runs=runs,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="meshq pipeline (Pipeline/Worker) throughput against raw pyzmq "
        "PUSH/PULL (loopback)."
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help=f"runs per system, rotating which goes first; median reported ({DEFAULT_REPEAT})",
    )
    parser.add_argument(
        "--count", type=int, default=None, help=f"tasks per run ({DEFAULT_COUNT:,})"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"worker processes ({DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: --count {QUICK_COUNT:,} --repeat 1 unless given",
    )
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"where to write results ({DEFAULT_JSON})"
    )
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else DEFAULT_REPEAT
    if args.count is None:
        args.count = QUICK_COUNT if args.quick else DEFAULT_COUNT
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.count < MIN_COUNT:
        parser.error(f"--count must be >= {MIN_COUNT:,}")
    if not 1 <= args.workers <= MAX_WORKERS:
        parser.error(f"--workers must be 1..{MAX_WORKERS}")
    return args


def format_table(results: dict[System, Summary]) -> str:
    header = (
        f"{'system':<10} {'batch':>5} {'tasks/s':>10} {'ratio':>6} {'push s':>7} "
        f"{'prod cpu':>9} {'work cpu':>9} {'completed':>10} {'lost':>5}"
    )
    lines = [header, "-" * len(header)]
    raw = results["raw"]
    for system in SYSTEMS:
        s = results[system]
        value = ratio(s["tasks_s"], raw["tasks_s"])
        cell = "" if system == "raw" else f"{value:.2f}" if value is not None else "n/a"
        batch = "-" if system == "raw" else str(s["batch"])
        lines.append(
            f"{system:<10} {batch:>5} {s['tasks_s']:>10,.0f} {cell:>6} {s['push_s']:>7.3f} "
            f"{s['producer_cpu_us']:>9.2f} {s['worker_cpu_us']:>9.2f} {s['completed']:>10,} "
            f"{s['lost']:>5,}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    repeat: int = args.repeat
    count: int = args.count
    workers: int = args.workers
    print(
        f"meshq pipeline vs raw pyzmq PUSH/PULL: one producer and {workers} worker "
        f"process(es) per run, spawned; loopback TCP {LOOPBACK}; meshq joins by seed "
        f"(discovery=False, no mDNS); {count:,} tasks of {SIZE} B per run, credit {CREDIT}; "
        f"repeat {repeat}, medians shown",
        flush=True,
    )
    load_start = print_load("start")
    began = time.monotonic()
    # Every run's processes import meshq afresh: say so if the code changed meanwhile.
    revision = source_revision()
    runs: dict[System, list[RunResult]] = {system: [] for system in SYSTEMS}
    failures: list[str] = []
    for index in range(repeat):
        shift = index % len(SYSTEMS)
        order = SYSTEMS[shift:] + SYSTEMS[:shift]  # rotate who goes first
        for position, system in enumerate(order):
            result = run_once(system, count, workers, position)
            runs[system].append(result)
            problems = [result["error"]] if result["error"] else []
            if result["mismatches"]:
                problems.append(f"{result['mismatches']} results differ from the task")
            note = f"  ERROR {'; '.join(problems)}" if problems else ""
            if problems:
                failures.append(f"{system} run {index + 1}: {'; '.join(problems)}")
            split = "/".join(f"{n:,}" for n in result["handled_by_worker"])
            print(
                f"  {system:<9} run {index + 1}/{repeat}: {result['tasks_s']:>10,.0f} tasks/s, "
                f"{result['elapsed_s']:.3f} s, handled per worker {split}{note}",
                flush=True,
            )
    results = {system: summarise(runs[system]) for system in SYSTEMS}
    print()
    print(format_table(results))
    raw_rates = [r["tasks_s"] for r in runs["raw"]]
    print(
        "ratio per round, median [min-max]: "
        + ", ".join(
            f"{system} {paired_ratios([r['tasks_s'] for r in runs[system]], raw_rates)}"
            for system in SYSTEMS
            if system != "raw"
        )
    )
    wall = time.monotonic() - began
    load_end = print_load("end")
    revision_end = source_revision()
    if revision_end != revision or revision.endswith("+dirty"):
        print(
            f"note: source revision {revision or '?'} at the start, "
            f"{revision_end or '?'} at the end"
        )
    print(
        f"\n{wall:.1f} s wall; ratio = tasks/s / raw tasks/s (medians; target >= "
        f"{TARGET_RATIO}); push s = producer's send loop / push_many; prod cpu, work cpu = "
        "CPU us per task of the producer / all workers (all threads) in the timed window.\n"
        "Not the same guarantee: raw PUSH/PULL has no acknowledgement and silently loses "
        "what a dead worker held; meshq's pipeline gets a result back for every task "
        "(acknowledged per batch) and counts a dead worker's tasks as lost."
    )

    raw = results["raw"]
    by_system: dict[str, object] = {system: results[system] for system in SYSTEMS}
    document = {
        "benchmark": "pipeline",
        "meta": {
            "transport": f"tcp over loopback {LOOPBACK}",
            "meshq_joining": "seed: each worker's ephemeral control endpoint, discovery=False",
            "processes": f"one producer and {workers} worker process(es) per run, spawn",
            "workers": workers,
            "payload_bytes": SIZE,
            "tasks_per_run": count,
            "credit": CREDIT,
            "batches": dict(BATCHES),
            "handler": "meshq: returns the task unchanged; raw: the worker counts the frame",
            "end": "raw: workers counted all tasks (stamped by the worker); meshq: drain() "
            "returned and completed == count",
            "semantics": "raw PUSH/PULL: no acknowledgement, a dead worker's tasks vanish; "
            "meshq Pipeline: one result per task comes back (per-batch request/reply), a "
            "dead worker's tasks are counted as lost",
            "repeat": repeat,
            "aggregation": "per-run figures: median of runs; counts: totals",
            "cpu": "timed window; producer: process_time; workers: /proc/<pid>/task/*/schedstat",
            **environment(),
            "load_average_start": load_start,
            "load_average_end": load_end,
            "revision": revision,
            "revision_end": revision_end,
            "wall_s": round(wall, 2),
        },
        "results": {
            **by_system,
            "ratio": {
                system: ratio(results[system]["tasks_s"], raw["tasks_s"])
                for system in SYSTEMS
                if system != "raw"
            },
            "target_ratio": TARGET_RATIO,
        },
        "failures": failures,
    }
    return write_results(args.json, document, failures)


if __name__ == "__main__":
    sys.exit(main())
