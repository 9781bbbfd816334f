"""Hosts that share an address (docker0 on every docker host) still mesh, without flapping.

Each scenario of tests/lan_scenarios.py is a small network of namespaces
with one node per host on its default interfaces; every run must keep the
promise: each node sees every other exactly once, at its LAN address, with
one join and no leave. The normal suite runs each once and watches a few
seconds past the heartbeat timeout; the ``soak`` tests (``pytest -m soak``)
run each 5 times and watch 25 s.
Needs root; namespaces and processes are removed by tests/harness.Network
even when a test fails.
"""

from __future__ import annotations

import signal

import pytest

from meshq import MeshConfig
from tests import lan_scenarios
from tests.harness import Agent, Link, Network, agent_argv, can_make_namespaces, joined
from tests.test_multiprocess import publish_until_received

pytestmark = pytest.mark.skipif(
    not can_make_namespaces(), reason="network namespaces need root and iproute2"
)

# Past the heartbeat timeout, so a link that only one side holds, or a peer
# timed out and rejoined, shows as a leave within the window.
SHORT_WINDOW = MeshConfig().gone_after + 1.0
SOAK_WINDOW = 25.0

SCENARIOS = [
    pytest.param(lan_scenarios.dock0_first(), id="dock0-first"),
    pytest.param(lan_scenarios.dock0_last(), id="dock0-last"),
    pytest.param(lan_scenarios.dock0_fixed_port(), id="dock0-fixed-port"),
    pytest.param(lan_scenarios.multi_homed(), id="multi-homed"),
]


def check(scenario: lan_scenarios.Scenario, mesh: str, runs: int, window: float) -> None:
    failures = []
    for attempt in range(runs):
        outcome = lan_scenarios.run(scenario, f"{mesh}-{attempt}", window)
        problems = outcome.problems(scenario.expected)
        if problems:
            failures.append(f"run {attempt + 1}: {problems}")
    assert not failures, f"{len(failures)} of {runs} runs broke the promise: {failures}"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_node_sees_every_other_once_at_its_lan_address(
    scenario: lan_scenarios.Scenario, mesh: str
) -> None:
    # One run here; the repeated runs are the soak test's (5 runs of 25 s
    # each, in CI's soak step): three short ones cost `make test` a minute.
    check(scenario, mesh, runs=1, window=SHORT_WINDOW)


@pytest.mark.soak
@pytest.mark.timeout(600)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_node_sees_every_other_once_for_25_seconds(
    scenario: lan_scenarios.Scenario, mesh: str
) -> None:
    check(scenario, mesh, runs=5, window=SOAK_WINDOW)


def exchange(agents: list[Agent]) -> None:
    """Every node receives what every other one publishes."""
    for receiver in agents:
        receiver.send(cmd="subscribe", prefix="lan/")
        receiver.expect(lambda e: e["ev"] == "subscribed", timeout=10)
    for publisher in agents:
        for receiver in agents:
            if receiver is not publisher:
                message = publish_until_received(publisher, f"lan/{publisher.name}", receiver)
                assert message["sender"] == publisher.id


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scenario", SCENARIOS[:3])
def test_messages_cross_hosts_that_share_a_docker_address(
    scenario: lan_scenarios.Scenario, mesh: str
) -> None:
    outcome = lan_scenarios.run(scenario, mesh, window=0.0, then=exchange)
    assert not outcome.problems(scenario.expected)


def start_alone(net: Network, agents: list[Agent], mesh: str, *env: str) -> Agent:
    argv = agent_argv("solo", mesh, None, "--log", "INFO")
    agent = Agent(net.argv(0, ["env", *env, *argv] if env else argv), "solo")
    agents.append(agent)
    return agent


def interface_log(agent: Agent) -> str:
    return " ".join(
        e["message"] for e in agent.events if e["ev"] == "log" and e["logger"] == "meshq.interfaces"
    )


def test_an_empty_docker0_is_left_out_and_the_log_says_so(mesh: str, agents: list[Agent]) -> None:
    links = [Link("docker0", "198.18.93.1/24", None), Link("eth0", "198.18.91.1/24", 0)]
    with Network(1, [links]) as net:
        solo = start_alone(net, agents, mesh)
        assert solo.ready["interfaces"] == ["198.18.91.1"]
        said = interface_log(solo)
        assert "left out" in said and "docker0 198.18.93.1" in said, said
        solo.stop()


def test_a_docker0_with_a_container_is_ranked_last_and_the_log_says_so(
    mesh: str, agents: list[Agent]
) -> None:
    links = [
        Link("docker0", "198.18.93.1/24", None, plugged=True),
        Link("eth0", "198.18.91.1/24", 0),
    ]
    with Network(1, [links]) as net:
        solo = start_alone(net, agents, mesh)
        assert solo.ready["interfaces"] == ["198.18.91.1", "198.18.93.1"]
        said = interface_log(solo)
        assert "ranked last: docker0 198.18.93.1" in said, said
        solo.stop()


def test_meshq_interfaces_still_chooses_a_docker0(mesh: str, agents: list[Agent]) -> None:
    links = [Link("docker0", "198.18.93.1/24", None), Link("eth0", "198.18.91.1/24", 0)]
    with Network(1, [links]) as net:
        solo = start_alone(net, agents, mesh, "MESHQ_INTERFACES=198.18.93.1")
        assert solo.ready["interfaces"] == ["198.18.93.1"]
        solo.stop()


@pytest.mark.timeout(120)
def test_a_restart_on_a_docker_host_replaces_the_old_peer_at_once(
    mesh: str, agents: list[Agent]
) -> None:
    """Three docker hosts on port 7600: a restarted h3 is a restart, its neighbours are not."""
    scenario = lan_scenarios.dock0_fixed_port()
    # A long timeout, so that only restart detection can remove the old h3.
    patient = (*scenario.extra, "--gone-after", "30")
    with Network(scenario.lans, scenario.hosts) as net:

        def start(host: int) -> Agent:
            name = scenario.host_name(host)
            agent = Agent(net.argv(host, agent_argv(name, mesh, None, *patient)), name)
            agents.append(agent)
            return agent

        h1, h2, h3 = (start(host) for host in range(3))
        for agent in (h1, h2, h3):
            for other in {"h1", "h2", "h3"} - {agent.name}:
                agent.expect(joined(other), timeout=15)
        old_id = h3.id
        h3.signal(signal.SIGKILL)
        h3.process.wait()
        again = start(2)
        for survivor in (h1, h2):
            gone = survivor.expect(lambda e: e["ev"] == "left" and e["id"] == old_id, timeout=15)
            assert gone["reason"] == "restarted"
            survivor.expect(lambda e: e["ev"] == "joined" and e["id"] == again.id, timeout=15)
            # Nobody else left: h1 and h2 share the docker endpoint with the new h3 too.
            assert [e["name"] for e in survivor.events if e["ev"] == "left"] == ["h3"]
