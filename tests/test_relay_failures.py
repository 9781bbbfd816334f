"""The relay under real failures: SIGKILL, SIGSTOP, a torn WAL, a consumer killed mid-work.

Real processes (tests/relay_agent.py) on loopback, or on hosts made of
network namespaces, killed with real signals; a real SQLite file.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import meshq
from tests.harness import Agent, Lan

RELAY_AGENT = str(Path(__file__).with_name("relay_agent.py"))
LOOPBACK = "127.0.0.1"


def relay_argv(role: str, mesh: str, interface: str, *extra: str) -> list[str]:
    return [sys.executable, RELAY_AGENT, role, "--mesh", mesh, "--interface", interface, *extra]


def start(agents: list[Agent], argv: list[str], name: str) -> Agent:
    agent = Agent(argv, name)
    agents.append(agent)
    return agent


def wait_for_relay(node: meshq.Node, stream: str = "s/") -> None:
    node.wait_for_service(f"meshq/relay/{stream}", timeout=15)


def drain(sub: meshq.DurableSubscription, want: int, budget: float) -> Counter[object]:
    """Receive until ``want`` distinct payloads arrived (or ``budget`` s); count each payload."""
    seen: Counter[object] = Counter()
    deadline = time.monotonic() + budget
    while len(seen) < want and time.monotonic() < deadline:
        try:
            message = sub.recv(timeout=1.0)
        except meshq.Timeout:
            continue
        seen[message.data] += 1
    return seen


# A chaos run: in the soak step (.ci/run), in a pytest process of its own.
# Its producers used to stall for good on a loaded machine: a request's
# wait for replies turned into a poll without end (a negative timeout)
# while the one reply due was from a relay just SIGKILLed. Fixed in
# meshq/requester.py; tests/test_requester_deadlines.py pins it.
@pytest.mark.soak
@pytest.mark.timeout(300)
def test_relay_killed_repeatedly_loses_nothing_confirmed(
    mesh: str, tmp_path: Path, agents: list[Agent]
) -> None:
    count = 10_000
    data = str(tmp_path / "relay")
    relay_args = ("--data", data, "--durability", "batched")
    relay = start(agents, relay_argv("relay", mesh, LOOPBACK, *relay_args), "relay")
    producers = [
        start(
            agents,
            relay_argv("produce", mesh, LOOPBACK, "--topic", f"s/p{n}", "--count", str(count)),
            f"producer{n}",
        )
        for n in range(3)
    ]
    kills = 0
    rng = random.Random(7)
    with meshq.Node("consumer", mesh=mesh, interfaces=[LOOPBACK]) as node:
        wait_for_relay(node)
        producers[0].expect(lambda e: e["ev"] == "progress", timeout=30)
        sub = node.subscribe("s/", durable="audit")  # starts after publishing began
        deadline = time.monotonic() + 150
        done = 0
        while done < len(producers):
            assert time.monotonic() < deadline, "producers did not finish"
            time.sleep(rng.uniform(0.3, 1.0))
            done = sum(any(e["ev"] == "produced" for e in p.events) for p in producers)
            for producer in producers:  # collect what arrived so far
                try:
                    producer.expect(lambda e: e["ev"] == "produced", timeout=0.01)
                except AssertionError:
                    pass
            if kills < 5 and done < len(producers):
                relay.signal(signal.SIGKILL)
                relay.process.wait()
                kills += 1
                relay = start(agents, relay_argv("relay", mesh, LOOPBACK, *relay_args), "relay")
        reports = [p.expect(lambda e: e["ev"] == "produced", timeout=1) for p in producers]
        assert [r["confirmed"] for r in reports] == [count] * 3
        seen = drain(sub, 3 * count, budget=120)
        sub.close()
        info = node.request("meshq/relay/s/", ["info"], timeout=5)
        assert isinstance(info, dict)
        assert info["messages"] == 3 * count  # each resent message stored once
    want = {f"s/p{n}-{i}" for n in range(3) for i in range(count)}
    assert set(seen) == want, f"missing {len(want - set(seen))}, extra {len(set(seen) - want)}"
    assert max(seen.values()) == 1, "a message reached the application twice"
    resent = sum(r["resent"] for r in reports)
    print(
        f"relay killed {kills} times; {resent} publishes resent after a lost confirm; "
        f"{sub.duplicates} redeliveries skipped by the consumer"
    )
    assert kills >= 1


def test_a_consumer_killed_before_acknowledging_gets_its_messages_redelivered(
    mesh: str, lan3: Lan, tmp_path: Path, agents: list[Agent]
) -> None:
    relay_host, producer_host, consumer_host = (0, 1, 2)
    address = lan3.addresses
    start(
        agents,
        lan3.argv(
            relay_host,
            relay_argv("relay", mesh, address[relay_host], "--data", str(tmp_path / "r")),
        ),
        "relay",
    )
    producer = start(
        agents,
        lan3.argv(
            producer_host,
            relay_argv("produce", mesh, address[producer_host], "--topic", "s/x", "--count", "20"),
        ),
        "producer",
    )
    assert producer.expect(lambda e: e["ev"] == "produced", timeout=30)["confirmed"] == 20
    consumer_args = ("--durable", "billing", "--no-ack")
    first = start(
        agents,
        lan3.argv(
            consumer_host, relay_argv("consume", mesh, address[consumer_host], *consumer_args)
        ),
        "first",
    )
    taken = first.expect(lambda e: e["ev"] == "message" and e["seq"] == 20, timeout=30)
    assert taken["deliveries"] == 1
    first.signal(signal.SIGKILL)  # before acknowledging anything
    first.process.wait()
    second = start(
        agents,
        lan3.argv(
            producer_host, relay_argv("consume", mesh, address[producer_host], *consumer_args)
        ),
        "second",
    )
    second.expect(lambda e: e["ev"] == "message" and e["seq"] == 20, timeout=30)
    redelivered = [e for e in second.events if e["ev"] == "message"]
    assert sorted(e["seq"] for e in redelivered) == list(range(1, 21))
    assert all(e["deliveries"] >= 2 for e in redelivered)
    assert [e["data"] for e in redelivered] == [f"s/x-{i}" for i in range(20)]


def test_a_torn_wal_tail_is_reported_and_the_intact_part_served(
    mesh: str, tmp_path: Path, agents: list[Agent]
) -> None:
    data = tmp_path / "relay"
    relay_args = ("--data", str(data), "--durability", "batched")
    relay = start(agents, relay_argv("relay", mesh, LOOPBACK, *relay_args), "relay")
    producer = start(
        agents, relay_argv("produce", mesh, LOOPBACK, "--topic", "s/x", "--count", "500"), "p"
    )
    assert producer.expect(lambda e: e["ev"] == "produced", timeout=60)["confirmed"] == 500
    relay.signal(signal.SIGKILL)  # no clean close: the WAL keeps the recent transactions
    relay.process.wait()
    wal = data / "relay.sqlite-wal"
    size = wal.stat().st_size
    assert size > 5000, "nothing left in the WAL to tear"
    os.truncate(wal, size - 1000)  # the disk lost the end of the last write
    relay = start(agents, relay_argv("relay", mesh, LOOPBACK, *relay_args), "relay")
    with meshq.Node("consumer", mesh=mesh, interfaces=[LOOPBACK]) as node:
        wait_for_relay(node)
        info = node.request("meshq/relay/s/", ["info"], timeout=5)
        assert isinstance(info, dict)
        kept = info["messages"]
        assert 0 < kept < 500  # the torn transaction is gone, the rest recovered
        with node.subscribe("s/", durable="check") as sub:
            got = [sub.recv(timeout=5) for _ in range(kept)]
        assert [m.seq for m in got] == list(range(1, kept + 1))
        assert [m.data for m in got] == [f"s/x-{i}" for i in range(kept)]  # all intact
        # It goes on, above every number that may have been confirmed.
        seq = node.publish("s/x", "after", durable=True)
        assert seq is not None and seq > 500
        assert info["wal_torn"] == 1
    relay.send(cmd="close")
    relay.process.wait(timeout=10)
    assert "TORN WAL" in relay.stderr()


def test_a_stopped_relay_loses_nothing_confirmed_and_dedup_removes_the_redeliveries(
    mesh: str, tmp_path: Path, agents: list[Agent]
) -> None:
    count = 3000
    relay = start(
        agents, relay_argv("relay", mesh, LOOPBACK, "--data", str(tmp_path / "r")), "relay"
    )
    consumer = start(agents, relay_argv("consume", mesh, LOOPBACK, "--durable", "c"), "consumer")
    producer = start(
        agents,
        relay_argv("produce", mesh, LOOPBACK, "--topic", "s/x", "--count", str(count)),
        "producer",
    )
    producer.expect(lambda e: e["ev"] == "progress", timeout=60)
    consumer.expect(lambda e: e["ev"] == "message", timeout=30)
    relay.signal(signal.SIGSTOP)  # past ack_wait (1 s) and the publish timeout (1 s)
    time.sleep(2.5)  # the stop itself is what is tested: nothing to wait on
    relay.signal(signal.SIGCONT)
    report = producer.expect(lambda e: e["ev"] == "produced", timeout=120)
    assert report["confirmed"] == count
    assert report["resent"] > 0  # publishers timed out while the relay was stopped
    consumer.expect(lambda e: e["ev"] == "message" and e["data"] == f"s/x-{count - 1}", 60)
    with meshq.Node("checker", mesh=mesh, interfaces=[LOOPBACK]) as node:
        wait_for_relay(node)
        info = node.request("meshq/relay/s/", ["info"], timeout=5)
    assert isinstance(info, dict) and info["messages"] == count  # resends stored once
    deadline = time.monotonic() + 30
    delivered: Counter[object] = Counter()
    while len(delivered) < count and time.monotonic() < deadline:
        try:
            consumer.expect(lambda e: False, timeout=0.2)  # collect the events so far
        except AssertionError:
            pass
        delivered = Counter(e["data"] for e in consumer.events if e["ev"] == "message")
    assert set(delivered) == {f"s/x-{i}" for i in range(count)}
    assert max(delivered.values()) == 1  # redeliveries were removed by dedup
