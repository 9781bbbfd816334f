"""The mesh view: the collector, ``meshq top`` (once, and live in tmux), the exporter.

The mesh is real: nodes on 127.0.0.1 in this process (and one in a child
process for the tmux test, so it can be frozen with SIGSTOP); top and the
exporter run as the ``meshq`` command in their own processes.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import meshq
from meshq.collector import Collector, MeshView
from meshq.introspect import INTROSPECT_SERVICE, snapshot

LOOPBACK = ["127.0.0.1"]
WAIT = 15.0
MESHQ = [sys.executable, "-m", "meshq.cli"]


def wait_until(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def wait_for_providers(node: meshq.Node, service: str, n: int) -> None:
    node.wait_for_service(service, n, timeout=WAIT)


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MESHQ_INTERFACES"}


def _calc(data: object) -> object:
    if data == "boom":
        raise ValueError("boom")
    return data


#: A frozen peer stays suspect (not gone) long enough to be seen on screen.
PATIENT = meshq.MeshConfig(suspect_after=1.5, gone_after=60.0)


class SmallMesh:
    """sensor publishes sensors/temp, display subscribes and serves calc (both answer
    introspection, as every node does)."""

    def __init__(self, mesh: str) -> None:
        self.sensor = meshq.Node("sensor", mesh=mesh, interfaces=LOOPBACK, config=PATIENT)
        self.display = meshq.Node("display", mesh=mesh, interfaces=LOOPBACK, config=PATIENT)
        self.display.serve("calc", _calc)
        self.received = 0
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._subscribed.wait(WAIT)
        self.sensor.wait_for_subscribers("sensors/temp", 1, timeout=WAIT)

    def _read(self) -> None:
        with self.display.subscribe("sensors/") as sub:
            self._subscribed.set()
            while not self._stop.is_set():
                try:
                    sub.recv(timeout=0.1)
                    self.received += 1
                except (meshq.Timeout, meshq.Closed):
                    continue

    def publish(self, n: int) -> None:
        target = self.received + n
        for i in range(n):
            self.sensor.publish("sensors/temp", {"celsius": i})
        wait_until(lambda: self.received >= target, f"{n} messages received")

    def close(self) -> None:
        self._stop.set()
        self._reader.join()
        self.sensor.close()
        self.display.close()


@pytest.fixture
def small_mesh(mesh: str) -> Iterator[SmallMesh]:
    built = SmallMesh(mesh)
    yield built
    built.close()


@pytest.fixture
def observer(mesh: str) -> Iterator[meshq.Node]:
    with meshq.Node("observer", mesh=mesh, interfaces=LOOPBACK) as node:
        yield node


def node_named(view: MeshView, name: str) -> meshq.collector.NodeView:
    [found] = [n for n in view.nodes if n.name == name]
    return found


def test_the_view_joins_nodes_topics_services_and_streams(
    mesh: str, small_mesh: SmallMesh, observer: meshq.Node, tmp_path: Path
) -> None:
    relay_node = meshq.Node("relay", mesh=mesh, interfaces=LOOPBACK)
    relay = meshq.Relay(relay_node, tmp_path / "relay", ["orders/"])
    try:
        small_mesh.publish(40)
        wait_for_providers(observer, "meshq/relay/orders/", 1)
        for i in range(5):
            observer.publish("orders/1", i, durable=True)
        with observer.subscribe("orders/", durable="billing") as orders:
            orders.recv(timeout=WAIT)
            orders.recv(timeout=WAIT)  # the first one is acknowledged by taking the next
        wait_for_providers(observer, INTROSPECT_SERVICE, 4)  # the observer answers too
        collector = Collector(observer, timeout=WAIT)
        first = collector.collect()

        assert [n.name for n in first.nodes] == ["display", "relay", "sensor"]
        assert not first.missing and not first.errors and not first.marked
        sensor = node_named(first, "sensor")
        assert sensor.published == 40 and sensor.publish_rate is None  # no earlier collect
        assert sensor.version == meshq.__version__ and sensor.peers_alive == 3
        [temp] = [t for t in first.topics if t.topic == "sensors/temp"]
        assert (temp.publisher, temp.published, temp.subscribers, temp.behind, temp.gaps) == (
            "sensor", 40, 1, 0, 0,
        )  # fmt: skip
        assert (temp.received, temp.received_rate) == (40, None)  # no earlier collect
        [calc] = first.services
        assert (calc.name, calc.providers) == ("calc", ("display",))
        assert (calc.calls[0].served, calc.calls[0].errors, calc.calls[0].p50) == (0, 0, None)
        [stream] = first.streams
        assert (stream.stream, stream.relay, stream.first_seq, stream.last_seq) == (
            "orders/", "relay", 1, 5,
        )  # fmt: skip
        [billing] = stream.consumers
        assert billing.name == "billing" and billing.lag == 3

        small_mesh.publish(10)
        for i in range(2):
            observer.publish("orders/1", i, durable=True)
        for i in range(3):
            assert observer.request("calc", i, timeout=WAIT) == i
        with pytest.raises(meshq.RemoteError):
            observer.request("calc", "boom", timeout=WAIT)
        second = collector.collect()
        [call] = second.services[0].calls
        assert (call.node, call.served, call.errors, call.mark) == ("display", 3, 1, "errors +1")
        assert call.p50 is not None and call.p99 is not None and 0 < call.p50 <= call.p99
        sensor = node_named(second, "sensor")
        assert (
            sensor.published == 50 and sensor.publish_rate is not None and sensor.publish_rate > 0
        )
        [temp] = [t for t in second.topics if t.topic == "sensors/temp"]
        assert temp.received == 50 and temp.received_rate is not None and temp.received_rate > 0
        [billing] = second.streams[0].consumers
        assert billing.lag == 5 and billing.mark == "falling behind (lag +2)"
        assert second.marked == [
            "service calc on display: errors +1",
            "consumer orders//billing: falling behind (lag +2)",
        ]

        with meshq.Node("relay2", mesh=mesh, interfaces=LOOPBACK) as other:
            meshq.Relay(other, tmp_path / "relay2", ["orders/"])
            wait_for_providers(observer, "meshq/relay/orders/", 2)
            wait_until(
                lambda: len({p.headers.get("meshq.relay-store") for p in observer.peers()}) >= 3,
                "stores",
            )
            third = collector.collect()
        assert {s.relay for s in third.streams} == {"relay", "relay2"}
        assert all(s.mark == "claimed by 2 relays" for s in third.streams)
    finally:
        relay.close()


def test_gaps_that_grow_mark_the_topic_and_the_subscriber(mesh: str, observer: meshq.Node) -> None:
    tiny = meshq.MeshConfig(publish_hwm=2, subscribe_hwm=2)
    with (
        meshq.Node("fast", mesh=mesh, interfaces=LOOPBACK, config=tiny) as fast,
        meshq.Node("slow", mesh=mesh, interfaces=LOOPBACK, config=tiny) as slow,
        slow.subscribe("burst/") as sub,
    ):
        fast.wait_for_subscribers("burst/x", 1, timeout=WAIT)
        wait_for_providers(observer, INTROSPECT_SERVICE, 3)
        collector = Collector(observer, timeout=WAIT)
        assert not collector.collect().marked
        # Loopback buffers hold about 36 MiB: 600 messages of 256 KiB overflow
        # them, so the tiny queues drop some (as in tests/test_publisher.py).
        payload = bytes(256 * 1024)
        for _ in range(600):
            fast.publish("burst/x", payload)
        markers = 0
        while True:
            try:
                if sub.recv(timeout=0.5).data == b"marker":
                    break
            except meshq.Timeout:  # drained: a marker shows what was lost last
                assert markers < 20
                fast.publish("burst/x", b"marker")
                markers += 1
        assert sub.gaps > 0
        view = collector.collect()
        logged = sum(gap.missed for gap in sub.gap_log)  # the latest 100 gaps
    [topic] = view.topics
    assert topic.gaps == logged and topic.mark == f"gaps +{logged}"
    assert node_named(view, "slow").gaps == sub.gaps
    assert node_named(view, "slow").mark == f"gaps +{sub.gaps}"
    assert node_named(view, "fast").mark == ""


def test_a_malformed_reply_is_listed_and_the_rest_still_shown(
    mesh: str, small_mesh: SmallMesh, observer: meshq.Node
) -> None:
    with meshq.Node("liar", mesh=mesh, interfaces=LOOPBACK) as liar:
        liar.serve(INTROSPECT_SERVICE, lambda data: {"v": 1, "name": 7})
        wait_for_providers(observer, INTROSPECT_SERVICE, 4)
        view = Collector(observer, timeout=WAIT).collect()
    assert [n.name for n in view.nodes] == ["display", "sensor"]
    assert view.errors == ("liar: peers is not an array",)


def test_a_node_that_left_is_listed_as_not_answering_for_a_while(
    mesh: str, observer: meshq.Node
) -> None:
    leaving = meshq.Node("leaving", mesh=mesh, interfaces=LOOPBACK)
    wait_for_providers(observer, INTROSPECT_SERVICE, 2)
    collector = Collector(observer, timeout=WAIT)
    assert [n.name for n in collector.collect().nodes] == ["leaving"]
    leaving.close()  # says BYE: gone from the observer's table at once
    wait_until(lambda: not observer.peers(), "the BYE handled")
    view = collector.collect()
    assert view.nodes == () and view.missing == ("leaving",)
    assert view.marked == ["node leaving: did not answer"]
    collector.forget_after = 0.0
    assert collector.collect().missing == ()


def test_overlapping_streams_and_new_dead_letters_are_marked(
    mesh: str, observer: meshq.Node, tmp_path: Path
) -> None:
    relays = [
        meshq.Relay(meshq.Node("wide", mesh=mesh, interfaces=LOOPBACK), tmp_path / "w", ["a/"]),
        meshq.Relay(meshq.Node("narrow", mesh=mesh, interfaces=LOOPBACK), tmp_path / "n", ["a/b/"]),
    ]
    try:
        wait_for_providers(observer, "meshq/relay/a/b/", 1)
        wait_for_providers(observer, "meshq/relay/a/", 1)
        view = Collector(observer, timeout=WAIT).collect()
    finally:
        for relay in relays:
            relay.close()
    assert {(s.stream, s.relay, s.mark) for s in view.streams} == {
        ("a/", "wide", "overlaps stream 'a/b/'"),
        ("a/b/", "narrow", "overlaps stream 'a/'"),
    }
    info = {"messages": 3, "bytes": 30, "first_seq": 1, "last_seq": 3, "dead_letters": 2,
            "consumers": {"billing": {"lag": 0, "out": 0}}}  # fmt: skip
    before = Collector._stream("s/", "r", {**info, "dead_letters": 1}, "", {})
    after = Collector._stream("s/", "r", info, "", {("s/", "r"): before})
    assert before.mark == "" and after.mark == "dead letters +1"
    assert not before.conflict and not after.conflict
    # A conflict only the relay sees (its info says so) marks the stream too.
    told = Collector._stream("s/", "r", {**info, "conflict": "r2 claims it"}, "", {})
    assert told.mark == "conflict: r2 claims it" and told.conflict
    assert all(s.conflict for s in view.streams)  # the overlap found by the collector
    assert exported(view)["meshq_stream_conflict"] == {
        (("relay", "wide"), ("stream", "a/")): 1,
        (("relay", "narrow"), ("stream", "a/b/")): 1,
    }


# ----------------------------------------------------------------------
# meshq top


def test_top_once_prints_the_tables_and_json(mesh: str, small_mesh: SmallMesh) -> None:
    small_mesh.publish(30)
    wait_for_providers(small_mesh.sensor, "calc", 1)
    for i in range(4):
        small_mesh.sensor.request("calc", i, timeout=WAIT)
    args = ["top", "--once", "--mesh", mesh, "--interface", "127.0.0.1", "--expect", "2"]
    table = subprocess.run([*MESHQ, *args], capture_output=True, text=True, timeout=60, env=env())
    assert table.returncode == 0, table.stderr
    print(table.stdout)  # the table, for the issue note (pytest -s)
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"meshq top  mesh {mesh!r}  2 node(s)")
    sensor_row = next(line for line in lines if line.startswith("│sensor "))
    assert "│        30 │" in sensor_row  # published
    temp_row = next(line for line in lines if line.startswith("│sensors/temp "))
    assert [cell.strip() for cell in temp_row.strip("│").split("│")][:3] == [
        "sensors/temp", "sensor", "30",
    ]  # fmt: skip
    calc_row = next(line for line in lines if line.startswith("│calc "))
    assert [cell.strip() for cell in calc_row.strip("│").split("│")][:5] == [
        "calc",
        "display",
        "4",
        "0",
        "0",
    ]  # fmt: skip  (served, req/s, errors)

    as_json = subprocess.run(
        [*MESHQ, *args, "--json"], capture_output=True, text=True, timeout=60, env=env()
    )
    view = json.loads(as_json.stdout)
    assert sorted(n["name"] for n in view["nodes"]) == ["display", "sensor"]
    assert view["topics"][0]["published"] == 30 and view["marked"] == []
    assert all(n["publish_rate"] is not None for n in view["nodes"])  # two collects: a rate


NODE = """
import sys
import meshq
node = meshq.Node("frozen", mesh=sys.argv[1], interfaces=["127.0.0.1"])
print("ready", flush=True)
sys.stdin.read()
node.close()
"""


@pytest.fixture
def tmux_session() -> Iterator[str]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    name = f"meshq-top-{secrets.token_hex(4)}"  # a tmux server of this test's own
    yield name
    subprocess.run(["tmux", "-L", name, "kill-server"], capture_output=True, check=False)


def screen(session: str) -> str:
    return subprocess.run(
        ["tmux", "-L", session, "capture-pane", "-p", "-t", session],
        capture_output=True,
        text=True,
        check=False,
    ).stdout


def test_top_live_in_tmux_shows_the_mesh_and_marks_a_frozen_node(
    mesh: str, small_mesh: SmallMesh, tmux_session: str
) -> None:
    frozen = subprocess.Popen(
        [sys.executable, "-c", NODE, mesh], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert frozen.stdout is not None and frozen.stdout.readline().startswith("ready")
        command = " ".join(
            [*MESHQ, "top", "--mesh", mesh, "--interface", "127.0.0.1", "--duration", "60",
             "--timeout", "0.5"]
        )  # fmt: skip
        subprocess.run(
            ["tmux", "-L", tmux_session, "-f", "/dev/null", "new-session", "-d", "-s", tmux_session,
             "-x", "180", "-y", "50",
             "env", "-u", "MESHQ_INTERFACES", "-u", "COLUMNS", "-u", "LINES", *command.split()],
            check=True,
        )  # fmt: skip
        wait_until(
            lambda: all(f"│{n} " in screen(tmux_session) for n in ("sensor", "display", "frozen")),
            "three nodes on screen",
        )
        small_mesh.publish(20)
        wait_until(lambda: "│sensors/temp " in screen(tmux_session), "the topic on screen")
        assert all(h in screen(tmux_session) for h in ("MAX RTT MS", "RECV/S", "consumers"))
        frozen.send_signal(signal.SIGSTOP)
        shown: list[str] = []

        def marked() -> bool:
            shown[:] = [screen(tmux_session)]
            return "peer suspect: frozen" in shown[0] and "did not answer" in shown[0]

        try:
            wait_until(marked, "the frozen node marked")
        finally:
            print(shown[0] if shown else "")  # the screen, for the issue note (pytest -s)
    finally:
        frozen.send_signal(signal.SIGCONT)
        assert frozen.stdin is not None
        frozen.stdin.close()
        try:
            frozen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            frozen.kill()
            frozen.wait()


# ----------------------------------------------------------------------
# meshq exporter


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_exporter_is_scraped_and_parsed_by_prometheus_client(
    mesh: str, small_mesh: SmallMesh, tmp_path: Path
) -> None:
    small_mesh.publish(25)
    wait_for_providers(small_mesh.sensor, "calc", 1)
    for i in range(2):
        small_mesh.sensor.request("calc", i, timeout=WAIT)
    port = free_port()
    exporter = subprocess.Popen(
        [*MESHQ, "exporter", "--port", str(port), "--mesh", mesh, "--interface", "127.0.0.1",
         "--expect", "2", "--interval", "0.5", "--duration", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
    )  # fmt: skip
    try:
        assert exporter.stdout is not None
        assert exporter.stdout.readline().strip() == f"serving http://127.0.0.1:{port}/metrics"
        samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}

        def scrape() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                text = reply.read().decode()
            samples.clear()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    key = tuple(sorted(sample.labels.items()))
                    samples.setdefault(sample.name, {})[key] = sample.value
            published = samples.get("meshq_topic_published_total", {})
            return published.get((("node", "sensor"), ("topic", "sensors/temp"))) == 25

        wait_until(scrape, "sensor's 25 messages in a scrape")
        ups = samples["meshq_node_up"]
        assert sorted(dict(k)["node"] for k in ups) == ["display", "sensor"]
        # display, and the exporter's own node once sensor has its HELLO.
        assert samples["meshq_node_peers"][(("node", "sensor"), ("state", "alive"))] >= 1
        received = samples["meshq_topic_received_seq"]
        key = (("node", "display"), ("prefix", "sensors/"), ("publisher", "sensor"),
               ("topic", "sensors/temp"))  # fmt: skip
        assert received[key] == 25
        assert (
            samples["meshq_subscription_gaps_total"][(("node", "display"), ("prefix", "sensors/"))]
            == 0
        )
        assert samples["meshq_service_providers"][(("service", "calc"),)] == 1
        calc = (("node", "display"), ("service", "calc"))
        assert samples["meshq_service_requests_total"][calc] == 2
        assert samples["meshq_service_errors_total"][calc] == 0
        median = (("node", "display"), ("quantile", "0.5"), ("service", "calc"))
        assert samples["meshq_service_latency_seconds"][median] > 0
        assert samples["meshq_nodes_not_answering"][()] == 0
    finally:
        exporter.send_signal(signal.SIGINT)
        try:
            exporter.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            exporter.kill()
            exporter.communicate()
    assert exporter.returncode in (0, 130)


# ----------------------------------------------------------------------
# Durable consumers from the consumer's side, and round-trip times


def rendered(view: MeshView) -> str:
    """What ``meshq top --once`` prints for ``view`` (rich, 200 columns)."""
    from rich.console import Console

    from meshq.top import render

    out = io.StringIO()
    Console(file=out, width=200).print(render(view))
    return out.getvalue()


def exported(view: MeshView) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The exporter's metrics for ``view``, as prometheus-client's parser reads them."""
    from prometheus_client import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from meshq.exporter import MeshMetrics

    registry = CollectorRegistry()
    metrics = MeshMetrics()
    metrics.update(view)
    registry.register(metrics)
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def cells(text: str, table: str, first: str) -> list[str]:
    """The cells of the row whose first cell is ``first`` in the table titled ``table``."""
    lines = text.splitlines()
    below = lines[[line.strip() for line in lines].index(table) :]
    line = next(line for line in below if line.startswith(f"│{first} "))
    return [cell.strip() for cell in line.strip("│").split("│")]


def test_a_durable_consumer_is_shown_from_its_node_with_its_relays_lag(
    mesh: str, observer: meshq.Node, tmp_path: Path
) -> None:
    relay = meshq.Relay(meshq.Node("relay", mesh=mesh, interfaces=LOOPBACK), tmp_path, ["orders/"])
    try:
        with meshq.Node("billing-worker", mesh=mesh, interfaces=LOOPBACK) as worker:
            worker.wait_for_service("meshq/relay/orders/", timeout=WAIT)
            observer.wait_for_service("meshq/relay/orders/", timeout=WAIT)
            for i in range(6):
                observer.publish("orders/1", i, durable=True)
            orders = worker.subscribe("orders/", durable="billing", ack="explicit")
            got = [orders.recv(timeout=WAIT) for _ in range(3)]
            got[0].ack()
            got[1].ack()  # the third stays in hand; none of the acks has reached the relay
            wait_for_providers(observer, INTROSPECT_SERVICE, 3)  # relay, worker, observer
            collector = Collector(observer, timeout=WAIT)
            first = collector.collect()
            [row] = first.consumers
            assert (row.node, row.prefix, row.stream, row.name) == (
                "billing-worker", "orders/", "orders/", "billing",
            )  # fmt: skip
            assert (row.delivered, row.acked, row.pending) == (3, 2, 1)
            assert 3 <= row.last_seq <= 6 and row.buffered == row.last_seq - 3
            assert row.lag == 6 and row.mark == ""  # the relay has had no ack yet

            orders.flush_acks(timeout=WAIT)  # the relay learns of 2 acks: lag 4
            for i in range(3):
                observer.publish("orders/1", i, durable=True)  # lag 7
            second = collector.collect()
            [row] = second.consumers
            assert row.lag == 7 and row.mark == "falling behind (lag +1)"
            assert "consumer billing on billing-worker: falling behind (lag +1)" in second.marked

            table = cells(rendered(second), "consumers", "billing-worker")
            assert table[:10] == [
                "billing-worker",
                "billing",
                "orders/",
                "orders/",
                "3",
                "0",
                "2",
                "1",
                str(row.buffered),
                "7",
            ]  # fmt: skip  (delivered, msg/s, acked, pending, buffered, lag)
            assert table[10] == "falling behind (lag +1)"
            samples = exported(second)
            key = (("consumer", "billing"), ("node", "billing-worker"), ("prefix", "orders/"))
            assert samples["meshq_consumer_delivered_total"][key] == 3
            assert samples["meshq_consumer_acked_total"][key] == 2
            assert samples["meshq_consumer_pending"][key] == 1

            orders.close()  # a closed consumer is no longer reported
            assert collector.collect().consumers == ()
    finally:
        relay.close()


def report_rtts(node: meshq.Node, rtts: tuple[float | None, ...]) -> None:
    """Make ``node`` report these round-trip times for its peers, in its peer order.

    As a node measuring them reports them (docs/PROTOCOL.md 16.4), or (None)
    does not; set here so that what the test expects does not depend on
    whether heartbeats measured one yet.
    """

    def answer(request: object) -> object:
        reply = snapshot(node, time.time())
        for peer, rtt in zip(reply["peers"], rtts, strict=False):
            peer["rtt"] = rtt
        return reply

    node.serve(INTROSPECT_SERVICE, answer)


def test_round_trip_times_are_shown_when_a_node_reports_them(
    mesh: str, observer: meshq.Node
) -> None:
    with (
        meshq.Node("timed", mesh=mesh, interfaces=LOOPBACK) as timed,
        meshq.Node("other", mesh=mesh, interfaces=LOOPBACK) as other_node,
    ):
        report_rtts(timed, (0.00125, 0.0004))
        report_rtts(other_node, (None, None))
        wait_until(lambda: len(timed.peers()) == 2, "timed sees both")
        wait_for_providers(observer, INTROSPECT_SERVICE, 3)
        view = Collector(observer, timeout=WAIT).collect()
    timed_view, other = node_named(view, "timed"), node_named(view, "other")
    first_peer = view.snapshots[[n.name for n in view.snapshots].index("timed")].peers[0].name
    assert (timed_view.rtt_max, timed_view.rtt_peer) == (0.00125, first_peer)
    assert other.rtt_max is None  # not measured: shown as "-"
    text = rendered(view)
    assert cells(text, "nodes", "timed")[7] == f"1.25 {first_peer}"
    assert cells(text, "nodes", "other")[7] == "-"
    rtts = exported(view)["meshq_peer_rtt_seconds"]
    assert rtts[(("node", "timed"), ("peer", first_peer))] == 0.00125
    assert all(dict(k)["node"] == "timed" for k in rtts) and len(rtts) == 2
