"""Idle cost: CPU that a mesh of idle nodes burns, against bare pyzmq holding the same links.

What is measured, per mesh size (``--peers``: 1, 7, 15, 31 peers per node,
so 2, 8, 16, 32 processes, all on 127.0.0.1):

* meshq: each process runs one ``meshq.Node`` that joins the others by seed
  (``discovery=False``: mDNS is left out, it is zeroconf's cost, not the
  mesh's) and, once it sees every other node, does nothing. Its control
  thread sends a PING to every peer every ``heartbeat_interval`` (0.5 s)
  and a HELLO every ``gossip_interval``; its sockets carry ZMTP heartbeats.
* raw: each process binds one ROUTER and connects one DEALER to every other
  process's ROUTER (the same number of TCP connections as the control
  plane's), exchanges one message on each, then blocks, sending nothing.
* raw-hb: the same links carrying meshq's heartbeat traffic and nothing
  else: on each multiple of 0.5 s on the wall clock a 24-byte message (an
  echo PING's size) to every other process, and 50 ms later one read of all
  that came (as meshq reads a round), written plainly: recv until zmq.Again,
  no decoding, no peer table. meshq's row says how many times that it costs
  (``x raw-hb``).

Once every process is ready and ``--settle`` seconds (6) have passed, the CPU time of each
(the sum of its threads' time on the CPU from /proc/PID/task/*/schedstat,
in ns) is read twice, ``--duration`` seconds (10) apart. Reported: % of one
core per process (mean over the processes of a mesh; then the median over
``--repeat`` runs, min-max of the runs), the part of it spent in libzmq's
background threads (ZMTP heartbeats, TCP), for meshq the control
loop's wake-ups per second, and for meshq and raw-hb the CPU cost per
heartbeat (a process's CPU time divided by the PINGs it sent and received:
an upper bound, as it includes everything else the process did). A raw-hb
run in which some process read fewer heartbeats than its peers sent is
reported as failed.

``--subscribe``: each meshq node also holds one subscription, whose SUB
connects to every other node's XPUB: 2 x peers idle data connections per
node, each with its ZMTP heartbeats (PROTOCOL.md 4.3). The raw processes
hold only their ROUTER/DEALER links, as without it.

``--heartbeat S`` sends heartbeats every S seconds instead of 0.5, in
meshq (MeshConfig.heartbeat_interval, with suspect_after and gone_after 3
and 6 times it, as the defaults are) and in raw-hb alike: what the idle
cost would be with another heartbeat rate.

``--coalesce S`` sets meshq's ControlLoop.coalesce: after heartbeats woke
it, the control loop reads the ROUTER again only S seconds later (0: every
message as it comes), to see what reading heartbeats in batches per
wake-up saves. Heartbeats leave on the same wall-clock instants on every
node, so a mesh's PINGs arrive together. raw-hb reads 50 ms after its
round, whatever this says.

    .venv/bin/python bench/idle.py                       # about 12-18 minutes
    .venv/bin/python bench/idle.py --peers 1 31 --repeat 5 --duration 10
    .venv/bin/python bench/idle.py --quick               # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "idle.json"
ROOT = Path(__file__).resolve().parent.parent
SETUP_TIMEOUT = 60.0  # seconds for a mesh to form
# Seconds between "all ready" and the first CPU reading: one gossip interval
# (5 s) and one more, so that the measurement starts after every node's first
# periodic HELLO since the mesh formed. That one carries gossip that changed
# since the join (a full decode on every receiver, about 100 us each); the
# later ones repeat it byte for byte, as they do on a node that has been idle
# for long (PROTOCOL.md 7.6). Before 2026-12-02 17:00 UTC it was 1 s, and the
# 10 s window caught that round: --settle 1 measures as before.
SETTLE = 6.0
HEARTBEAT = 0.5  # seconds between a node's PINGs to each peer (MeshConfig's default)
RAW_LIMIT = 600.0  # seconds a raw process sends heartbeats at most
# meshq nodes; bare pyzmq holding the same links idle; the same carrying meshq's heartbeats.
SYSTEMS = ("meshq", "raw", "raw-hb")


# ----------------------------------------------------------------------
# Child processes: one line of JSON per event on stdout, commands on stdin.


def _say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def heartbeat_config(heartbeat: float) -> Any:
    """meshq's MeshConfig with heartbeats every ``heartbeat`` s, and liveness timeouts
    scaled as the defaults are (suspect after 3 of them, gone after 6): at 0.5 s,
    the defaults themselves."""
    from meshq import MeshConfig

    return MeshConfig(
        heartbeat_interval=heartbeat, suspect_after=3 * heartbeat, gone_after=6 * heartbeat
    )


def child_meshq(
    index: int,
    mesh: str,
    seed: str,
    peers: int,
    coalesce: float,
    heartbeat: float = HEARTBEAT,
    subscribe: bool = False,
) -> None:
    import meshq

    if coalesce >= 0:  # else the library's default
        from meshq.control import ControlLoop

        ControlLoop.coalesce = coalesce
    with meshq.Node(
        f"idle-{index}",
        mesh=mesh,
        interfaces=["127.0.0.1"],
        seeds=[seed] if seed else [],
        discovery=False,
        config=heartbeat_config(heartbeat),
    ) as node:
        _say(event="endpoint", endpoint=node.control_endpoints[0])
        node.wait_for_peers(peers, timeout=SETUP_TIMEOUT)
        if subscribe:
            subscription = node.subscribe("idle/")
            try:  # its first call connects it to every peer's publisher
                subscription.recv(timeout=0.1)
            except meshq.Timeout:
                pass  # nobody publishes: only the links are wanted
            node.wait_for_subscribers("idle/x", peers + 1, timeout=SETUP_TIMEOUT)  # ours counts
        _say(event="ready")
        sys.stdin.readline()  # "measure": take the loop's counters now
        # (None with a meshq from before the deadline-driven loop: --before.)
        loop = getattr(getattr(node, "runtime", None), "control_loop", None)
        start = (loop.wakeups, loop.timer_runs) if loop is not None else (0, 0)
        sys.stdin.readline()  # "report"
        _say(
            event="report",
            wakeups=None if loop is None else loop.wakeups - start[0],
            timer_runs=None if loop is None else loop.timer_runs - start[1],
            peers=len(node.peers()),
            stats=node.stats(),
        )
        sys.stdin.readline()  # "stop"


def child_raw(index: int, heartbeat: float | None = None) -> None:
    """``heartbeat``: seconds between raw-hb's rounds; None for raw (idle links)."""
    import zmq

    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    _say(event="endpoint", endpoint=f"tcp://127.0.0.1:{port}")
    others = json.loads(sys.stdin.readline())
    dealers = []
    for endpoint in others:
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(endpoint)
        dealer.send(b"hello")
        dealers.append(dealer)
    for _ in others:  # every connection carried a message both ways
        router.recv_multipart()
    stop = threading.Event()
    received = [0]  # heartbeats read so far
    beating = None
    if heartbeat:
        beating = threading.Thread(
            target=raw_heartbeats,
            args=(router, dealers, stop, received, heartbeat),
            daemon=True,  # however this process ends, its heartbeats end with it
        )
        beating.start()
    try:
        _say(event="ready")
        sys.stdin.readline()  # "measure"
        start = received[0]
        sys.stdin.readline()  # "report"
        _say(event="report", received=received[0] - start)
        sys.stdin.readline()  # "stop"
    finally:
        stop.set()
    if beating is not None:
        beating.join()
    for dealer in dealers:
        dealer.close()
    router.close()
    context.term()


def raw_heartbeats(
    router: Any,
    dealers: list[Any],
    stop: threading.Event,
    received: list[int],
    interval: float = HEARTBEAT,
    spell: float = 0.05,
) -> None:
    """meshq's heartbeat traffic and nothing else, written plainly in pyzmq.

    On each multiple of ``interval`` on the wall clock (as meshq's rounds),
    a 24-byte message (an echo PING's size) to every DEALER; ``spell`` s
    later, read what the ROUTER holds, in one go (as meshq reads a round).
    Two wake-ups a round and no work besides: no decoding, no peer table.
    Counts what it read in ``received[0]``. Ends when ``stop`` is set, or
    after RAW_LIMIT s.
    """
    import zmq

    ping = bytes(24)
    ends = time.monotonic() + RAW_LIMIT
    while time.monotonic() < ends:
        now = time.time()
        if stop.wait((int(now / interval) + 1) * interval - now):
            break
        for dealer in dealers:
            try:
                dealer.send(ping, zmq.NOBLOCK)
            except zmq.Again:
                pass  # a peer that is gone: as meshq, drop it
        if stop.wait(spell):
            break
        while True:
            try:
                router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            received[0] += 1


# ----------------------------------------------------------------------
# What one heartbeat costs, in this process


def heartbeat_cost(count: int = 20000, paced: int = 2000) -> dict[str, float]:
    """CPU of a node's control thread per PING received: batched, and one per wake-up.

    A raw DEALER plays a peer (it says HELLO, then sends PINGs). Batched:
    ``count`` PINGs sent at once, read as they come. One per wake-up:
    ``paced`` PINGs 2 ms apart with ControlLoop.coalesce = 0, so that each
    wakes the thread alone. The thread's CPU comes from its /proc schedstat (ns).
    """
    import threading

    import zmq

    import meshq
    from meshq.control import ControlLoop
    from meshq.wire import Hello, Ping, encode_control, routing_id

    def control_seconds(node: meshq.Node) -> float:
        thread = next(t for t in threading.enumerate() if t.name.endswith(node.id[:8]))
        stat = Path(f"/proc/self/task/{thread.native_id}/schedstat").read_text()
        return int(stat.split()[0]) / 1e9  # ns on the CPU

    results: dict[str, float] = {}
    shipped = ControlLoop.coalesce
    try:
        for label, n, pause, coalesce in (
            ("us_per_heartbeat_batched", count, 0.0, shipped),
            ("us_per_heartbeat_alone", paced, 0.002, 0.0),
        ):
            ControlLoop.coalesce = coalesce
            with meshq.Node("cost", interfaces=["127.0.0.1"], discovery=False) as node:
                context = zmq.Context()
                dealer = context.socket(zmq.DEALER)
                dealer.setsockopt(zmq.LINGER, 0)
                dealer.setsockopt(zmq.SNDHWM, 0)
                peer_id = b"\x01" * 16
                dealer.setsockopt(zmq.ROUTING_ID, routing_id(peer_id, 1))
                dealer.connect(node.control_endpoints[0])
                publish = ("tcp://127.0.0.1:9",)
                hello = Hello(peer_id, "peer", node.mesh, ("tcp://127.0.0.1:8",), publish)
                dealer.send(encode_control(hello))
                node.wait_for_peers(1, timeout=10)
                ping = encode_control(Ping(peer_id))
                before = control_seconds(node)
                for _ in range(n):
                    dealer.send(ping)
                    if pause:
                        time.sleep(pause)  # the bench paces them: one per wake-up
                # Settled once the peer's last_seen stops moving past the sends.
                sent, deadline = time.time(), time.monotonic() + 30
                while node.peers()[0].last_seen < sent - 0.01:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the PINGs were not read within 30 s")
                    time.sleep(0.01)
                time.sleep(0.2)
                used = control_seconds(node) - before
                dealer.close()
                context.term()
            results[label] = 1e6 * used / n
    finally:
        ControlLoop.coalesce = shipped
    return results


# ----------------------------------------------------------------------
# The parent


class Child:
    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.idle", *argv],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def expect(self, event: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"child {self.process.pid} ended before {event!r}")
        message: dict[str, Any] = json.loads(line)
        if message.get("event") != event:
            raise RuntimeError(f"child {self.process.pid}: {message} instead of {event!r}")
        return message

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def cpu_seconds(self) -> tuple[float, float]:
        """(CPU seconds of the process's threads, of its libzmq background threads) so far.

        From each thread's schedstat (ns on the CPU, exact) rather than the
        10 ms ticks of /proc/PID/stat: an idle node uses a few ticks in 10 s.
        """
        total = zmq_threads = 0
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                used = int((task / "schedstat").read_text().split()[0])
                total += used
                if (task / "comm").read_text().startswith("ZMQbg"):
                    zmq_threads += used
            except OSError:
                continue  # a thread that just ended
        return total / 1e9, zmq_threads / 1e9

    def stop(self) -> None:
        try:
            self.send("stop")
            self.process.stdin.close()  # type: ignore[union-attr]
            self.process.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


def run_once(
    system: str,
    peers: int,
    duration: float,
    coalesce: float,
    settle: float = SETTLE,
    subscribe: bool = False,
    heartbeat: float = HEARTBEAT,
) -> dict[str, Any]:
    """One mesh of ``peers + 1`` processes: CPU % per process, and the meshq counters."""
    children: list[Child] = []
    try:
        if system == "meshq":
            mesh = f"idle-{secrets.token_hex(4)}"
            extra = ["subscribe"] if subscribe else []
            timing = [str(peers), str(coalesce), str(heartbeat)]
            first = Child(["--child", "meshq", "0", mesh, "", *timing, *extra])
            children.append(first)
            seed = first.expect("endpoint")["endpoint"]
            for index in range(1, peers + 1):
                children.append(
                    Child(["--child", "meshq", str(index), mesh, seed, *timing, *extra])
                )
            for child in children[1:]:
                child.expect("endpoint")
        else:
            children = [
                Child(["--child", system, str(i), str(heartbeat)]) for i in range(peers + 1)
            ]
            endpoints = [child.expect("endpoint")["endpoint"] for child in children]
            for index, child in enumerate(children):
                child.send(json.dumps(endpoints[:index] + endpoints[index + 1 :]))
        for child in children:
            child.expect("ready")
        time.sleep(settle)  # the mesh's first gossip and answers settle
        for child in children:
            child.send("measure")
        before = [child.cpu_seconds() for child in children]
        started = time.monotonic()
        time.sleep(duration)  # the measurement itself: nothing to wait for but time
        after = [child.cpu_seconds() for child in children]
        elapsed = time.monotonic() - started
        for child in children:
            child.send("report")
        reports = [child.expect("report") for child in children]
    finally:
        for child in children:
            child.stop()
    cpu = statistics.mean(b[0] - a[0] for a, b in zip(before, after, strict=True))
    zmq_cpu = statistics.mean(b[1] - a[1] for a, b in zip(before, after, strict=True))
    result: dict[str, Any] = {
        "system": system,
        "peers": peers,
        "cpu_percent": 100.0 * cpu / elapsed,
        "zmq_thread_percent": 100.0 * zmq_cpu / elapsed,
        "seconds": elapsed,
    }
    if system != "raw":
        # Each node sends a PING to every peer every heartbeat s and receives as many.
        result["us_per_heartbeat"] = 1e6 * cpu / (2 * peers * elapsed / heartbeat)
    if system == "meshq":
        counted = [r["wakeups"] for r in reports if r["wakeups"] is not None]
        wakeups = statistics.median(counted) / elapsed if counted else float("nan")
        result["wakeups_per_s"] = wakeups
        result["peers_seen"] = min(r["peers"] for r in reports)
    elif system == "raw-hb":
        # What the least busy process read, per second: peers / heartbeat if all flowed.
        result["read_per_s"] = min(r["received"] for r in reports) / elapsed
        if result["read_per_s"] < 0.9 * peers / heartbeat:
            raise RuntimeError(f"raw-hb read {result['read_per_s']:.1f} heartbeats/s, not all")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--peers", type=int, nargs="+", default=[1, 7, 15, 31])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument(
        "--settle", type=float, default=SETTLE, help="seconds idle before measuring"
    )
    parser.add_argument(
        "--coalesce", type=float, default=-1.0, help="ControlLoop.coalesce, s (default: as shipped)"
    )
    parser.add_argument(
        "--subscribe", action="store_true", help="each meshq node holds one subscription"
    )
    parser.add_argument("--quick", action="store_true", help="1 and 7 peers, 2 runs of 3 s")
    parser.add_argument(
        "--no-cost", action="store_true", help="skip the cost of one heartbeat (older meshq)"
    )
    parser.add_argument(
        "--systems",
        nargs="+",
        choices=SYSTEMS,
        default=list(SYSTEMS),
        help="what to measure (default: all three)",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=HEARTBEAT,
        help="seconds between heartbeats, meshq's and raw-hb's (suspect and gone after 3x, 6x)",
    )
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.heartbeat <= 0:
        parser.error("--heartbeat must be > 0 seconds")
    if args.settle + args.duration > RAW_LIMIT - 60:
        parser.error(f"--settle plus --duration must stay under {RAW_LIMIT - 60:.0f} s")
    if args.child:
        role, *rest = args.child
        if role == "meshq":
            index, mesh, seed, peers, coalesce, heartbeat, *flags = rest
            child_meshq(
                int(index),
                mesh,
                seed,
                int(peers),
                float(coalesce),
                float(heartbeat),
                "subscribe" in flags,
            )
        else:
            index, heartbeat = rest
            child_raw(int(index), float(heartbeat) if role == "raw-hb" else None)
        return 0
    if args.quick:
        args.peers, args.repeat, args.duration = [1, 7], 2, 3.0
    cost = {} if args.no_cost else heartbeat_cost()
    if cost:
        print(
            f"one PING received costs the control thread {cost['us_per_heartbeat_alone']:.0f} us"
            f" alone in a wake-up, {cost['us_per_heartbeat_batched']:.0f} us read with others"
        )

    if __package__ in (None, ""):  # run as a script: make `bench` importable
        sys.path.insert(0, str(ROOT))
    from bench._common import environment, write_results

    runs: list[dict[str, Any]] = []
    failures: list[str] = []
    for peers in args.peers:
        for repeat in range(args.repeat):
            turn = repeat % len(args.systems)  # each system goes first in turn
            for system in args.systems[turn:] + args.systems[:turn]:
                try:
                    runs.append(
                        run_once(
                            system,
                            peers,
                            args.duration,
                            args.coalesce,
                            args.settle,
                            args.subscribe,
                            args.heartbeat,
                        )
                    )
                except Exception as exc:  # one failed run is reported, the rest go on
                    failures.append(f"{system} with {peers} peers: {exc}")
    print(
        f"\n{'peers':>5} {'system':6} {'CPU % of a core':>16} {'(min-max of runs)':>18}"
        f" {'of it libzmq':>12} {'wake-ups/s':>10} {'us/heartbeat':>12} {'x raw-hb':>8}"
    )
    print("-" * 94)
    table = []
    for peers in args.peers:
        floor = [r["cpu_percent"] for r in runs if r["system"] == "raw-hb" and r["peers"] == peers]
        for system in SYSTEMS:
            mine = [r for r in runs if r["system"] == system and r["peers"] == peers]
            if not mine:
                continue
            cpu = [r["cpu_percent"] for r in mine]
            row = {
                "peers": peers,
                "system": system,
                "cpu_percent": statistics.median(cpu),
                "min": min(cpu),
                "max": max(cpu),
                "runs": len(mine),
                "zmq_thread_percent": statistics.median(r["zmq_thread_percent"] for r in mine),
            }
            extra = ""
            if system != "raw":
                row["us_per_heartbeat"] = statistics.median(r["us_per_heartbeat"] for r in mine)
            if system == "meshq":
                row["wakeups_per_s"] = statistics.median(r["wakeups_per_s"] for r in mine)
                extra = f" {row['wakeups_per_s']:>10.1f} {row['us_per_heartbeat']:>12.1f}"
                if floor:  # meshq's median over that of bare pyzmq with its heartbeats
                    row["x_raw_heartbeats"] = row["cpu_percent"] / statistics.median(floor)
                    extra += f" {row['x_raw_heartbeats']:>8.2f}"
            elif system == "raw-hb":
                row["read_per_s"] = min(r["read_per_s"] for r in mine)
                extra = f" {'':>10} {row['us_per_heartbeat']:>12.1f}"
            table.append(row)
            spread = f"{min(cpu):.3f}-{max(cpu):.3f}"
            print(
                f"{peers:>5} {system:6} {row['cpu_percent']:>16.3f} {spread:>18}"
                f" {row['zmq_thread_percent']:>12.3f}{extra}"
            )
    load = os.getloadavg()
    print(
        f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
        f" on {os.cpu_count()} cores"
    )
    document = {
        "environment": {**environment(), "loadavg": load},
        "duration": args.duration,
        "settle": args.settle,
        "coalesce": args.coalesce,
        "subscribe": args.subscribe,
        "heartbeat": args.heartbeat,
        "heartbeat_cost": cost,
        "table": table,
        "runs": runs,
    }
    return write_results(args.json, document, failures)


if __name__ == "__main__":
    sys.exit(main())
