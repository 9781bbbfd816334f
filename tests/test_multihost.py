"""Three hosts on a bridge, each in its own network namespace (needs root).

What only a real network shows: mDNS across hosts, a SIGKILLed node, a host
whose link goes down and comes back, a clean goodbye, and a seed on another
host as the only way in. Addresses are in 198.18.0.0/15; the namespaces and
links are removed by the ``lan3`` fixture even when a test fails.
"""

from __future__ import annotations

import signal
import time

from meshq import MeshConfig
from tests.harness import Agent, Lan, agent_argv, joined, left
from tests.test_multiprocess import (
    check_paused_subscriber_reports_a_gap,
    publish_until_received,
    wait_for_first_handling,
)

NAMES = ("h1", "h2", "h3")
GONE_AFTER = MeshConfig().gone_after


def start(lan: Lan, agents: list[Agent], host: int, mesh: str, *extra: str) -> Agent:
    argv = agent_argv(NAMES[host], mesh, lan.addresses[host], *extra)
    agent = Agent(lan.argv(host, argv), NAMES[host])
    agents.append(agent)
    return agent


def full_mesh(lan: Lan, agents: list[Agent], mesh: str) -> list[Agent]:
    hosts = [start(lan, agents, host, mesh) for host in range(3)]
    for agent in hosts:
        for other in set(NAMES) - {agent.name}:
            agent.expect(joined(other), timeout=15)
    return hosts


def test_hosts_find_each_other_by_mdns_and_exchange_messages(
    lan3: Lan, agents: list[Agent], mesh: str
) -> None:
    h1, _, h3 = full_mesh(lan3, agents, mesh)
    h3.send(cmd="subscribe", prefix="lan/")
    h3.expect(lambda e: e["ev"] == "subscribed", timeout=10)
    message = publish_until_received(h1, "lan/hello", h3)
    assert message["sender"] == h1.id


def test_a_sigkilled_node_is_gone_within_the_timeout_plus_one_second(
    lan3: Lan, agents: list[Agent], mesh: str
) -> None:
    h1, h2, h3 = full_mesh(lan3, agents, mesh)
    h3.signal(signal.SIGKILL)
    killed = time.monotonic()
    for survivor in (h1, h2):
        remaining = GONE_AFTER + 1.0 - (time.monotonic() - killed)
        event = survivor.expect(left("h3"), timeout=max(remaining, 0.01))
        assert event["reason"] == "timeout"


def test_a_host_whose_link_goes_down_leaves_and_rejoins(
    lan3: Lan, agents: list[Agent], mesh: str
) -> None:
    h1, h2, _ = full_mesh(lan3, agents, mesh)
    lan3.link(1, up=False)
    assert h1.expect(left("h2"), timeout=GONE_AFTER + 5)["reason"] == "timeout"
    assert h2.expect(left("h1"), timeout=GONE_AFTER + 5)["reason"] == "timeout"
    seen = len(h1.events)
    lan3.link(1, up=True)
    h1.expect(lambda e: e in h1.events[seen:] and joined("h2")(e), timeout=15)
    rejoined = [e for e in h1.events[seen:] if joined("h2")(e)]
    assert rejoined and rejoined[0]["id"] == h2.id  # the same node, back again
    h2.send(cmd="subscribe", prefix="back/")
    h2.expect(lambda e: e["ev"] == "subscribed", timeout=10)
    publish_until_received(h1, "back/again", h2)


def test_a_node_that_closes_is_reported_left_with_a_goodbye(
    lan3: Lan, agents: list[Agent], mesh: str
) -> None:
    h1, h2, h3 = full_mesh(lan3, agents, mesh)
    h3.send(cmd="close")
    closed = time.monotonic()
    for survivor in (h1, h2):
        remaining = 1.0 - (time.monotonic() - closed)
        event = survivor.expect(left("h3"), timeout=max(remaining, 0.01))
        assert event["reason"] == "bye"


def test_a_seed_on_another_host_is_enough_to_join_the_whole_mesh(
    lan3: Lan, agents: list[Agent], mesh: str
) -> None:
    seed = start(lan3, agents, 0, mesh, "--port", "7600")  # a fixed port, as seeds need
    h2 = start(lan3, agents, 1, mesh)
    h2.expect(joined("h1"), timeout=15)
    h3 = start(lan3, agents, 2, mesh, "--no-mdns", "--seed", "tcp://198.18.0.1:7600")
    h3.expect(joined("h1"), timeout=15)
    h3.expect(joined("h2"), timeout=15)  # learned from the seed's HELLO
    h2.expect(joined("h3"), timeout=15)
    seed.expect(joined("h3"), timeout=15)


def test_requests_cross_hosts_and_survive_a_provider_killed_mid_request(
    lan3: Lan, agents: list[Agent], mesh: str
) -> None:
    h1, h2, h3 = full_mesh(lan3, agents, mesh)
    for provider in (h1, h2):
        provider.send(cmd="serve", name="calc", delay=0.3)
        provider.expect(lambda e: e["ev"] == "serving", timeout=10)
    h3.send(cmd="tally", name="calc", count=10, providers=2)
    tally = h3.expect(lambda e: e["ev"] == "tally", timeout=60)["by"]
    assert set(tally) == {"h1", "h2"}
    h3.send(cmd="request", name="calc", data=4242, timeout=1.5, retries=2)
    busy = wait_for_first_handling([h1, h2], data=4242, timeout=20)
    busy.signal(signal.SIGKILL)
    reply = h3.expect(lambda e: e["ev"] in ("reply", "error"), timeout=20)
    assert reply["ev"] == "reply" and reply["data"]["by"] != busy.name, reply


def test_a_pipeline_across_hosts_accounts_for_a_worker_killed_midway(
    lan3: Lan, agents: list[Agent], mesh: str
) -> None:
    h1, h2, h3 = full_mesh(lan3, agents, mesh)
    h1.send(cmd="worker", stage="job", delay=0.02)  # 0.1 s a batch of 5
    h2.send(cmd="worker", stage="job", die=True)  # SIGKILLs itself on its first task
    for worker in (h1, h2):
        worker.expect(lambda e: e["ev"] == "working", timeout=10)
    h3.send(cmd="produce", stage="job", batch=5, count=200, workers=2)
    h2.expect(lambda e: e["ev"] == "task", timeout=30)  # h2 took a batch...
    assert h2.process.wait(timeout=10) == -signal.SIGKILL  # ...and died holding it
    report = h3.expect(lambda e: e["ev"] == "produced", timeout=60)
    assert report["completed"] + report["failed"] + report["lost"] == 200
    assert report["tasks"] == list(range(200))  # each task done or counted lost, once
    assert report["lost"] >= 1 and report["failed"] == 0


def test_a_subscriber_paused_past_its_hwm_on_another_host_reports_the_gap(
    lan3: Lan, agents: list[Agent], mesh: str
) -> None:
    publisher = start(lan3, agents, 0, mesh, "--hwm", "50")
    subscriber = start(lan3, agents, 1, mesh, "--hwm", "50")
    check_paused_subscriber_reports_a_gap(publisher, subscriber)


def test_a_blocking_publisher_waits_for_a_paused_subscriber_on_another_host(
    lan3: Lan, agents: list[Agent], mesh: str
) -> None:
    """Its second (NODROP) socket is announced across hosts; nothing is missed."""
    patient = ("--hwm", "2", "--gone-after", "60")  # the pause must not drop the link
    publisher = start(lan3, agents, 0, mesh, *patient)
    subscriber = start(lan3, agents, 1, mesh, *patient)
    subscriber.expect(joined(publisher.name), timeout=15)
    subscriber.send(cmd="subscribe", prefix="flood/", quiet=True)
    subscriber.expect(lambda e: e["ev"] == "subscribed", timeout=10)
    publisher.send(cmd="block_publisher", topic="flood/x", timeout=0.3, subscribers=1)
    publisher.expect(lambda e: e["ev"] == "block_ready", timeout=20)
    subscriber.signal(signal.SIGSTOP)
    try:  # 600 x 256 KiB is far more than the queues and socket buffers hold
        publisher.send(cmd="publish_block", topic="flood/x", size=256 * 1024, count=600)
        blocked = publisher.expect(lambda e: e["ev"] in ("blocked", "published"), timeout=60)
    finally:
        subscriber.signal(signal.SIGCONT)
    assert blocked["ev"] == "blocked", blocked
    expected = blocked["sent"]
    deadline = time.monotonic() + 30
    while True:
        subscriber.send(cmd="report")
        report = subscriber.expect(lambda e: e["ev"] == "report", timeout=10)
        subscriber.events.remove(report)
        if report.get("received", 0) >= expected:
            break
        assert time.monotonic() < deadline, (report, expected)
        time.sleep(0.05)
    assert report["received"] == expected and report.get("gaps", 0) == 0
