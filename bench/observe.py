"""What being observed costs the message path: pub/sub with and without ``meshq top``.

What it measures
----------------
The pub/sub burst of bench/pubsub.py (one publisher process, one subscriber
process, loopback TCP, the same payloads, counts and loops), three ways in
the same run:

* raw: pyzmq PUB/SUB, as in bench/pubsub.py;
* meshq: meshq nodes, which serve ``meshq/introspect`` (every node does),
  with nobody asking;
* observed: the same, while a third process collects the whole mesh
  (``Collector.collect()``, what ``meshq top`` does once a second) every
  ``--every`` seconds (default 0.1 s, ten times top's rate) for the whole run.

``ratio`` is msg/s over raw msg/s (subscriber side, medians of ``--repeat``
runs, the systems rotating which goes first); ``observed / meshq`` is the
cost of being observed. The spread (min..max of the runs) is printed too:
the machines are shared and noisy.

Usage::

    python bench/observe.py [--size 100] [--count 200000] [--repeat 5] [--every 0.1]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import meshq

if __package__ in (None, ""):  # run as a script (python bench/x.py): make "bench" importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import pubsub
from bench._common import collect_reports

SYSTEMS = ("raw", "meshq", "observed")


def _introspected(endpoints: Queue[str] | None) -> None:
    """Make every meshq.Node of this (spawned) process report its control endpoint.

    (Each answers ``meshq/introspect`` by itself: every node does.)
    """
    plain = meshq.Node

    class Introspected(plain):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if endpoints is not None:
                endpoints.put(self.control_endpoints[0])

    meshq.Node = Introspected  # type: ignore[misc]


def pub_main(
    size: int, count: int, link: Connection, ready: Event, done: Event,
    reports: Queue[Any], endpoints: Queue[str],
) -> None:  # fmt: skip
    _introspected(endpoints)
    pubsub.publisher_main("meshq", size, count, link, ready, done, reports)  # type: ignore[arg-type]


def sub_main(
    size: int, count: int, link: Connection, ready: Event, done: Event, reports: Queue[Any]
) -> None:
    _introspected(None)
    pubsub.subscriber_main("meshq", size, count, link, ready, done, reports)  # type: ignore[arg-type]


def observer_main(endpoints: Queue[str], done: Event, every: float, reports: Queue[Any]) -> None:
    """Collect the mesh every ``every`` s until the run is done; report how many collects."""
    from meshq.collector import Collector

    collects = nodes = 0
    error = ""
    try:
        seed = endpoints.get(timeout=pubsub.SETUP_TIMEOUT)
        with meshq.Node(
            "observer", interfaces=[pubsub.LOOPBACK], seeds=[seed], discovery=False
        ) as node:
            node.wait_for_peers(2, timeout=pubsub.SETUP_TIMEOUT)
            collector = Collector(node, timeout=1.0)
            deadline = time.monotonic() + pubsub.RUN_TIMEOUT
            while not done.is_set() and time.monotonic() < deadline:
                view = collector.collect()
                collects += 1
                nodes = max(nodes, len(view.nodes))
                done.wait(every)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    reports.put({"role": "observer", "collects": collects, "nodes": nodes, "error": error})


def run_once(system: str, size: int, count: int, every: float) -> dict[str, Any]:
    if system == "raw":
        raw = pubsub.run_once("raw", size, count)
        return {"msg_s": raw["msg_s"], "lost": raw["lost"], "collects": 0, "error": raw["error"]}
    ctx = multiprocessing.get_context("spawn")
    pub_link, sub_link = ctx.Pipe()
    ready, done = ctx.Event(), ctx.Event()
    reports: Queue[Any] = ctx.Queue()
    endpoints: Queue[str] = ctx.Queue()
    processes = {
        "sub": ctx.Process(target=sub_main, args=(size, count, sub_link, ready, done, reports)),
        "pub": ctx.Process(
            target=pub_main, args=(size, count, pub_link, ready, done, reports, endpoints)
        ),
    }
    if system == "observed":
        processes["observer"] = ctx.Process(
            target=observer_main, args=(endpoints, done, every, reports)
        )
    for process in processes.values():
        process.daemon = True
        process.start()
    found, errors = collect_reports(processes, reports, lambda r: r["role"], pubsub.RUN_TIMEOUT)
    sub, pub, observer = found.get("sub"), found.get("pub"), found.get("observer")
    errors += [r["error"] for r in (sub, pub, observer) if r is not None and r["error"]]
    received = sub["received"] if sub else 0
    elapsed = sub["elapsed"] if sub else 0.0
    return {
        "msg_s": (received - 1) / elapsed if received > 1 and elapsed > 0 else 0.0,
        "lost": (pub["sent"] if pub else 0) - received,
        "collects": observer["collects"] if observer else 0,
        "nodes": observer["nodes"] if observer else 0,
        "error": "; ".join(errors),
    }


def snapshot_cost(topics: int, repeat: int = 50) -> tuple[float, float, float]:
    """Seconds one snapshot takes (min, median, max) on a node that published on
    ``topics`` topics to a subscription of its own that received them all.

    This is the work a node's service thread does per introspection request.
    """
    from meshq.introspect import snapshot

    node = meshq.Node("snap", interfaces=[pubsub.LOOPBACK], discovery=False)
    with node, node.subscribe("s/") as sub:
        node.wait_for_subscribers("s/0", 1, timeout=pubsub.SETUP_TIMEOUT)
        for i in range(topics):
            node.publish(f"s/{i}", b"x")
        for _ in range(topics):
            sub.recv(timeout=pubsub.SETUP_TIMEOUT)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            snapshot(node, 0.0)
            times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), max(times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100, help="payload bytes (default 100)")
    parser.add_argument("--count", type=int, default=200_000, help="messages per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per system (default 5)")
    parser.add_argument("--every", type=float, default=0.1, help="seconds between collects")
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in SYSTEMS}
    for index in range(args.repeat):
        order = SYSTEMS[index % 3 :] + SYSTEMS[: index % 3]
        for system in order:
            result = run_once(system, args.size, args.count, args.every)
            results[system].append(result)
            extra = f", {result['collects']} collects" if system == "observed" else ""
            note = f"  ERROR {result['error']}" if result["error"] else ""
            print(
                f"  {system:<8} run {index + 1}/{args.repeat}: {result['msg_s']:>10,.0f} msg/s, "
                f"lost {result['lost']:,}{extra}{note}",
                flush=True,
            )
    raw = statistics.median(r["msg_s"] for r in results["raw"])
    base = statistics.median(r["msg_s"] for r in results["meshq"])
    print(f"\n{args.size} B x {args.count:,}, {args.repeat} runs, medians (min..max)")
    for system in SYSTEMS:
        rates = [r["msg_s"] for r in results[system]]
        median = statistics.median(rates)
        print(
            f"  {system:<8} {median:>10,.0f} msg/s ({min(rates):,.0f}..{max(rates):,.0f})  "
            f"ratio {median / raw:.2f}"
        )
    observed = statistics.median(r["msg_s"] for r in results["observed"])
    collects = statistics.median(r["collects"] for r in results["observed"])
    print(f"  observed / meshq = {observed / base:.2f} (median {collects:.0f} collects per run)")
    for topics in (1, 100, 1000):
        low, median, high = snapshot_cost(topics)
        print(
            f"  one snapshot, {topics:>4} topic(s) published and received: "
            f"{median * 1e3:.2f} ms ({low * 1e3:.2f}..{high * 1e3:.2f})"
        )
    return 1 if any(r["error"] for runs in results.values() for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
