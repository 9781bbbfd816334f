"""Soak: 16 nodes on 4 namespace hosts, formed and torn down 10 times; every pair meshes.

Run with ``pytest -m soak`` (left out of the default run: a few minutes,
root needed). Each round starts 16 node processes at once, 4 per host,
with mDNS on the host's address, waits up to ROUND_TIMEOUT for every node
to see all 15 others alive, closes them all, and in the end fails naming
the pairs that did not mesh, per round. This is
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
    """Each round starts 16 node processes at once (as a restart of the mesh would)."""
    if not can_make_namespaces():
        pytest.skip("network namespaces need root and iproute2")
    failures: list[str] = []
    with Lan(HOSTS) as lan:
        for round_number in range(ROUNDS):
            mesh = f"soak-{secrets.token_hex(4)}"
            agents: list[Agent] = []
            try:
                for host in range(HOSTS):
                    argv = [sys.executable, SOAK_AGENT, "--address", lan.addresses[host]]
                    for index in range(NODES_PER_HOST):
                        agents.append(Agent(lan.argv(host, argv), f"h{host + 1}n{index + 1}"))
                for agent in agents:
                    agent.send(
                        cmd="form",
                        round=round_number,
                        mesh=mesh,
                        nodes=1,
                        peers=HOSTS * NODES_PER_HOST - 1,
                        timeout=ROUND_TIMEOUT,
                    )
                reports = [
                    agent.expect(event("formed", round_number), timeout=ROUND_TIMEOUT + 30)
                    for agent in agents
                ]
                assert sum(len(report["nodes"]) for report in reports) == HOSTS * NODES_PER_HOST
                missing = unmeshed(reports)
                print(
                    f"round {round_number}: meshed in {max(r['seconds'] for r in reports):.1f} s,"
                    f" {len(missing)} pairs missing, links remade"
                    f" {sum(r['links_remade'] for r in reports)}, control messages dropped"
                    f" {sum(r['control_dropped'] for r in reports)}"
                )
                if missing:
                    failures.append(
                        f"round {round_number}: {len(missing)} unmeshed (node, peer):"
                        f" {missing[:10]}"
                    )
                for agent in agents:
                    agent.send(cmd="teardown", round=round_number)
                for agent in agents:
                    agent.expect(event("torn_down", round_number), timeout=60)
            finally:
                for agent in agents:
                    agent.stop()
    assert not failures, failures
