"""LANs where hosts share an address (a docker0 on every docker host), in namespaces.

Each scenario is a small network of namespaces (tests/harness.Network) with
one node per host on its *default* interfaces, and says whom each node must
see, at which address. :func:`run` starts the nodes, waits for the mesh,
watches it for a while and counts joins and leaves. tests/test_lan.py
asserts on the outcome; run this module to print the counts:

    sudo .venv/bin/python -m tests.lan_scenarios --runs 5 --window 25
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tests.harness import Agent, Link, Network, agent_argv

LAN = "198.18.91"  # the shared LAN, 198.18.91.0/24
LAN2 = "198.18.92"  # a second LAN, for the multi-homed host
DOCKER = "198.18.93.1/24"  # the same address on several hosts, as docker0 has
FIXED_PORT = "7600"


@dataclass(frozen=True)
class Scenario:
    """Hosts (their links in interface order) and the peers each must see, by LAN address."""

    name: str
    lans: int
    hosts: tuple[tuple[Link, ...], ...]
    #: For host i: peer name -> the address its chosen control endpoint must have.
    expected: tuple[dict[str, str], ...]
    extra: tuple[str, ...] = ()  # agent options for every node

    def host_name(self, index: int) -> str:
        return f"h{index + 1}"


def _eth(index: int) -> Link:
    return Link("eth0", f"{LAN}.{index + 1}/24", 0)


def _dock() -> Link:
    return Link("dock0", DOCKER, None)


def _all_see_all(hosts: int) -> tuple[dict[str, str], ...]:
    return tuple(
        {f"h{other + 1}": f"{LAN}.{other + 1}" for other in range(hosts) if other != host}
        for host in range(hosts)
    )


def dock0_first() -> Scenario:
    """Two hosts with ``dock0`` (same address on both) listed before eth0."""
    return Scenario("dock0-first", 1, ((_dock(), _eth(0)), (_dock(), _eth(1))), _all_see_all(2))


def dock0_last() -> Scenario:
    """Two hosts with ``dock0`` listed after eth0, the usual order."""
    return Scenario("dock0-last", 1, ((_eth(0), _dock()), (_eth(1), _dock())), _all_see_all(2))


def dock0_fixed_port() -> Scenario:
    """Three hosts with ``dock0``, every node on control port 7600 (one config file)."""
    hosts = tuple((_eth(i), _dock()) for i in range(3))
    return Scenario("dock0-fixed-port", 1, hosts, _all_see_all(3), ("--port", FIXED_PORT))


def multi_homed() -> Scenario:
    """h1 on two LANs plus a portless ``dock0``; h2 on the first LAN, h3 on the second.

    h2 and h3 cannot reach each other and must never join each other,
    although each hears of the other through h1's gossip.
    """
    h1 = (
        Link("eth0", f"{LAN}.1/24", 0),
        Link("eth1", f"{LAN2}.1/24", 1),
        _dock(),
    )
    h2 = (Link("eth0", f"{LAN}.2/24", 0),)
    h3 = (Link("eth0", f"{LAN2}.3/24", 1),)
    expected = ({"h2": f"{LAN}.2", "h3": f"{LAN2}.3"}, {"h1": f"{LAN}.1"}, {"h1": f"{LAN2}.1"})
    return Scenario("multi-homed", 2, (h1, h2, h3), expected)


SCENARIOS = {
    scenario.name: scenario
    for scenario in (dock0_first(), dock0_last(), dock0_fixed_port(), multi_homed())
}


@dataclass
class Seen:
    """What one node saw during a run."""

    name: str
    joins: Counter[str] = field(default_factory=Counter)
    leaves: Counter[str] = field(default_factory=Counter)
    #: Leave reasons, counted.
    reasons: Counter[str] = field(default_factory=Counter)
    #: Addresses of the endpoints peers joined from.
    joined_at: dict[str, set[str]] = field(default_factory=dict)
    #: node.peers() at the end: (name, endpoint) pairs.
    peers: list[tuple[str, str]] = field(default_factory=list)
    #: Seconds from start until every expected peer had joined, or None.
    formed_after: float | None = None


@dataclass
class Outcome:
    scenario: str
    seen: list[Seen]

    def problems(self, expected: Sequence[dict[str, str]]) -> list[str]:
        """Every way this run broke the promise; empty when it kept it.

        The promise: each node sees every expected peer exactly once, at its
        LAN address, with one join and no leave, and sees no one else.
        """
        found = []
        for seen, wanted in zip(self.seen, expected, strict=True):
            who = seen.name
            if seen.joins != Counter(dict.fromkeys(wanted, 1)):
                found.append(f"{who} joins {dict(seen.joins)}, expected one each of {wanted}")
            if seen.leaves:
                found.append(f"{who} leaves {dict(seen.leaves)} ({dict(seen.reasons)})")
            for name, addresses in seen.joined_at.items():
                if name in wanted and addresses != {wanted[name]}:
                    found.append(f"{who} joined {name} at {sorted(addresses)}, not {wanted[name]}")
            table = sorted((name, _host(endpoint)) for name, endpoint in seen.peers)
            if table != sorted(wanted.items()):
                found.append(f"{who} peers() {table}, expected {sorted(wanted.items())}")
        return found

    def counts(self) -> dict[str, dict[str, int]]:
        """Joins and leaves per node, summed over its peers."""
        return {
            seen.name: {"joins": sum(seen.joins.values()), "leaves": sum(seen.leaves.values())}
            for seen in self.seen
        }


def _host(endpoint: str) -> str:
    return endpoint[len("tcp://") :].rpartition(":")[0]


def run(
    scenario: Scenario,
    mesh: str,
    window: float,
    form_within: float = 15.0,
    then: Callable[[list[Agent]], None] | None = None,
) -> Outcome:
    """Start one node per host, wait up to ``form_within`` s for the mesh, watch ``window`` s.

    Never raises for a mesh that misbehaves: the outcome says what happened.
    ``then`` gets the agents after the window (for traffic across hosts; it
    may raise). Every namespace and process is gone when it returns.
    """
    with Network(scenario.lans, scenario.hosts) as net:
        agents: list[Agent] = []
        try:
            for index in range(len(scenario.hosts)):
                name = scenario.host_name(index)
                argv = agent_argv(name, mesh, None, *scenario.extra)
                agents.append(Agent(net.argv(index, argv), name))
            started = time.monotonic()
            deadline = started + form_within
            formed: list[float | None] = []
            for agent, wanted in zip(agents, scenario.expected, strict=True):
                formed.append(_wait_for_joins(agent, set(wanted), deadline, started))
            # Watch for the window after the mesh formed (or failed to form).
            until = time.monotonic() + window
            for agent in agents:
                agent.watch(lambda event: False, until)
            seen = []
            for agent, formed_after in zip(agents, formed, strict=True):
                agent.send(cmd="peers")
                table = agent.expect(lambda event: event["ev"] == "peers", timeout=10)
                seen.append(_tally(agent, table["peers"], formed_after))
            if then is not None:
                then(agents)
            return Outcome(scenario.name, seen)
        finally:
            for agent in agents:
                agent.stop()


def _wait_for_joins(agent: Agent, names: set[str], deadline: float, started: float) -> float | None:
    missing = set(names)

    def joined_one(event: dict[str, object]) -> bool:
        if event["ev"] == "joined":
            missing.discard(str(event["name"]))
        return not missing

    for event in agent.events:
        joined_one(event)
    if missing and agent.watch(joined_one, deadline) is None:
        return None
    return time.monotonic() - started


def _tally(agent: Agent, table: list[dict[str, str]], formed_after: float | None) -> Seen:
    seen = Seen(agent.name, formed_after=formed_after)
    for event in agent.events:
        if event["ev"] == "joined":
            seen.joins[event["name"]] += 1
            seen.joined_at.setdefault(event["name"], set()).add(_host(event["endpoint"]))
        elif event["ev"] == "left":
            seen.leaves[event["name"]] += 1
            seen.reasons[event["reason"]] += 1
    seen.peers = [(peer["name"], peer["endpoint"]) for peer in table]
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--window", type=float, default=25.0)
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    args = parser.parse_args()
    import secrets

    for name in args.scenarios:
        scenario = SCENARIOS[name]
        broken = 0
        for attempt in range(args.runs):
            outcome = run(scenario, f"lan-{secrets.token_hex(4)}", args.window)
            problems = outcome.problems(scenario.expected)
            broken += bool(problems)
            record = {
                "scenario": name,
                "run": attempt + 1,
                "ok": not problems,
                "counts": outcome.counts(),
                "formed_after": {s.name: s.formed_after for s in outcome.seen},
                "reasons": {s.name: dict(s.reasons) for s in outcome.seen},
                "problems": problems,
            }
            print(json.dumps(record), flush=True)
        print(json.dumps({"scenario": name, "broken": broken, "runs": args.runs}), flush=True)


if __name__ == "__main__":
    main()
