"""Request/reply latency and throughput: meshq against raw pyzmq, in the same run.

What it measures
----------------
For each system, one provider process answers requests from one caller
process over loopback TCP (127.0.0.1); both processes are started fresh for
every run with the multiprocessing "spawn" start method. Each run has two
timed phases, on the same connection, after ``WARMUP`` untimed round trips:

1. latency: one request at a time, ``count`` round trips; every round trip is
   timed on its own with ``time.perf_counter_ns`` (send to reply in hand).
2. throughput: ``WINDOW`` (64) requests kept in flight, ``THROUGHPUT_SCALE *
   count`` requests in all, timed from the first send to the last reply.

* raw: the caller's pyzmq DEALER sends the 100-byte payload as one frame;
  the provider's ROUTER receives ``[identity, frame]`` with
  ``recv_multipart()`` and answers with ``send_multipart([identity, frame])``.
  Latency: ``send`` then a blocking ``recv``. Throughput: send 64, then one
  more for each reply received.
* meshq: the provider calls ``node.serve("echo", lambda d: d)``. Latency:
  ``node.request("echo", payload, timeout=..., retries=0)``. Throughput: 64
  ``RequestFuture`` objects from ``node.request_async(...)`` in a queue,
  resolved in order with ``.result()``, and a new one issued for each one
  resolved. The two nodes find each other through a seed
  (``discovery=False``, no multicast): the provider's node hands its control
  endpoint to the caller over a pipe, and the caller waits (bounded) until
  ``node.wait_for_service("echo")`` returns, before its warm-up.

Both systems use the same payload bytes, the same counts and the same loop
shapes; every reply is compared with the payload (after the clock is read)
and a mismatch is counted.

Every loop is bounded: the caller's loops by their counts, each wait for a
reply by ``REPLY_TIMEOUT`` (RCVTIMEO for raw, ``timeout=`` for meshq, no
retries), the wait for the service by ``SETUP_TIMEOUT``, the raw provider by
the number of requests the caller will send and a deadline, the meshq
provider by a deadline, and the orchestrator kills a run's processes after
``RUN_TIMEOUT``.

Reading the numbers
-------------------
``p50``/``p99``/``p999`` are percentiles (nearest rank) of the round-trip
times of one run, in microseconds; ``req/s`` is the throughput phase's
request count over its duration. ``cpu/rt`` and ``cpu @64`` are the caller
process's CPU time (all threads, ZeroMQ's I/O thread included, from
``time.process_time``) per request in the latency and throughput phases, in
microseconds; ``prov cpu`` is the provider process's CPU time per request
served over the whole run (warm-up and idle waits included). Each system
runs ``--repeat`` times (4), the systems alternating which goes first, and
the table shows medians. On two cores a run's scheduling (which threads
share a core) moves even raw pyzmq's p50 between about 30 and 105 us from
one run (or one invocation) to the next, while the microseconds meshq adds
stay much the same; so the ``added`` row (meshq minus raw) is the steadier
figure, and the ratio is only comparable between runs whose raw p50 agree.
The ratio
row is meshq over raw: for latency, 1.0 means meshq adds nothing; for req/s, 1.0 means as many
requests per second, 0.5 half as many. The project's targets (issue 13):
p50 at most 30 us above raw, p99 at most 2x raw, and req/s at 64 in flight
at least 0.6 of raw. The machines are shared and noisy; compare
ratios from the same run, not absolute numbers across runs.

Usage::

    python bench/reqrep.py [--repeat N] [--quick] [--count N] [--json PATH]
"""

from __future__ import annotations

import argparse
import collections
import math
import multiprocessing
import statistics
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
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
    wait_for_service,
    write_results,
)

System = Literal["raw", "meshq"]
SYSTEMS: tuple[System, ...] = ("raw", "meshq")

SERVICE = "echo"
SIZE = 100  # payload bytes
LOOPBACK = "127.0.0.1"
WINDOW = 64  # requests in flight in the throughput phase
WARMUP = 500  # untimed round trips before the latency phase
THROUGHPUT_SCALE = 3  # throughput requests = this * count

DEFAULT_COUNT = 20_000
DEFAULT_REPEAT = 4  # even, so that each system goes first equally often
QUICK_COUNT = 2_000
MIN_COUNT = 100
SETUP_TIMEOUT = 15.0  # seconds to connect, see the service and get the first reply
REPLY_TIMEOUT = 2.0  # seconds any one reply may take before the run fails
IDLE_SLICE = 0.1  # seconds the raw provider waits on recv before it looks at `done`
RUN_TIMEOUT = 60.0  # seconds before the orchestrator kills a run's processes
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "reqrep.json"
US = 1_000  # nanoseconds per microsecond


class ProviderReport(TypedDict):
    role: Literal["provider"]
    served: int
    cpu_s: float
    error: str


class CallerReport(TypedDict):
    role: Literal["caller"]
    latencies_ns: list[int]
    latency_cpu_s: float
    throughput_requests: int
    throughput_s: float
    throughput_cpu_s: float
    mismatches: int
    stats: dict[str, int]
    error: str


Report = ProviderReport | CallerReport


class RunResult(TypedDict):
    system: System
    position: int  # 0: this system went first in its repeat
    round_trips: int
    p50_us: float
    p99_us: float
    p999_us: float
    mean_us: float
    max_us: float
    latency_caller_cpu_us: float  # per round trip
    throughput_requests: int
    throughput_s: float
    req_s: float
    throughput_caller_cpu_us: float  # per request
    provider_served: int
    provider_cpu_us: float  # per request served, whole run
    mismatches: int
    caller_stats: dict[str, int]
    error: str


class Summary(TypedDict):
    p50_us: float
    p99_us: float
    p999_us: float
    mean_us: float
    req_s: float
    latency_caller_cpu_us: float
    throughput_caller_cpu_us: float
    provider_cpu_us: float
    round_trips: int
    throughput_requests: int
    mismatches: int
    runs: list[RunResult]


def make_payload(size: int) -> bytes:
    """The same deterministic payload in every process and for both systems."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def throughput_count(count: int) -> int:
    return max(WINDOW, THROUGHPUT_SCALE * count)


def percentile(ordered: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of sorted samples (0 for none)."""
    if not ordered:
        return 0
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------
# Provider process


def provide_raw(count: int, link: Connection, done: Event) -> ProviderReport:
    expected = WARMUP + count + throughput_count(count)
    context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
    sock = context.socket(zmq.ROUTER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(IDLE_SLICE * 1000))
        port = sock.bind_to_random_port(f"tcp://{LOOPBACK}")
        link.send(f"tcp://{LOOPBACK}:{port}")
        recv_multipart = sock.recv_multipart
        send_multipart = sock.send_multipart
        deadline = time.monotonic() + RUN_TIMEOUT
        cpu = time.process_time()
        served = 0
        # Bounded by the requests the caller will send, and by time while idle.
        while served < expected:
            try:
                identity, frame = recv_multipart()
            except zmq.Again:
                if done.is_set() or time.monotonic() > deadline:
                    break
                continue
            send_multipart([identity, frame])
            served += 1
        cpu = time.process_time() - cpu
        done.wait(max(0.0, deadline - time.monotonic()))  # answered all; close after the caller
        return ProviderReport(role="provider", served=served, cpu_s=cpu, error="")
    finally:
        sock.close(linger=0)
        context.term()


def provide_meshq(count: int, link: Connection, done: Event) -> ProviderReport:
    with meshq.Node("bench-provider", interfaces=[LOOPBACK], discovery=False) as node:
        node.serve(SERVICE, lambda data: data)
        link.send(node.control_endpoints[0])
        cpu = time.process_time()
        done.wait(RUN_TIMEOUT)  # the service thread answers meanwhile
        cpu = time.process_time() - cpu
        served = node.stats().get("requests_served", 0)
        return ProviderReport(role="provider", served=served, cpu_s=cpu, error="")


def provider_main(
    system: System, count: int, link: Connection, done: Event, reports: Queue[Report]
) -> None:
    try:
        run = provide_raw if system == "raw" else provide_meshq
        reports.put(run(count, link, done))
    except BaseException as exc:
        reports.put(ProviderReport(role="provider", served=0, cpu_s=0.0, error=error_text(exc)))


# --------------------------------------------------------------------------
# Caller process


def receive_endpoint(link: Connection) -> str:
    if not link.poll(SETUP_TIMEOUT):
        raise TimeoutError("provider sent no endpoint")
    endpoint = link.recv()
    if not isinstance(endpoint, str):
        raise TypeError(f"bad endpoint {endpoint!r}")
    return endpoint


def call_raw(count: int, link: Connection) -> CallerReport:
    payload = make_payload(SIZE)
    total = throughput_count(count)
    context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
    sock = context.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(receive_endpoint(link))
        send = sock.send
        recv = sock.recv
        mismatches = 0

        # Warm-up: the first reply proves the connection is up.
        sock.setsockopt(zmq.RCVTIMEO, int(SETUP_TIMEOUT * 1000))
        send(payload)
        mismatches += recv() != payload
        sock.setsockopt(zmq.RCVTIMEO, int(REPLY_TIMEOUT * 1000))
        for _ in range(WARMUP - 1):
            send(payload)
            mismatches += recv() != payload

        # Latency: one request at a time.
        clock = time.perf_counter_ns
        latencies = [0] * count
        cpu = time.process_time()
        for i in range(count):
            start = clock()
            send(payload)
            reply = recv()
            latencies[i] = clock() - start
            mismatches += reply != payload
        latency_cpu = time.process_time() - cpu

        # Throughput: WINDOW in flight, one more sent per reply.
        cpu = time.process_time()
        begin = time.perf_counter()
        sent = min(WINDOW, total)
        for _ in range(sent):
            send(payload)
        received = 0
        while received < total:
            reply = recv()
            received += 1
            mismatches += reply != payload
            if sent < total:
                send(payload)
                sent += 1
        elapsed = time.perf_counter() - begin
        throughput_cpu = time.process_time() - cpu
        return CallerReport(
            role="caller",
            latencies_ns=latencies,
            latency_cpu_s=latency_cpu,
            throughput_requests=received,
            throughput_s=elapsed,
            throughput_cpu_s=throughput_cpu,
            mismatches=mismatches,
            stats={},
            error="",
        )
    finally:
        sock.close(linger=0)
        context.term()


def call_meshq(count: int, link: Connection) -> CallerReport:
    payload = make_payload(SIZE)
    total = throughput_count(count)
    endpoint = receive_endpoint(link)
    with meshq.Node(
        "bench-caller", interfaces=[LOOPBACK], seeds=[endpoint], discovery=False
    ) as node:
        wait_for_service(node, SERVICE, SETUP_TIMEOUT)
        request = node.request
        request_async = node.request_async
        mismatches = 0

        # Warm-up: also opens the caller's DEALER to the provider.
        for _ in range(WARMUP):
            mismatches += request(SERVICE, payload, timeout=REPLY_TIMEOUT, retries=0) != payload

        # Latency: one request at a time.
        clock = time.perf_counter_ns
        latencies = [0] * count
        cpu = time.process_time()
        for i in range(count):
            start = clock()
            reply = request(SERVICE, payload, timeout=REPLY_TIMEOUT, retries=0)
            latencies[i] = clock() - start
            mismatches += reply != payload
        latency_cpu = time.process_time() - cpu

        # Throughput: WINDOW futures in flight, resolved in order, one more per result.
        cpu = time.process_time()
        begin = time.perf_counter()
        sent = min(WINDOW, total)
        futures = collections.deque(
            request_async(SERVICE, payload, timeout=REPLY_TIMEOUT, retries=0) for _ in range(sent)
        )
        received = 0
        while received < total:
            reply = futures.popleft().result(REPLY_TIMEOUT)
            received += 1
            mismatches += reply != payload
            if sent < total:
                futures.append(request_async(SERVICE, payload, timeout=REPLY_TIMEOUT, retries=0))
                sent += 1
        elapsed = time.perf_counter() - begin
        throughput_cpu = time.process_time() - cpu
        return CallerReport(
            role="caller",
            latencies_ns=latencies,
            latency_cpu_s=latency_cpu,
            throughput_requests=received,
            throughput_s=elapsed,
            throughput_cpu_s=throughput_cpu,
            mismatches=mismatches,
            stats=node.stats(),
            error="",
        )


def caller_main(
    system: System, count: int, link: Connection, done: Event, reports: Queue[Report]
) -> None:
    try:
        run = call_raw if system == "raw" else call_meshq
        reports.put(run(count, link))
    except BaseException as exc:
        reports.put(
            CallerReport(
                role="caller",
                latencies_ns=[],
                latency_cpu_s=0.0,
                throughput_requests=0,
                throughput_s=0.0,
                throughput_cpu_s=0.0,
                mismatches=0,
                stats={},
                error=error_text(exc),
            )
        )
    finally:
        done.set()


# --------------------------------------------------------------------------
# Orchestration


def run_once(system: System, count: int, position: int) -> RunResult:
    """Both phases between two fresh processes."""
    ctx = multiprocessing.get_context("spawn")
    provider_link, caller_link = ctx.Pipe()
    done = ctx.Event()
    reports: Queue[Report] = ctx.Queue()
    processes = [
        ctx.Process(
            target=target,
            args=(system, count, link, done, reports),
            name=f"bench-{role}-{system}",
            daemon=True,
        )
        for target, link, role in (
            (provider_main, provider_link, "provider"),
            (caller_main, caller_link, "caller"),
        )
    ]
    for process in processes:
        process.start()
    found, errors = collect_reports(
        {"provider": processes[0], "caller": processes[1]},
        reports,
        lambda report: report["role"],
        RUN_TIMEOUT,
    )
    provider: ProviderReport | None = found.get("provider")
    caller: CallerReport | None = found.get("caller")
    provider_link.close()
    caller_link.close()

    errors += [r["error"] for r in (provider, caller) if r is not None and r["error"]]
    ordered = sorted(caller["latencies_ns"]) if caller else []
    n = len(ordered)
    requests = caller["throughput_requests"] if caller else 0
    elapsed = caller["throughput_s"] if caller else 0.0
    served = provider["served"] if provider else 0
    return RunResult(
        system=system,
        position=position,
        round_trips=n,
        p50_us=percentile(ordered, 0.50) / US,
        p99_us=percentile(ordered, 0.99) / US,
        p999_us=percentile(ordered, 0.999) / US,
        mean_us=sum(ordered) / n / US if n else 0.0,
        max_us=ordered[-1] / US if n else 0.0,
        latency_caller_cpu_us=caller["latency_cpu_s"] / n * 1e6 if caller and n else 0.0,
        throughput_requests=requests,
        throughput_s=elapsed,
        req_s=requests / elapsed if elapsed > 0 else 0.0,
        throughput_caller_cpu_us=(
            caller["throughput_cpu_s"] / requests * 1e6 if caller and requests else 0.0
        ),
        provider_served=served,
        provider_cpu_us=provider["cpu_s"] / served * 1e6 if provider and served else 0.0,
        mismatches=caller["mismatches"] if caller else 0,
        caller_stats=caller["stats"] if caller else {},
        error="; ".join(errors),
    )


def summarise(runs: list[RunResult]) -> Summary:
    def median(
        key: Literal[
            "p50_us",
            "p99_us",
            "p999_us",
            "mean_us",
            "req_s",
            "latency_caller_cpu_us",
            "throughput_caller_cpu_us",
            "provider_cpu_us",
        ],
    ) -> float:
        return statistics.median(r[key] for r in runs)

    return Summary(
        p50_us=median("p50_us"),
        p99_us=median("p99_us"),
        p999_us=median("p999_us"),
        mean_us=median("mean_us"),
        req_s=median("req_s"),
        latency_caller_cpu_us=median("latency_caller_cpu_us"),
        throughput_caller_cpu_us=median("throughput_caller_cpu_us"),
        provider_cpu_us=median("provider_cpu_us"),
        round_trips=sum(r["round_trips"] for r in runs),
        throughput_requests=sum(r["throughput_requests"] for r in runs),
        mismatches=sum(r["mismatches"] for r in runs),
        runs=runs,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="meshq request/reply latency and throughput against raw pyzmq "
        "DEALER/ROUTER (loopback)."
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per system, alternating which goes first; median reported (4)",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=None,
        help=f"timed round trips in the latency phase ({DEFAULT_COUNT:,}); the throughput "
        f"phase sends {THROUGHPUT_SCALE}x as many",
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
        parser.error(f"--count must be >= {MIN_COUNT}")
    return args


def format_table(results: dict[System, Summary]) -> str:
    header = (
        f"{'system':<7} {'p50 us':>8} {'p99 us':>8} {'p999 us':>8} {'mean us':>8} "
        f"{'req/s @64':>10} {'cpu/rt':>7} {'cpu @64':>8} {'prov cpu':>9}"
    )
    lines = [header, "-" * len(header)]
    for system in SYSTEMS:
        s = results[system]
        lines.append(
            f"{system:<7} {s['p50_us']:>8.1f} {s['p99_us']:>8.1f} {s['p999_us']:>8.1f} "
            f"{s['mean_us']:>8.1f} {s['req_s']:>10,.0f} {s['latency_caller_cpu_us']:>7.1f} "
            f"{s['throughput_caller_cpu_us']:>8.1f} {s['provider_cpu_us']:>9.1f}"
        )
    raw, mesh = results["raw"], results["meshq"]

    def cell(key: Literal["p50_us", "p99_us", "p999_us", "mean_us", "req_s"], width: int) -> str:
        value = ratio(mesh[key], raw[key])
        return f"{value:>{width}.2f}" if value is not None else f"{'n/a':>{width}}"

    lines.append(
        f"{'ratio':<7} {cell('p50_us', 8)} {cell('p99_us', 8)} {cell('p999_us', 8)} "
        f"{cell('mean_us', 8)} {cell('req_s', 10)}"
    )
    added = [mesh[key] - raw[key] for key in ("p50_us", "p99_us", "p999_us", "mean_us")]
    lines.append(f"{'added':<7} " + " ".join(f"{value:>8.1f}" for value in added))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    repeat: int = args.repeat
    count: int = args.count
    total = throughput_count(count)
    print(
        "meshq request/reply vs raw pyzmq DEALER/ROUTER: two spawned processes per run, "
        f"loopback TCP {LOOPBACK}; meshq joins by seed (discovery=False, no mDNS); "
        f"{SIZE} B echo; {WARMUP} warm-up, {count:,} timed round trips, then {total:,} "
        f"requests {WINDOW} in flight; repeat {repeat}, medians shown",
        flush=True,
    )
    load_start = print_load("start")
    began = time.monotonic()
    runs: dict[System, list[RunResult]] = {system: [] for system in SYSTEMS}
    failures: list[str] = []
    for index in range(repeat):
        order = SYSTEMS[index % 2 :] + SYSTEMS[: index % 2]  # alternate who goes first
        for position, system in enumerate(order):
            result = run_once(system, count, position)
            runs[system].append(result)
            problems = [result["error"]] if result["error"] else []
            if result["mismatches"]:
                problems.append(f"{result['mismatches']} replies differ from the payload")
            note = f"  ERROR {'; '.join(problems)}" if problems else ""
            if problems:
                failures.append(f"{system} run {index + 1}: {'; '.join(problems)}")
            print(
                f"  {system:<5} run {index + 1}/{repeat}: p50 {result['p50_us']:7.1f} us, "
                f"p99 {result['p99_us']:7.1f} us, p999 {result['p999_us']:7.1f} us, "
                f"{result['req_s']:>9,.0f} req/s @{WINDOW}{note}",
                flush=True,
            )
    results = {system: summarise(runs[system]) for system in SYSTEMS}
    print()
    print(format_table(results))
    raw_runs, mesh_runs = runs["raw"], runs["meshq"]
    added = sorted(m["p50_us"] - r["p50_us"] for m, r in zip(mesh_runs, raw_runs, strict=True))
    print(
        "ratio per round, median [min-max]: p50 "
        f"{paired_ratios([r['p50_us'] for r in mesh_runs], [r['p50_us'] for r in raw_runs])}, "
        f"p99 {paired_ratios([r['p99_us'] for r in mesh_runs], [r['p99_us'] for r in raw_runs])}, "
        f"req/s @{WINDOW} "
        f"{paired_ratios([r['req_s'] for r in mesh_runs], [r['req_s'] for r in raw_runs])}; "
        f"added p50 per round {added[0]:.1f} to {added[-1]:.1f} us"
    )
    wall = time.monotonic() - began
    load_end = print_load("end")
    print(
        f"\n{wall:.1f} s wall; ratio = meshq / raw (medians; targets: added p50 <= 30 us, "
        f"p99 ratio <= 2, req/s @{WINDOW} ratio >= 0.6); added = meshq - raw, us; "
        f"cpu/rt, cpu @64 = caller CPU us per request "
        f"in the latency and throughput phases; prov cpu = provider CPU us per request "
        f"served, whole run"
    )

    raw, mesh = results["raw"], results["meshq"]
    document = {
        "benchmark": "reqrep",
        "meta": {
            "transport": f"tcp over loopback {LOOPBACK}",
            "meshq_joining": "seed: provider's ephemeral control endpoint, discovery=False",
            "processes": "one provider and one caller process per run, spawn start method",
            "payload_bytes": SIZE,
            "handler": "echo: returns the payload unchanged",
            "warmup_round_trips": WARMUP,
            "latency_round_trips": count,
            "throughput_requests": total,
            "in_flight": WINDOW,
            "reply_timeout_s": REPLY_TIMEOUT,
            "repeat": repeat,
            "percentiles": "nearest rank over one run's round trips, microseconds",
            "aggregation": "per-run figures: median of runs; counts: totals",
            "cpu": "process_time (all threads) per request; provider over the whole run",
            **environment(),
            "load_average_start": load_start,
            "load_average_end": load_end,
            "wall_s": round(wall, 2),
        },
        "results": {
            "raw": raw,
            "meshq": mesh,
            "ratio": {
                "p50": ratio(mesh["p50_us"], raw["p50_us"]),
                "p99": ratio(mesh["p99_us"], raw["p99_us"]),
                "p999": ratio(mesh["p999_us"], raw["p999_us"]),
                "req_s": ratio(mesh["req_s"], raw["req_s"]),
            },
            "added_us": {
                "p50": mesh["p50_us"] - raw["p50_us"],
                "p99": mesh["p99_us"] - raw["p99_us"],
                "p999": mesh["p999_us"] - raw["p999_us"],
            },
            "targets": {"added_p50_us_max": 30, "p99_ratio_max": 2.0, "req_s_ratio_min": 0.6},
        },
        "failures": failures,
    }
    return write_results(args.json, document, failures)


if __name__ == "__main__":
    sys.exit(main())
