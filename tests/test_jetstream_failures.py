"""The JetStream store under real failures: servers and gateways SIGKILLed, a store wiped.

A 3-server cluster of its own (R3 streams), two relay gateways, three
producers and a consumer group of two, each a real process on loopback
(tests/relay_agent.py). Slow (a minute or two): marked ``soak``, run by
.ci/run with ``pytest -m soak``.
"""

from __future__ import annotations

import asyncio
import queue
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import nats
import pytest

import meshq
from meshq.relay.jetstream import js_stream_name
from tests.harness import Agent
from tests.natscluster import NatsCluster

RELAY_AGENT = str(Path(__file__).with_name("relay_agent.py"))
LOOPBACK = "127.0.0.1"
COUNT = 15_000  # per producer: enough to be still publishing through every step


def relay_argv(role: str, mesh: str, *extra: str) -> list[str]:
    return [sys.executable, RELAY_AGENT, role, "--mesh", mesh, "--interface", LOOPBACK, *extra]


def collect(agent: Agent) -> None:
    """Move the events that arrived so far into ``agent.events``, without waiting."""
    while True:
        try:
            item = agent._queue.get_nowait()
        except queue.Empty:
            return
        if item is None:
            return
        agent.events.append(item)


def confirmed_so_far(producers: list[Agent]) -> int:
    for producer in producers:
        collect(producer)
    return sum(
        max((e["confirmed"] for e in p.events if e["ev"] in ("progress", "produced")), default=0)
        for p in producers
    )


async def caught_up(cluster: NatsCluster, stream: str, wiped: str) -> dict[str, object]:
    """Wait (60 s at most) until every replica of ``stream``, the wiped server's too, is
    current; return each replica's state. Raises AssertionError."""
    nc = await nats.connect(servers=cluster.urls)
    try:
        jsm = nc.jsm()
        deadline = time.monotonic() + 60
        while True:
            info = await jsm.stream_info(stream)
            assert info.cluster is not None
            replicas = {str(info.cluster.leader): "leader"}
            for peer in info.cluster.replicas or []:
                replicas[str(peer.name)] = "current" if peer.current and not peer.lag else "behind"
            if len(replicas) == 3 and "behind" not in replicas.values():
                return dict(replicas)
            assert time.monotonic() < deadline, f"{wiped} did not catch up: {replicas}"
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


def wait_for_progress(producers: list[Agent], more_than: int, timeout: float = 60) -> int:
    """Wait until the producers together confirmed more than ``more_than``; return the total."""
    deadline = time.monotonic() + timeout
    while (total := confirmed_so_far(producers)) <= more_than:
        finished = sum(any(e["ev"] == "produced" for e in p.events) for p in producers)
        if finished == len(producers):
            return total
        assert time.monotonic() < deadline, f"no progress past {more_than} confirmed"
        time.sleep(0.1)
    return total


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_servers_and_gateways_killed_and_a_store_wiped_lose_nothing_confirmed(
    mesh: str, agents: list[Agent], nats_server: str
) -> None:
    with NatsCluster(3) as cluster:
        store = ("--store", ",".join(cluster.urls), "--replicas", "3")
        gateways = [Agent(relay_argv("relay", mesh, *store), f"gateway{n}") for n in range(2)]
        agents.extend(gateways)
        group = [
            Agent(relay_argv("consume", mesh, "--durable", "group"), f"consumer{n}")
            for n in range(2)
        ]
        agents.extend(group)
        producers = [
            Agent(
                relay_argv(
                    "produce", mesh, "--topic", f"s/p{n}", "--count", str(COUNT), "--budget", "300"
                ),
                f"producer{n}",
            )
            for n in range(3)
        ]
        agents.extend(producers)
        steps = []
        total = wait_for_progress(producers, 0)
        victim = cluster.servers[1]
        cluster.kill(victim)  # SIGKILL a nats-server: R3 streams keep a majority
        steps.append(f"nats-server {victim.name} SIGKILLed at {total} confirmed")
        total = wait_for_progress(producers, total)
        gateways[0].signal(signal.SIGKILL)  # a relay gateway: its clients fail over
        gateways[0].process.wait()
        steps.append(f"gateway0 SIGKILLed at {total} confirmed")
        total = wait_for_progress(producers, total)
        cluster.wipe(victim)  # its store is gone: it must catch up from the others
        cluster.start(victim)
        cluster.wait_ready(victim, timeout=60)
        steps.append(f"{victim.name} wiped and restarted at {total} confirmed")
        restarted = Agent(relay_argv("relay", mesh, *store), "gateway0-again")
        agents.append(restarted)
        total = confirmed_so_far(producers)
        steps.append(f"gateway0 restarted at {total} confirmed")
        assert total < 3 * COUNT, "the producers finished before the last step: raise COUNT"
        reports = [p.expect(lambda e: e["ev"] == "produced", timeout=300) for p in producers]
        confirmed = sum(r["confirmed"] for r in reports)
        assert confirmed == 3 * COUNT, reports  # every id was resent until confirmed
        want = {f"s/p{n}-{i}" for n in range(3) for i in range(COUNT)}
        deadline = time.monotonic() + 120
        while True:
            for consumer in group:
                collect(consumer)
            seen = [
                Counter(e["data"] for e in consumer.events if e["ev"] == "message")
                for consumer in group
            ]
            delivered = set().union(*seen)
            if delivered >= want or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        with meshq.Node("checker", mesh=mesh, interfaces=[LOOPBACK]) as node:
            found_by = time.monotonic() + 15
            while "meshq/relay/s/" not in node.services():
                assert time.monotonic() < found_by, "no relay gateway found"
                time.sleep(0.02)
            info = node.request("meshq/relay/s/", ["info"], timeout=10)
        assert isinstance(info, dict)
        replicas = asyncio.run(caught_up(cluster, js_stream_name(mesh, "s/"), victim.name))
    missing = want - delivered
    twice_in_one = sum(count - 1 for counts in seen for count in counts.values() if count > 1)
    across = len(set(seen[0]) & set(seen[1]))
    resent = sum(r["resent"] for r in reports)
    refused = sum(r["refused"] for r in reports)
    print(
        "\n".join(steps)
        + f"\nreplicas of the stream after the wipe: {replicas}"
        + f"\nconfirmed {confirmed}, stored {info['messages']}, delivered {len(delivered)}, "
        f"missing {len(missing)}, twice to one consumer {twice_in_one}, "
        f"to both consumers of the group {across}, resent by producers {resent} "
        f"({refused} after a refusal: {[r['refusals'] for r in reports]})"
    )
    assert not missing, f"{len(missing)} confirmed messages never delivered"
    assert info["messages"] == 3 * COUNT  # each resent message stored once
    assert twice_in_one == 0, "a consumer's application got a message twice"
