"""CURVE's cost: meshq pub/sub throughput and request latency with and without security.

What it measures
----------------
Two meshq nodes in two spawned processes on loopback TCP (127.0.0.1), joined
by a seed (``discovery=False``). One run is one pair of processes with
either ``plain`` nodes or ``curve`` nodes (``security=meshq.Curve(...)`` with
fresh keys allowing each other); the two alternate, ``--repeat`` times each,
in the same invocation, and the table shows medians and the ratio
curve / plain.

1. Pub/sub throughput: the publisher calls ``node.publish("bench/t",
   payload)`` ``count`` times (``--size`` bytes, 100 by default, after warm-up messages
   until the subscriber sees one); ``msg/s`` is what the subscriber received
   from its first timed message to its last.
2. Request latency: the subscriber's node then calls ``node.request("echo",
   payload)`` one at a time, ``count // 10`` times after 200 untimed ones;
   p50/p99 in microseconds.

Bounded: every wait has a deadline (``SETUP_TIMEOUT``, ``RECV_TIMEOUT``) and
the orchestrator kills a run's processes after ``RUN_TIMEOUT``.

Usage::

    python bench/security.py [--repeat N] [--count N] [--size BYTES] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, Literal

import meshq
from meshq.security import write_key_pair

if __package__ in (None, ""):  # run as a script (python bench/x.py): make "bench" importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import collect_reports, environment, ratio, write_results

System = Literal["plain", "curve"]
SYSTEMS: tuple[System, ...] = ("plain", "curve")
LOOPBACK = "127.0.0.1"
SIZE = 100  # payload bytes
TOPIC = "bench/t"
WARMUP_REQUESTS = 200
DEFAULT_COUNT = 200_000
QUICK_COUNT = 20_000
DEFAULT_REPEAT = 4  # even, so that each system goes first equally often
SETUP_TIMEOUT = 15.0  # seconds to join, subscribe and see the service
RECV_TIMEOUT = 2.0  # seconds of silence that end the subscriber's receive loop
RUN_TIMEOUT = 120.0  # seconds before a run's processes are killed
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "security.json"


def security(system: System, keys: Path, name: str) -> meshq.Curve | None:
    if system == "plain":
        return None
    return meshq.Curve(keys / f"{name}.key_secret", allow=keys / "allowed")


def publisher_main(
    system: System,
    keys: Path,
    count: int,
    size: int,
    link: Connection,
    done: Event,
    reports: Queue[Any],
) -> None:
    try:
        payload = bytes(size)
        with meshq.Node(
            "bench-pub",
            interfaces=[LOOPBACK],
            discovery=False,
            security=security(system, keys, "pub"),
        ) as node:
            node.serve("echo", lambda data: data)
            link.send(node.control_endpoints[0])
            node.wait_for_subscribers(TOPIC, 1, timeout=SETUP_TIMEOUT)
            # Warm-up until the subscriber says it has seen one (bounded).
            deadline = time.monotonic() + SETUP_TIMEOUT
            while not link.poll(0.01) and time.monotonic() < deadline:
                node.publish(TOPIC, b"warmup")
            link.recv()
            begin = time.perf_counter()
            for _ in range(count):
                node.publish(TOPIC, payload)
            elapsed = time.perf_counter() - begin
            done.wait(RUN_TIMEOUT)  # serves the requests meanwhile
        reports.put({"role": "publisher", "pub_msg_s": count / elapsed, "error": ""})
    except BaseException as exc:
        reports.put({"role": "publisher", "error": f"{type(exc).__name__}: {exc}"})


def subscriber_main(
    system: System,
    keys: Path,
    count: int,
    size: int,
    link: Connection,
    done: Event,
    reports: Queue[Any],
) -> None:
    try:
        if not link.poll(SETUP_TIMEOUT):
            raise TimeoutError("publisher sent no endpoint")
        endpoint = link.recv()
        if system == "curve":
            endpoint += "#" + meshq.security.load_public_key(keys / "pub.key").decode()
        with meshq.Node(
            "bench-sub",
            interfaces=[LOOPBACK],
            seeds=[endpoint],
            discovery=False,
            security=security(system, keys, "sub"),
        ) as node:
            node.wait_for_peers(1, timeout=SETUP_TIMEOUT)
            with node.subscribe(TOPIC) as sub:
                sub.recv(timeout=SETUP_TIMEOUT)  # a warm-up message: the link is up
                link.send("seen")
                received, first, last = 0, 0.0, 0.0
                while received < count:
                    try:
                        message = sub.recv(timeout=RECV_TIMEOUT)
                    except meshq.Timeout:
                        break  # the rest were dropped or never sent
                    if message.data == b"warmup":
                        continue
                    last = time.perf_counter()
                    if not received:
                        first = last
                    received += 1
            node.wait_for_service("echo", timeout=SETUP_TIMEOUT)
            payload = bytes(size)
            for _ in range(WARMUP_REQUESTS):
                node.request("echo", payload, timeout=RECV_TIMEOUT, retries=0)
            latencies = []
            for _ in range(max(1, count // 10)):
                start = time.perf_counter_ns()
                node.request("echo", payload, timeout=RECV_TIMEOUT, retries=0)
                latencies.append(time.perf_counter_ns() - start)
            rejected = len(node.rejections())
        done.set()
        reports.put(
            {
                "role": "subscriber",
                "received": received,
                "msg_s": (received - 1) / (last - first) if received > 1 else 0.0,
                "latencies_ns": sorted(latencies),
                "rejections": rejected,
                "error": "",
            }
        )
    except BaseException as exc:
        done.set()
        reports.put({"role": "subscriber", "error": f"{type(exc).__name__}: {exc}"})


def percentile(ordered: list[int], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1] / 1000


def one_run(system: System, count: int, size: int) -> tuple[dict[str, Any], list[str]]:
    spawn = multiprocessing.get_context("spawn")
    keys = Path(tempfile.mkdtemp(prefix="meshq-bench-keys-"))
    try:
        (keys / "allowed").mkdir()
        for name in ("pub", "sub"):
            public, _ = write_key_pair(name, keys)
            shutil.copy(public, keys / "allowed")
        reports: Queue[Any] = spawn.Queue()
        done = spawn.Event()
        pub_end, sub_end = spawn.Pipe()
        processes = {
            "publisher": spawn.Process(
                target=publisher_main, args=(system, keys, count, size, pub_end, done, reports)
            ),
            "subscriber": spawn.Process(
                target=subscriber_main, args=(system, keys, count, size, sub_end, done, reports)
            ),
        }
        for process in processes.values():
            process.start()
        found, errors = collect_reports(processes, reports, lambda r: r["role"], RUN_TIMEOUT)
    finally:
        shutil.rmtree(keys)
    errors += [f"{system} {role}: {r['error']}" for role, r in found.items() if r.get("error")]
    sub, pub = found.get("subscriber", {}), found.get("publisher", {})
    latencies = sub.get("latencies_ns", [])
    result = {
        "system": system,
        "msg_s": sub.get("msg_s", 0.0),
        "pub_msg_s": pub.get("pub_msg_s", 0.0),
        "sent": count,
        "received": sub.get("received", 0),
        "p50_us": percentile(latencies, 0.5),
        "p99_us": percentile(latencies, 0.99),
        "requests": len(latencies),
        "rejections": sub.get("rejections", 0),
    }
    return result, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT)
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="messages per run")
    parser.add_argument("--size", type=int, default=SIZE, help="payload bytes (default: 100)")
    parser.add_argument("--quick", action="store_true", help=f"--count {QUICK_COUNT} --repeat 2")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    count, repeat = (QUICK_COUNT, 2) if args.quick else (args.count, args.repeat)
    runs: list[dict[str, Any]] = []
    failures: list[str] = []
    for index in range(repeat):
        order = SYSTEMS if index % 2 == 0 else SYSTEMS[::-1]
        for system in order:
            result, errors = one_run(system, count, args.size)
            runs.append(result)
            failures += errors
    summary: dict[str, dict[str, float]] = {}
    for system in SYSTEMS:
        mine = [run for run in runs if run["system"] == system]
        summary[system] = {
            field: statistics.median(run[field] for run in mine)
            for field in ("msg_s", "pub_msg_s", "p50_us", "p99_us")
        }
        summary[system]["sent"] = sum(run["sent"] for run in mine)
        summary[system]["received"] = sum(run["received"] for run in mine)
    header = f"{'system':8} {'msg/s':>10} {'pub msg/s':>10} {'p50 us':>8} {'p99 us':>8}"
    print(f"{args.size}-byte payloads, {count:,} messages and {max(1, count // 10):,} requests")
    print(f"per run, {repeat} runs each, medians\n{header}\n{'-' * len(header)}")
    for system in SYSTEMS:
        s = summary[system]
        print(
            f"{system:8} {s['msg_s']:>10,.0f} {s['pub_msg_s']:>10,.0f} "
            f"{s['p50_us']:>8.1f} {s['p99_us']:>8.1f}"
        )
    plain, curve = summary["plain"], summary["curve"]
    ratios = {
        field: ratio(curve[field], plain[field])
        for field in ("msg_s", "pub_msg_s", "p50_us", "p99_us")
    }
    cells = [f"{value:.2f}" if value is not None else "-" for value in ratios.values()]
    print(f"{'ratio':8} {cells[0]:>10} {cells[1]:>10} {cells[2]:>8} {cells[3]:>8}  (curve/plain)")
    document = {
        "environment": environment(),
        "count": count,
        "size": args.size,
        "repeat": repeat,
        "summary": summary,
        "ratio_curve_over_plain": ratios,
        "runs": runs,
    }
    return write_results(args.json, document, failures)


if __name__ == "__main__":
    sys.exit(main())
