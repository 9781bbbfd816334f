"""Soak: 16 nodes on 4 namespace hosts, formed and torn down 10 times; every pair meshes.

Run with ``pytest -m soak`` (left out of the default run: a few minutes,
root needed). Each round starts 4 nodes per host with mDNS on the host's
address, waits up to ROUND_TIMEOUT for every node to see all 15 others
alive, and fails naming the pairs that did not mesh, per round. This is
the check for "a pair that never meshes" (docs/PROTOCOL.md 7.8).
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Agent, Lan, can_make_namespaces

HOSTS = 4
NODES_PER_HOST = 4
ROUNDS = 10
ROUND_TIMEOUT = 30.0  # seconds for a round's mesh to form; far above what it takes
SOAK_AGENT = str(Path(__file__).with_name("soak_agent.py"))

pytestmark = pytest.mark.soak


def unmeshed(reports: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(node, peer it does not see alive) for every pair that did not mesh."""
    seen = {node: set(peers) for report in reports for node, peers in report["nodes"].items()}
    ids = sorted(seen)
    return [(a[:8], b[:8]) for a in ids for b in ids if a != b and b not in seen[a]]


def event(name: str, round_number: int) -> Callable[[dict[str, Any]], bool]:
    return lambda e: bool(e["ev"] == name and e["round"] == round_number)


def test_the_check_names_a_missing_pair() -> None:
    reports = [{"nodes": {"a" * 32: ["b" * 32], "b" * 32: []}}]
    assert unmeshed(reports) == [("b" * 8, "a" * 8)]


@pytest.mark.timeout(600)
def test_sixteen_nodes_on_four_hosts_mesh_fully_every_round() -> None:
    if not can_make_namespaces():
        pytest.skip("network namespaces need root and iproute2")
    failures: list[str] = []
    with Lan(HOSTS) as lan:
        agents: list[Agent] = []
        try:
            for host in range(HOSTS):
                argv = [sys.executable, SOAK_AGENT, "--address", lan.addresses[host]]
                agents.append(Agent(lan.argv(host, argv), f"host{host + 1}"))
            for round_number in range(ROUNDS):
                mesh = f"soak-{secrets.token_hex(4)}"
                for agent in agents:
                    agent.send(
                        cmd="form",
                        round=round_number,
                        mesh=mesh,
                        nodes=NODES_PER_HOST,
                        peers=HOSTS * NODES_PER_HOST - 1,
                        timeout=ROUND_TIMEOUT,
                    )
                reports = [
                    agent.expect(event("formed", round_number), timeout=ROUND_TIMEOUT + 30)
                    for agent in agents
                ]
                assert sum(len(report["nodes"]) for report in reports) == HOSTS * NODES_PER_HOST
                missing = unmeshed(reports)
                if missing:
                    remade = sum(report["links_remade"] for report in reports)
                    failures.append(
                        f"round {round_number}: {len(missing)} unmeshed (node, peer): "
                        f"{missing[:10]}; links remade {remade}"
                    )
                for agent in agents:
                    agent.send(cmd="teardown", round=round_number)
                for agent in agents:
                    agent.expect(event("torn_down", round_number), timeout=60)
        finally:
            for agent in agents:
                agent.stop()
    assert not failures, failures
