"""Nodes in separate processes on 127.0.0.1, found by mDNS on the loopback interface."""

from __future__ import annotations

import signal
import time

from tests.harness import Agent, agent_argv, joined, left

LOOPBACK = "127.0.0.1"


def start(agents: list[Agent], name: str, mesh: str, *extra: str) -> Agent:
    agent = Agent(agent_argv(name, mesh, LOOPBACK, *extra), name)
    agents.append(agent)
    return agent


def publish_until_received(
    publisher: Agent, topic: str, receiver: Agent, timeout: float = 10.0
) -> dict[str, object]:
    """Publish a message every 50 ms until ``receiver`` reports it (bounded by timeout)."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        payload = f"{publisher.name}-{attempt}"
        publisher.send(cmd="publish", topic=topic, data=payload)
        try:
            return receiver.expect(
                lambda e: e["ev"] == "message" and e["topic"] == topic, timeout=0.05
            )
        except AssertionError:
            continue
    raise AssertionError(f"{receiver.name} got nothing on {topic} from {publisher.name}")


def test_three_processes_form_a_mesh_and_exchange_messages(mesh: str, agents: list[Agent]) -> None:
    a, b, c = (start(agents, name, mesh) for name in ("a", "b", "c"))
    for agent in (a, b, c):
        for other in {"a", "b", "c"} - {agent.name}:
            agent.expect(joined(other), timeout=15)
    for agent in (b, c):
        agent.send(cmd="subscribe", prefix="metrics/")
        agent.expect(lambda e: e["ev"] == "subscribed", timeout=10)
    for receiver in (b, c):
        message = publish_until_received(a, "metrics/cpu", receiver)
        assert message["sender"] == a.id
    message = publish_until_received(c, "metrics/mem", b)
    assert message["sender"] == c.id and str(message["data"]).startswith("c-")


def test_a_subscriber_started_after_the_publisher_gets_later_messages(
    mesh: str, agents: list[Agent]
) -> None:
    publisher = start(agents, "publisher", mesh)
    publisher.send(cmd="publish", topic="news/early", data="before anyone listened")
    late = start(agents, "late", mesh)
    late.expect(joined("publisher"), timeout=15)
    late.send(cmd="subscribe", prefix="news/")
    late.expect(lambda e: e["ev"] == "subscribed", timeout=10)
    message = publish_until_received(publisher, "news/later", late)
    assert str(message["data"]).startswith("publisher-")
    assert not any(e.get("topic") == "news/early" for e in late.events)


def test_sigkill_is_noticed_and_a_restart_replaces_the_old_peer(
    mesh: str, agents: list[Agent]
) -> None:
    watcher = start(agents, "watcher", mesh)
    victim = start(agents, "victim", mesh, "--port", "0")
    watcher.expect(joined("victim"), timeout=15)
    old_id = victim.id
    victim.signal(signal.SIGKILL)
    gone = watcher.expect(left("victim"), timeout=10)
    assert gone["reason"] == "timeout" and gone["id"] == old_id

    # A restart on the same control port while the old one is still known.
    port = victim.ready["control"][0].rpartition(":")[2]
    first = start(agents, "phoenix", mesh, "--port", port)
    watcher.expect(joined("phoenix"), timeout=15)
    first.signal(signal.SIGKILL)
    second = start(agents, "phoenix", mesh, "--port", port)
    replaced = watcher.expect(lambda e: e["ev"] == "left" and e["id"] == first.id, timeout=10)
    assert replaced["reason"] == "restarted"  # at once, not after the heartbeat timeout
    watcher.expect(lambda e: e["ev"] == "joined" and e["id"] == second.id, timeout=15)


def start_providers(agents: list[Agent], mesh: str, delay: float) -> list[Agent]:
    providers = [start(agents, f"p{i}", mesh) for i in (1, 2, 3)]
    for provider in providers:
        provider.send(cmd="serve", name="calc", delay=delay)
        provider.expect(lambda e: e["ev"] == "serving", timeout=10)
    return providers


def wait_for_providers(caller: Agent, providers: list[Agent]) -> None:
    for provider in providers:
        caller.expect(joined(provider.name), timeout=15)


def test_requests_spread_across_provider_processes(mesh: str, agents: list[Agent]) -> None:
    providers = start_providers(agents, mesh, delay=0.0)
    caller = start(agents, "caller", mesh)
    wait_for_providers(caller, providers)
    caller.send(cmd="tally", name="calc", count=90)
    tally = caller.expect(lambda e: e["ev"] == "tally", timeout=60)["by"]
    assert set(tally) == {"p1", "p2", "p3"}
    assert min(tally.values()) >= 5  # each gets a share; nobody starves


def test_a_provider_killed_mid_request_is_retried_on_another(
    mesh: str, agents: list[Agent]
) -> None:
    providers = start_providers(agents, mesh, delay=0.5)
    caller = start(agents, "caller", mesh)
    wait_for_providers(caller, providers)
    caller.send(cmd="request", name="calc", data=42, timeout=1.5, retries=2)
    busy = wait_for_first_handling(providers, data=42, timeout=20)
    busy.signal(signal.SIGKILL)
    reply = caller.expect(lambda e: e["ev"] in ("reply", "error"), timeout=20)
    assert reply["ev"] == "reply", reply
    assert reply["data"]["by"] != busy.name and reply["data"]["data"] == 42


def wait_for_first_handling(providers: list[Agent], data: int, timeout: float) -> Agent:
    """The provider that starts handling the request carrying ``data``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for provider in providers:
            try:
                provider.expect(lambda e: e["ev"] == "handling" and e["data"] == data, 0.02)
                return provider
            except AssertionError:
                continue
    raise AssertionError("no provider started handling the request")


def test_a_paused_subscriber_reports_the_gap_it_fell_into(mesh: str, agents: list[Agent]) -> None:
    """SIGSTOP a subscriber past its high-water mark; after SIGCONT it reports the loss."""
    publisher = start(agents, "publisher", mesh, "--hwm", "50")
    subscriber = start(agents, "subscriber", mesh, "--hwm", "50")
    check_paused_subscriber_reports_a_gap(publisher, subscriber)


def check_paused_subscriber_reports_a_gap(publisher: Agent, subscriber: Agent) -> None:
    """Both agents started with a small --hwm; the subscriber is paused mid-flood."""
    subscriber.expect(joined(publisher.name), timeout=15)
    subscriber.send(cmd="subscribe", prefix="flood/", quiet=True)
    subscriber.expect(lambda e: e["ev"] == "subscribed", timeout=10)
    deadline = time.monotonic() + 15
    while True:  # until the subscriber hears the publisher at all (slow joiner)
        publisher.send(cmd="publish", topic="flood/x", data="warm-up")
        subscriber.send(cmd="report")
        report = subscriber.expect(lambda e: e["ev"] == "report", timeout=5)
        subscriber.events.remove(report)
        if report.get("received"):
            break
        assert time.monotonic() < deadline, "the subscriber never heard the publisher"
    subscriber.signal(signal.SIGSTOP)
    try:
        publisher.send(cmd="publish", topic="flood/x", data="x" * 1000, count=20_000)
        publisher.expect(lambda e: e["ev"] == "published" and e["count"] == 20_000, timeout=60)
    finally:
        subscriber.signal(signal.SIGCONT)
    publisher.send(cmd="publish", topic="flood/x", data="after", count=10)
    deadline = time.monotonic() + 20
    while True:
        subscriber.send(cmd="report")
        report = subscriber.expect(lambda e: e["ev"] == "report", timeout=5)
        subscriber.events.remove(report)
        if report.get("gaps"):
            break
        assert time.monotonic() < deadline, report
        time.sleep(0.1)
    assert report["gaps"] > 0
    gap = report["gap_log"][0]
    assert gap["sender"] == publisher.id and gap["topic"] == "flood/x" and gap["missed"] > 0
