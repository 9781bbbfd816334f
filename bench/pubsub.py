"""Publish/subscribe throughput: meshq against raw pyzmq, in the same run.

What it measures
----------------
For each payload size (100 B, 1 KiB, 64 KiB by default) and each system, one
publisher process sends a burst of ``count`` messages to one subscriber
process over loopback TCP (127.0.0.1); both processes are started fresh for
every run with the multiprocessing "spawn" start method.

* raw: a pyzmq PUB socket sends one frame per message, ``b"bench/t\\0" +
  payload`` (built once), and a SUB socket subscribed to ``b"bench/"``
  receives it with ``recv()`` (RCVTIMEO bounds each wait).
* batched: the same as meshq, but the publisher calls
  ``node.publish_many("bench/t", chunk)`` with chunks of ``BATCH`` messages
  (one frame per chunk); the subscriber still receives them one by one with
  ``recv()``. Raw pyzmq could batch too with framing of its own; the row
  shows what meshq's batching buys over the per-message raw baseline.
* meshq: ``node.publish("bench/t", payload)`` with the same bytes object, and
  ``node.subscribe("bench/").recv(timeout=...)`` on the other node. The two
  nodes find each other through a seed (``discovery=False``, no multicast):
  the publisher's node binds an ephemeral control port on 127.0.0.1 and hands
  its control endpoint to the subscriber over a pipe, which passes it as
  ``seeds=[...]``.

Both sides use the same high-water marks (SNDHWM on the PUB socket, RCVHWM
on the SUB socket, equal to ``MeshConfig.publish_hwm`` / ``subscribe_hwm``),
the same payload bytes, the same message count and the same loop shapes.

The slow-joiner problem is handled without sleeps: before the burst the
publisher sends small warm-up messages on ``bench/w`` until the subscriber
says (through a multiprocessing Event) that it received one. The subscriber
tells warm-up and timed messages apart by their length. It times from its
first timed message to its last one; it stops when it has all ``count``
messages or after ``QUIET`` seconds without one (then the end time is taken
as the start of that last, empty wait). ``lost = sent - received``: messages
dropped at a high-water mark (PUB/SUB never blocks the sender).

Every loop is bounded: the publisher's warm-up in count and time, the burst
in count, the subscriber's loops by what the publisher sent and by the quiet
timeout, and the orchestrator kills a run's processes after ``RUN_TIMEOUT``.

One-way latency
---------------
After the throughput runs, each system runs ``--repeat`` more times with
``--latency-count`` (2,000) messages of 100 B published at a steady 1,000
per second (``time.sleep`` to each slot). The publisher writes
``time.perf_counter_ns()`` (CLOCK_MONOTONIC, one clock for all processes
of the machine) into the payload's first 8 bytes just before ``send`` /
``publish``; the subscriber subtracts it from its own clock right after
``recv``. p50 and p99 per run (nearest rank), medians over runs; ``added``
is meshq's p50 minus raw's in the same round.

Reading the numbers
-------------------
``msg/s`` and ``MB/s`` are measured on the subscriber (MB = 10**6 bytes of
payload, meshq's header not counted). ``pub msg/s`` is the publisher's own
send rate (burst size over the time its send loop took); when it is far above
the subscriber's rate, the receiving side is the bottleneck, and vice versa.
Each (system, size) pair runs ``--repeat`` times, the systems rotating
which goes first, and the table shows medians. ``ratio`` is meshq msg/s
divided by raw msg/s: 1.0 means meshq adds nothing over a hand-written pyzmq
program, 0.5 means it moves half as many messages. The machines are shared
and noisy; compare ratios from the same run, not absolute numbers across runs.

Usage::

    python bench/pubsub.py [--sizes 100,1024,65536] [--repeat N] [--quick]
                           [--count-scale X] [--latency-count N] [--json PATH]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
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
    write_results,
)

System = Literal["raw", "meshq", "batched"]
SYSTEMS: tuple[System, ...] = ("raw", "meshq", "batched")
#: Messages per ``publish_many`` call in the "batched" system.
BATCH = 256

TOPIC = "bench/t"
WARM_TOPIC = "bench/w"
PREFIX = "bench/"
RAW_TOPIC = TOPIC.encode() + b"\0"
RAW_WARM_TOPIC = WARM_TOPIC.encode() + b"\0"
WARM_PAYLOAD = b"w"  # one byte: timed payloads are at least two, so length tells them apart
LOOPBACK = "127.0.0.1"

HWM = 100_000  # SNDHWM/RCVHWM for raw, publish_hwm/subscribe_hwm for meshq
QUIET = 1.0  # seconds without a timed message after which the subscriber stops
SETUP_TIMEOUT = 15.0  # seconds to connect and see the first warm-up message
WARMUP_PACE = 0.002  # seconds between warm-up messages (waiting on the Event)
MAX_WARMUPS = int(SETUP_TIMEOUT / WARMUP_PACE)
RUN_TIMEOUT = 60.0  # seconds before the orchestrator kills a run's processes

#: The latency phase: stamped messages of this size at this steady rate (msg/s).
LATENCY_SIZE = 100
LATENCY_RATE = 1000.0
LATENCY_COUNT = 2000

DEFAULT_SIZES = (100, 1024, 65536)
DEFAULT_COUNTS = {100: 200_000, 1024: 100_000, 65536: 10_000}
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "pubsub.json"
MB = 1_000_000


class PubReport(TypedDict):
    role: Literal["pub"]
    sent: int
    send_s: float
    warmups: int
    error: str


class SubReport(TypedDict):
    role: Literal["sub"]
    received: int
    elapsed: float
    quiet_stop: bool
    error: str


Report = PubReport | SubReport


class RunResult(TypedDict):
    system: System
    size: int
    sent: int
    received: int
    lost: int
    elapsed_s: float
    msg_s: float
    mb_s: float
    pub_msg_s: float
    quiet_stop: bool
    error: str


class Summary(TypedDict):
    msg_s: float
    mb_s: float
    pub_msg_s: float
    sent: int
    received: int
    lost: int
    runs: list[RunResult]


def default_count(size: int) -> int:
    """Messages per run: the table for the standard sizes, else about 650 MB of payload."""
    if size in DEFAULT_COUNTS:
        return DEFAULT_COUNTS[size]
    return max(1_000, min(200_000, 655_360_000 // size))


def make_payload(size: int) -> bytes:
    """The same deterministic payload in every process and for both systems."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def mesh_config() -> meshq.MeshConfig:
    return meshq.MeshConfig(publish_hwm=HWM, subscribe_hwm=HWM)


# --------------------------------------------------------------------------
# Publisher process


def warm_up(send_one: Callable[[], object], ready: Event) -> int:
    """Send warm-up messages until the subscriber has seen one; return how many."""
    deadline = time.monotonic() + SETUP_TIMEOUT
    sent = 0
    while not ready.is_set():
        if sent >= MAX_WARMUPS or time.monotonic() > deadline:
            raise TimeoutError(f"subscriber saw no warm-up message after {sent} sends")
        send_one()
        sent += 1
        ready.wait(WARMUP_PACE)
    return sent


def publish_raw(size: int, count: int, link: Connection, ready: Event, done: Event) -> PubReport:
    payload = make_payload(size)
    frame = RAW_TOPIC + payload
    warm = RAW_WARM_TOPIC + WARM_PAYLOAD
    context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
    sock = context.socket(zmq.PUB)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, HWM)
        port = sock.bind_to_random_port(f"tcp://{LOOPBACK}")
        link.send(f"tcp://{LOOPBACK}:{port}")
        send = sock.send
        warmups = warm_up(lambda: send(warm), ready)
        start = time.perf_counter()
        for _ in range(count):
            send(frame)
        send_s = time.perf_counter() - start
        # Closing now would discard what is still queued (linger 0).
        done.wait(RUN_TIMEOUT)
        return PubReport(role="pub", sent=count, send_s=send_s, warmups=warmups, error="")
    finally:
        sock.close(linger=0)
        context.term()


def publish_meshq(
    size: int, count: int, link: Connection, ready: Event, done: Event, batched: bool = False
) -> PubReport:
    payload = make_payload(size)
    with meshq.Node(
        "bench-pub", interfaces=[LOOPBACK], discovery=False, config=mesh_config()
    ) as node:
        link.send(node.control_endpoints[0])
        node.wait_for_peers(1, timeout=SETUP_TIMEOUT)
        publish = node.publish
        warmups = warm_up(lambda: publish(WARM_TOPIC, WARM_PAYLOAD), ready)
        start = time.perf_counter()
        if batched:
            chunk = [payload] * BATCH
            full, rest = divmod(count, BATCH)
            for _ in range(full):
                node.publish_many(TOPIC, chunk)
            node.publish_many(TOPIC, chunk[:rest])
        else:
            for _ in range(count):
                publish(TOPIC, payload)
        send_s = time.perf_counter() - start
        done.wait(RUN_TIMEOUT)
        return PubReport(role="pub", sent=count, send_s=send_s, warmups=warmups, error="")


def publish_batched(
    size: int, count: int, link: Connection, ready: Event, done: Event
) -> PubReport:
    return publish_meshq(size, count, link, ready, done, batched=True)


def publisher_main(
    system: System,
    size: int,
    count: int,
    link: Connection,
    ready: Event,
    done: Event,
    reports: Queue[Report],
) -> None:
    try:
        run = {"raw": publish_raw, "meshq": publish_meshq, "batched": publish_batched}[system]
        reports.put(run(size, count, link, ready, done))
    except BaseException as exc:
        reports.put(
            PubReport(
                role="pub", sent=0, send_s=0.0, warmups=0, error=f"{type(exc).__name__}: {exc}"
            )
        )


# --------------------------------------------------------------------------
# Subscriber process


def receive_endpoint(link: Connection) -> str:
    if not link.poll(SETUP_TIMEOUT):
        raise TimeoutError("publisher sent no endpoint")
    endpoint = link.recv()
    if not isinstance(endpoint, str):
        raise TypeError(f"bad endpoint {endpoint!r}")
    return endpoint


def subscribe_raw(size: int, count: int, link: Connection, ready: Event) -> SubReport:
    expected = len(RAW_TOPIC) + size
    context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
    sock = context.socket(zmq.SUB)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.setsockopt(zmq.SUBSCRIBE, PREFIX.encode())
        sock.connect(receive_endpoint(link))
        recv = sock.recv
        # Warm-up: the first message of any kind proves the subscription is in place.
        sock.setsockopt(zmq.RCVTIMEO, int(SETUP_TIMEOUT * 1000))
        recv()
        ready.set()
        sock.setsockopt(zmq.RCVTIMEO, int(QUIET * 1000))
        received = 0
        quiet_stop = False
        start = end = 0.0
        try:
            while len(recv()) != expected:  # late warm-up messages
                pass
            start = time.perf_counter()
            received = 1
            while received < count:
                if len(recv()) == expected:
                    received += 1
            end = time.perf_counter()
        except zmq.Again:
            quiet_stop = True
            end = time.perf_counter() - QUIET
        return SubReport(
            role="sub",
            received=received,
            elapsed=max(0.0, end - start),
            quiet_stop=quiet_stop,
            error="",
        )
    finally:
        sock.close(linger=0)
        context.term()


def subscribe_meshq(size: int, count: int, link: Connection, ready: Event) -> SubReport:
    endpoint = receive_endpoint(link)
    with meshq.Node(
        "bench-sub",
        interfaces=[LOOPBACK],
        seeds=[endpoint],
        discovery=False,
        config=mesh_config(),
    ) as node:
        node.wait_for_peers(1, timeout=SETUP_TIMEOUT)
        with node.subscribe(PREFIX) as sub:
            recv = sub.recv
            recv(SETUP_TIMEOUT)
            ready.set()
            received = 0
            quiet_stop = False
            start = end = 0.0
            try:
                data: bytes = recv(QUIET).data  # type: ignore[assignment]
                while len(data) != size:  # late warm-up messages
                    data = recv(QUIET).data  # type: ignore[assignment]
                start = time.perf_counter()
                received = 1
                while received < count:
                    data = recv(QUIET).data  # type: ignore[assignment]
                    if len(data) == size:
                        received += 1
                end = time.perf_counter()
            except meshq.Timeout:
                quiet_stop = True
                end = time.perf_counter() - QUIET
            return SubReport(
                role="sub",
                received=received,
                elapsed=max(0.0, end - start),
                quiet_stop=quiet_stop,
                error="",
            )


def subscriber_main(
    system: System,
    size: int,
    count: int,
    link: Connection,
    ready: Event,
    done: Event,
    reports: Queue[Report],
) -> None:
    try:
        run = subscribe_raw if system == "raw" else subscribe_meshq  # batched: same receiver
        reports.put(run(size, count, link, ready))
    except BaseException as exc:
        reports.put(
            SubReport(
                role="sub",
                received=0,
                elapsed=0.0,
                quiet_stop=False,
                error=f"{type(exc).__name__}: {exc}",
            )
        )
    finally:
        done.set()


# --------------------------------------------------------------------------
# One-way latency at a steady, low rate


class LatencyReport(TypedDict):
    role: Literal["pub", "sub"]
    latencies_ns: list[int]
    error: str


class LatencyResult(TypedDict):
    system: System
    received: int
    p50_us: float
    p99_us: float
    error: str


def paced(count: int, rate: float) -> Iterator[int]:
    """Yield 0..count-1, each at its slot of a steady ``rate`` per second (bounded)."""
    start = time.perf_counter()
    for index in range(count):
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield index


def stamp(payload: bytes) -> bytes:
    """``payload`` with its first 8 bytes replaced by the monotonic clock, in ns.

    CLOCK_MONOTONIC (time.perf_counter_ns on Linux) is one clock for every
    process of the machine, so the subscriber can subtract it from its own.
    """
    return time.perf_counter_ns().to_bytes(8, "big") + payload[8:]


def publish_latency(
    system: System, count: int, link: Connection, ready: Event, done: Event
) -> LatencyReport:
    payload = make_payload(LATENCY_SIZE)
    if system == "raw":
        context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
        sock = context.socket(zmq.PUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            port = sock.bind_to_random_port(f"tcp://{LOOPBACK}")
            link.send(f"tcp://{LOOPBACK}:{port}")
            send = sock.send
            warm_up(lambda: send(RAW_WARM_TOPIC + WARM_PAYLOAD), ready)
            for _ in paced(count, LATENCY_RATE):
                send(RAW_TOPIC + stamp(payload))
            done.wait(RUN_TIMEOUT)
        finally:
            sock.close(linger=0)
            context.term()
        return LatencyReport(role="pub", latencies_ns=[], error="")
    with meshq.Node(
        "bench-pub", interfaces=[LOOPBACK], discovery=False, config=mesh_config()
    ) as node:
        link.send(node.control_endpoints[0])
        node.wait_for_peers(1, timeout=SETUP_TIMEOUT)
        publish = node.publish
        warm_up(lambda: publish(WARM_TOPIC, WARM_PAYLOAD), ready)
        for _ in paced(count, LATENCY_RATE):
            publish(TOPIC, stamp(payload))
        done.wait(RUN_TIMEOUT)
    return LatencyReport(role="pub", latencies_ns=[], error="")


def subscribe_latency(system: System, count: int, link: Connection, ready: Event) -> LatencyReport:
    latencies: list[int] = []
    endpoint = receive_endpoint(link)
    deadline = time.monotonic() + SETUP_TIMEOUT + count / LATENCY_RATE + QUIET
    if system == "raw":
        context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
        sock = context.socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SUBSCRIBE, PREFIX.encode())
            sock.connect(endpoint)
            sock.setsockopt(zmq.RCVTIMEO, int(SETUP_TIMEOUT * 1000))
            sock.recv()
            ready.set()
            sock.setsockopt(zmq.RCVTIMEO, int(QUIET * 1000))
            expected = len(RAW_TOPIC) + LATENCY_SIZE
            while len(latencies) < count and time.monotonic() < deadline:
                try:
                    frame = sock.recv()
                except zmq.Again:
                    break
                now = time.perf_counter_ns()
                if len(frame) == expected:
                    start = len(RAW_TOPIC)
                    latencies.append(now - int.from_bytes(frame[start : start + 8], "big"))
        finally:
            sock.close(linger=0)
            context.term()
        return LatencyReport(role="sub", latencies_ns=latencies, error="")
    with meshq.Node(
        "bench-sub",
        interfaces=[LOOPBACK],
        seeds=[endpoint],
        discovery=False,
        config=mesh_config(),
    ) as node:
        node.wait_for_peers(1, timeout=SETUP_TIMEOUT)
        with node.subscribe(PREFIX) as sub:
            sub.recv(SETUP_TIMEOUT)
            ready.set()
            while len(latencies) < count and time.monotonic() < deadline:
                try:
                    data: bytes = sub.recv(QUIET).data  # type: ignore[assignment]
                except meshq.Timeout:
                    break
                now = time.perf_counter_ns()
                if len(data) == LATENCY_SIZE:
                    latencies.append(now - int.from_bytes(data[:8], "big"))
    return LatencyReport(role="sub", latencies_ns=latencies, error="")


def latency_publisher_main(
    system: System,
    count: int,
    link: Connection,
    ready: Event,
    done: Event,
    reports: Queue[LatencyReport],
) -> None:
    try:
        reports.put(publish_latency(system, count, link, ready, done))
    except BaseException as exc:
        reports.put(
            LatencyReport(role="pub", latencies_ns=[], error=f"{type(exc).__name__}: {exc}")
        )


def latency_subscriber_main(
    system: System,
    count: int,
    link: Connection,
    ready: Event,
    done: Event,
    reports: Queue[LatencyReport],
) -> None:
    try:
        reports.put(subscribe_latency(system, count, link, ready))
    except BaseException as exc:
        reports.put(
            LatencyReport(role="sub", latencies_ns=[], error=f"{type(exc).__name__}: {exc}")
        )
    finally:
        done.set()


def run_latency_once(system: System, count: int) -> LatencyResult:
    """``count`` stamped messages at LATENCY_RATE per second between two fresh processes."""
    ctx = multiprocessing.get_context("spawn")
    pub_link, sub_link = ctx.Pipe()
    ready = ctx.Event()
    done = ctx.Event()
    reports: Queue[LatencyReport] = ctx.Queue()
    processes = {
        role: ctx.Process(
            target=target,
            args=(system, count, link, ready, done, reports),
            name=f"bench-lat-{role}-{system}",
            daemon=True,
        )
        for target, link, role in (
            (latency_subscriber_main, sub_link, "sub"),
            (latency_publisher_main, pub_link, "pub"),
        )
    }
    for process in processes.values():
        process.start()
    found, errors = collect_reports(processes, reports, lambda r: r["role"], RUN_TIMEOUT)
    pub_link.close()
    sub_link.close()
    errors += [r["error"] for r in found.values() if r["error"]]
    ordered = sorted(found["sub"]["latencies_ns"]) if "sub" in found else []
    if len(ordered) < count:
        errors.append(f"received {len(ordered)} of {count}")
    return LatencyResult(
        system=system,
        received=len(ordered),
        p50_us=percentile_us(ordered, 0.50),
        p99_us=percentile_us(ordered, 0.99),
        error="; ".join(errors),
    )


def percentile_us(ordered: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of sorted nanoseconds, in microseconds (0 when empty)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] / 1000


def measure_latency(repeat: int, count: int, failures: list[str]) -> dict[str, object]:
    """Run the latency phase ``repeat`` times per system; print and return the summary."""
    runs: dict[System, list[LatencyResult]] = {"raw": [], "meshq": []}
    for index in range(repeat):
        order: tuple[System, ...] = ("raw", "meshq") if index % 2 == 0 else ("meshq", "raw")
        for system in order:
            result = run_latency_once(system, count)
            runs[system].append(result)
            note = f"  ERROR {result['error']}" if result["error"] else ""
            if result["error"]:
                failures.append(f"latency {system} run {index + 1}: {result['error']}")
            print(
                f"  latency {system:<5} run {index + 1}/{repeat}: p50 {result['p50_us']:7.1f} us, "
                f"p99 {result['p99_us']:7.1f} us{note}",
                flush=True,
            )
    p50 = {system: statistics.median(r["p50_us"] for r in rows) for system, rows in runs.items()}
    p99 = {system: statistics.median(r["p99_us"] for r in rows) for system, rows in runs.items()}
    raw_p50 = [r["p50_us"] for r in runs["raw"]]
    mesh_p50 = [r["p50_us"] for r in runs["meshq"]]
    added = sorted(m - r for m, r in zip(mesh_p50, raw_p50, strict=True))
    print(
        f"\none-way latency, {LATENCY_SIZE} B at {LATENCY_RATE:,.0f} msg/s, {count:,} messages "
        f"per run, medians of {repeat}:\n"
        f"  raw   p50 {p50['raw']:7.1f} us  p99 {p99['raw']:7.1f} us\n"
        f"  meshq p50 {p50['meshq']:7.1f} us  p99 {p99['meshq']:7.1f} us\n"
        f"  added p50 (meshq - raw, same round) {statistics.median(added):.1f} us "
        f"[{added[0]:.1f} to {added[-1]:.1f}]; p50 ratio {paired_ratios(mesh_p50, raw_p50)}",
        flush=True,
    )
    return {
        "raw": {"p50_us": p50["raw"], "p99_us": p99["raw"], "runs": runs["raw"]},
        "meshq": {"p50_us": p50["meshq"], "p99_us": p99["meshq"], "runs": runs["meshq"]},
        "added_p50_us": statistics.median(added),
    }


# --------------------------------------------------------------------------
# Orchestration


def run_once(system: System, size: int, count: int) -> RunResult:
    """One burst of ``count`` messages between two fresh processes."""
    ctx = multiprocessing.get_context("spawn")
    pub_link, sub_link = ctx.Pipe()
    ready = ctx.Event()
    done = ctx.Event()
    reports: Queue[Report] = ctx.Queue()
    processes = [
        ctx.Process(
            target=target,
            args=(system, size, count, link, ready, done, reports),
            name=f"bench-{role}-{system}-{size}",
            daemon=True,
        )
        for target, link, role in (
            (subscriber_main, sub_link, "sub"),
            (publisher_main, pub_link, "pub"),
        )
    ]
    for process in processes:
        process.start()
    found, errors = collect_reports(
        {"sub": processes[0], "pub": processes[1]}, reports, lambda r: r["role"], RUN_TIMEOUT
    )
    pub: PubReport | None = found.get("pub")
    sub: SubReport | None = found.get("sub")
    pub_link.close()
    sub_link.close()

    sent = pub["sent"] if pub else 0
    send_s = pub["send_s"] if pub else 0.0
    received = sub["received"] if sub else 0
    elapsed = sub["elapsed"] if sub else 0.0
    errors += [r["error"] for r in (pub, sub) if r is not None and r["error"]]
    msg_s = (received - 1) / elapsed if received > 1 and elapsed > 0 else 0.0
    return RunResult(
        system=system,
        size=size,
        sent=sent,
        received=received,
        lost=sent - received,
        elapsed_s=elapsed,
        msg_s=msg_s,
        mb_s=msg_s * size / MB,
        pub_msg_s=sent / send_s if send_s > 0 else 0.0,
        quiet_stop=bool(sub and sub["quiet_stop"]),
        error="; ".join(errors),
    )


def summarise(runs: list[RunResult]) -> Summary:
    return Summary(
        msg_s=statistics.median(r["msg_s"] for r in runs),
        mb_s=statistics.median(r["mb_s"] for r in runs),
        pub_msg_s=statistics.median(r["pub_msg_s"] for r in runs),
        sent=sum(r["sent"] for r in runs),
        received=sum(r["received"] for r in runs),
        lost=sum(r["lost"] for r in runs),
        runs=runs,
    )


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None
    if not sizes or any(size < 2 for size in sizes):
        raise argparse.ArgumentTypeError("sizes must be integers >= 2 (bytes)")
    return sizes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="meshq publish/subscribe throughput against raw pyzmq PUB/SUB (loopback)."
    )
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=list(DEFAULT_SIZES),
        help="payload sizes in bytes, comma-separated (default: 100,1024,65536)",
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="runs per (system, size); median reported (5)"
    )
    parser.add_argument(
        "--count-scale",
        type=float,
        default=None,
        help="multiply the per-size message counts (200k/100k/10k) by this (1.0)",
    )
    parser.add_argument(
        "--latency-count",
        type=int,
        default=None,
        help=f"stamped messages per latency run at {LATENCY_RATE:,.0f} msg/s "
        f"({LATENCY_COUNT}; 0 skips the latency phase)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: --count-scale 0.1 --repeat 1 unless given"
    )
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"where to write results ({DEFAULT_JSON})"
    )
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 5
    if args.latency_count is None:
        args.latency_count = 200 if args.quick else LATENCY_COUNT
    if args.latency_count < 0:
        parser.error("--latency-count must be >= 0")
    if args.count_scale is None:
        args.count_scale = 0.1 if args.quick else 1.0
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.count_scale <= 0:
        parser.error("--count-scale must be > 0")
    return args


def format_table(sizes: list[int], results: dict[int, dict[System, Summary]]) -> str:
    header = (
        f"{'size':>7} {'system':<7} {'msg/s':>10} {'MB/s':>9} {'pub msg/s':>10} "
        f"{'sent':>9} {'received':>9} {'lost':>7} {'ratio':>6}"
    )
    lines = [header, "-" * len(header)]
    for size in sizes:
        raw = results[size]["raw"]
        for system in SYSTEMS:
            s = results[size][system]
            ratio = ""
            if system != "raw":
                ratio = f"{s['msg_s'] / raw['msg_s']:.2f}" if raw["msg_s"] > 0 else "n/a"
            lines.append(
                f"{size:>7} {system:<7} {s['msg_s']:>10,.0f} {s['mb_s']:>9,.1f} "
                f"{s['pub_msg_s']:>10,.0f} {s['sent']:>9,} {s['received']:>9,} "
                f"{s['lost']:>7,} {ratio:>6}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes: list[int] = args.sizes
    repeat: int = args.repeat
    counts = {size: max(100, int(default_count(size) * args.count_scale)) for size in sizes}
    print(
        "meshq pub/sub vs raw pyzmq PUB/SUB: two spawned processes per run, loopback TCP "
        f"{LOOPBACK}; meshq joins by seed (discovery=False, no mDNS); HWM {HWM:,}; "
        f"repeat {repeat}, medians shown",
        flush=True,
    )
    load_start = print_load("start")
    began = time.monotonic()
    runs: dict[int, dict[System, list[RunResult]]] = {
        s: {system: [] for system in SYSTEMS} for s in sizes
    }
    failures: list[str] = []
    for size in sizes:
        for index in range(repeat):
            order = SYSTEMS[index % 3 :] + SYSTEMS[: index % 3]  # rotate who goes first
            for system in order:
                result = run_once(system, size, counts[size])
                runs[size][system].append(result)
                note = f"  ERROR {result['error']}" if result["error"] else ""
                if result["error"]:
                    failures.append(f"{system} {size} B run {index + 1}: {result['error']}")
                print(
                    f"  {size:>6} B {system:<5} run {index + 1}/{repeat}: "
                    f"{result['msg_s']:>10,.0f} msg/s, lost {result['lost']:,}{note}",
                    flush=True,
                )
    results = {
        size: {system: summarise(runs[size][system]) for system in SYSTEMS} for size in sizes
    }
    print()
    print(format_table(sizes, results))
    for size in sizes:
        raw_rates = [r["msg_s"] for r in runs[size]["raw"]]
        print(
            f"{size} B, ratio per round, median [min-max]: meshq "
            f"{paired_ratios([r['msg_s'] for r in runs[size]['meshq']], raw_rates)}, batched "
            f"{paired_ratios([r['msg_s'] for r in runs[size]['batched']], raw_rates)}"
        )
    latency: dict[str, object] = {}
    if args.latency_count:
        latency = measure_latency(repeat, args.latency_count, failures)
    wall = time.monotonic() - began
    load_end = print_load("end")
    print(
        f"\n{wall:.1f} s wall; ratio = system msg/s / raw msg/s (subscriber side, medians); "
        f"batched = node.publish_many() in chunks of {BATCH}, received one by one"
    )

    document = {
        "benchmark": "pubsub",
        "meta": {
            "transport": f"tcp over loopback {LOOPBACK}",
            "meshq_joining": "seed: publisher's ephemeral control endpoint, discovery=False",
            "processes": "one publisher and one subscriber process per run, spawn start method",
            "hwm": HWM,
            "quiet_timeout_s": QUIET,
            "repeat": repeat,
            "counts": {str(size): counts[size] for size in sizes},
            "mb": "10**6 bytes of payload (meshq header not counted)",
            "aggregation": "msg_s, mb_s, pub_msg_s: median of runs; sent/received/lost: totals",
            **environment(),
            "load_average_start": load_start,
            "load_average_end": load_end,
            "wall_s": round(wall, 2),
        },
        "results": {
            str(size): {
                "raw": results[size]["raw"],
                "meshq": results[size]["meshq"],
                "batched": results[size]["batched"],
                "ratio": ratio(results[size]["meshq"]["msg_s"], results[size]["raw"]["msg_s"]),
                "ratio_batched": ratio(
                    results[size]["batched"]["msg_s"], results[size]["raw"]["msg_s"]
                ),
            }
            for size in sizes
        },
        "latency": latency,
        "failures": failures,
    }
    return write_results(args.json, document, failures)


if __name__ == "__main__":
    sys.exit(main())
