"""meshq doctor: the pure checks, then whole runs inside network namespaces.

The namespace tests build the LAN each finding is about (tests/harness.Lan)
and run ``meshq doctor --json`` inside a host, as an operator would.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from meshq.doctor import (
    Finding,
    MdnsSurvey,
    MeshqInstance,
    check_interfaces,
    check_keys,
    check_multicast,
    check_ports,
    check_reachability,
    format_findings,
)
from meshq.hostnet import Interface, multicast_route, parse_routes
from meshq.security import write_key_pair
from tests.harness import Lan, can_make_namespaces

ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010012C6\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000012C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth1\t000000E0\t00000000\t0001\t0\t0\t0\t000000F0\t0\t0\t0
"""


def _iface(name: str, address: str, kind: str = "physical", carrier: bool = True) -> Interface:
    ports = None if kind != "bridge" else 0 if not carrier else 1
    return Interface(name, ((address, 24),), kind, "up" if carrier else "down", carrier, ports)


def test_routes_parse_and_a_default_route_carries_multicast() -> None:
    routes = parse_routes(ROUTES)
    assert [(str(r.network), r.device) for r in routes] == [
        ("0.0.0.0/0", "eth0"),
        ("198.18.0.0/24", "eth0"),
        ("224.0.0.0/4", "eth1"),
    ]
    eth0 = multicast_route(routes, "eth0")
    eth1 = multicast_route(routes, "eth1")
    assert eth0 is not None and eth0.prefix_len == 0
    assert eth1 is not None and str(eth1.network) == "224.0.0.0/4"
    assert multicast_route(routes, "eth2") is None


def test_an_interface_without_a_multicast_route_is_a_warning_with_the_fix() -> None:
    interfaces = [_iface("eth0", "198.18.0.1"), _iface("eth1", "198.19.0.1")]
    routes = parse_routes(ROUTES.replace("eth1\t000000E0", "eth9\t000000E0"))
    findings = check_multicast(interfaces, ["198.18.0.1", "198.19.0.1"], routes)
    assert [f.status for f in findings] == ["pass", "warn"]
    assert findings[1].fix == "ip route add 224.0.0.0/4 dev eth1"


def test_a_dead_bridge_and_a_virtual_interface_without_peers_are_named() -> None:
    interfaces = [
        _iface("eth0", "198.18.0.1"),
        _iface("docker0", "198.19.0.1", "bridge", carrier=False),
        _iface("veth12", "198.19.1.1", "veth"),
        _iface("veth34", "198.19.2.1", "veth"),
    ]
    chosen = ["198.18.0.1", "198.19.0.1", "198.19.1.1", "198.19.2.1"]
    behind = MeshqInstance("peer", "ab" * 16, "m", ("198.19.2.7",), 7600, None)
    findings = check_interfaces(interfaces, chosen, None, MdnsSurvey(nodes=[behind]))
    warned = [f.summary.split()[0] for f in findings if f.status == "warn"]
    assert warned == ["docker0", "veth12"]  # veth34 has a node behind it
    assert all("--interface 198.18.0.1 --interface 198.19.2.1" in f.fix for f in findings[1:])


def test_a_fixed_port_already_bound_fails() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        findings = check_ports(["127.0.0.1"], {"control": taken, "publish": 0})
    assert [(f.status, f.summary) for f in findings] == [
        ("fail", f"control port {taken} on 127.0.0.1: already in use")
    ]
    assert check_ports(["127.0.0.1"], {"control": 0})[0].status == "pass"


def test_keys_readable_by_others_and_peers_missing_from_the_allowlist(tmp_path: Path) -> None:
    public, secret = write_key_pair("me", tmp_path)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "me.key").write_text(public.read_text())
    (allowed / "junk.key").write_text("not a key\n")
    _, stranger = write_key_pair("stranger", tmp_path / "other")
    stranger_key = stranger.read_text().split('public-key = "')[1][:40]
    survey = MdnsSurvey(
        nodes=[MeshqInstance("x", "cd" * 16, "m", ("198.18.0.9",), 1, stranger_key)]
    )

    good = check_keys(str(secret), [str(allowed)], survey, "m")
    assert [f.status for f in good] == ["pass", "warn", "pass", "warn"]
    assert "junk.key" in good[1].summary and stranger_key in good[3].summary

    os.chmod(secret, 0o644)
    bad = check_keys(str(secret), [str(allowed)], MdnsSurvey(), "m")
    assert bad[0].status == "fail" and "0644" in bad[0].summary
    assert check_keys(None, [str(allowed)], MdnsSurvey(), "m")[0].status == "fail"


def test_seeds_and_advertised_endpoints_that_do_not_answer_are_named() -> None:
    with socket.socket() as listening, socket.socket() as closed:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        up, down = listening.getsockname()[1], closed.getsockname()[1]
        node = MeshqInstance("half", "ab" * 16, "m", ("127.0.0.1",), down, None)
        findings = check_reachability(
            MdnsSurvey(nodes=[node]), "m", 1.0, [f"tcp://127.0.0.1:{up}", f"tcp://127.0.0.1:{down}"]
        )
    assert [(f.status, f.summary) for f in findings] == [
        ("pass", "1 endpoint(s) answered"),
        ("fail", f"seed tcp://127.0.0.1:{down} does not answer (Connection refused)"),
        ("fail", f"half advertises endpoint(s) that do not answer: tcp://127.0.0.1:{down} "
                 "(Connection refused)"),
    ]  # fmt: skip


def test_the_report_names_each_finding_and_its_fix() -> None:
    findings = [Finding("ports", "fail", "control port 1 taken", "free it")]
    assert format_findings(findings).splitlines() == [
        "FAIL  ports         control port 1 taken",
        "                    fix: free it",
        "0 pass, 0 warn, 1 fail",
    ]
    assert json.loads(format_findings(findings, as_json=True))[0]["fix"] == "free it"


# ----------------------------------------------------------------------
# Whole runs inside network namespaces

NODE = """
import sys
import meshq
node = meshq.Node("{name}", mesh="{mesh}")
print("ready", node.control_endpoints, flush=True)
sys.stdin.read()
node.close()
"""


@pytest.fixture
def lan() -> Iterator[Lan]:
    if not can_make_namespaces():
        pytest.skip("network namespaces need root and iproute2")
    with Lan(3) as built:
        yield built


@pytest.fixture
def nodes() -> Iterator[list[subprocess.Popen[str]]]:
    """Node processes of a test; closed through stdin, else killed by PID."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        try:
            assert process.stdin is not None
            process.stdin.close()
            process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MESHQ_INTERFACES"}


def start_node(
    lan: Lan,
    nodes: list[subprocess.Popen[str]],
    host: int,
    name: str,
    mesh: str,
    interfaces: str | None = None,
) -> list[str]:
    """A node on ``host`` (the default interfaces, or MESHQ_INTERFACES); its control endpoints."""
    code = NODE.format(name=name, mesh=mesh)
    env = _env() if interfaces is None else {**_env(), "MESHQ_INTERFACES": interfaces}
    process = subprocess.Popen(
        lan.argv(host, [sys.executable, "-c", code]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    nodes.append(process)
    assert process.stdout is not None
    line = process.stdout.readline()  # the node prints once it is up (or exits: "")
    assert line.startswith("ready"), f"node {name} did not start"
    return [part.strip("(),'") for part in line.split()[1:]]


def doctor(lan: Lan, host: int, *args: str, interfaces: str | None = None) -> subprocess.Popen[str]:
    env = _env() if interfaces is None else {**_env(), "MESHQ_INTERFACES": interfaces}
    return subprocess.Popen(
        lan.argv(host, [sys.executable, "-m", "meshq.cli", "doctor", "--wait", "2", *args]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def findings_of(process: subprocess.Popen[str]) -> list[dict[str, Any]]:
    out, err = process.communicate(timeout=60)
    assert out, err
    found = list(json.loads(out))
    print(format_findings([Finding(**f) for f in found]))  # for the issue note (pytest -s)
    return found


def having(findings: Sequence[dict[str, Any]], check: str, status: str) -> list[dict[str, Any]]:
    return [f for f in findings if f["check"] == check and f["status"] == status]


def test_a_host_without_a_multicast_route_gets_the_route_to_add(lan: Lan) -> None:
    subprocess.run(["ip", "-n", lan.hosts[0], "route", "del", "224.0.0.0/4"], check=True)
    without = doctor(lan, 0, "--interface", lan.addresses[0], "--json")
    with_route = doctor(lan, 1, "--interface", lan.addresses[1], "--json")
    bare, fine = findings_of(without), findings_of(with_route)
    [warning] = having(bare, "multicast", "warn")
    assert "eth0 (198.18.0.1) has no route for 224.0.0.0/4" in warning["summary"]
    assert warning["fix"] == "ip route add 224.0.0.0/4 dev eth0"
    assert having(fine, "multicast", "pass") and not having(fine, "multicast", "warn")
    # Both probes crossed the LAN at the same time: each doctor saw the other's.
    assert any("1 other doctor probe" in f["summary"] for f in having(fine, "mdns", "pass"))


def test_a_dead_docker_bridge_is_named_and_its_address_unreachable(
    lan: Lan, nodes: list[subprocess.Popen[str]], mesh: str
) -> None:
    host = lan.hosts[0]
    for args in (
        ["link", "add", "docker0", "type", "bridge"],
        ["addr", "add", "198.19.0.1/24", "dev", "docker0"],
        ["link", "set", "docker0", "up"],
    ):
        subprocess.run(["ip", "-n", host, *args], check=True)
    # Default interfaces now leave an empty bridge out; a host configured
    # (say by an older meshq, or by hand) to use docker0 is what doctor catches.
    configured = f"{lan.addresses[0]},198.19.0.1"
    endpoints = start_node(lan, nodes, 0, "boxed", mesh, interfaces=configured)
    port = endpoints[0].rpartition(":")[2]
    assert f"tcp://198.19.0.1:{port}" in endpoints

    on_host = doctor(lan, 0, "--mesh", mesh, "--json", interfaces=configured)
    from_peer = doctor(lan, 1, "--mesh", mesh, "--interface", lan.addresses[1], "--json")
    local, remote = findings_of(on_host), findings_of(from_peer)

    [dead] = having(local, "interfaces", "warn")
    assert dead["summary"].startswith(
        "docker0 (198.19.0.1/24) is a bridge interface with no ports attached"
    )
    assert dead["fix"].startswith("pass --interface 198.18.0.1")
    [unreachable] = having(remote, "reachability", "warn")
    assert f"tcp://198.19.0.1:{port}" in unreachable["summary"]
    assert "tcp://198.18.0.1" not in unreachable["summary"]
    assert "peers on its other networks still reach it" in unreachable["summary"]


def test_two_meshes_on_one_lan_are_both_named(
    lan: Lan, nodes: list[subprocess.Popen[str]], mesh: str
) -> None:
    other = mesh + "-other"
    start_node(lan, nodes, 0, "ours", mesh)
    start_node(lan, nodes, 1, "theirs", other)
    findings = findings_of(
        doctor(lan, 2, "--mesh", mesh, "--interface", lan.addresses[2], "--json")
    )

    [ours] = [f for f in having(findings, "mdns", "pass") if f["summary"].startswith("mesh ")]
    assert ours["summary"].startswith(f"mesh {mesh!r}: 1 node(s): ours-")
    [theirs] = having(findings, "mdns", "warn")
    assert f"other meshq meshes on this LAN: {other!r} (1 node(s): theirs-" in theirs["summary"]
    assert mesh in theirs["fix"]
    # The node of our mesh answered: connected to, and its clock compared.
    assert having(findings, "reachability", "pass")[0]["summary"] == "1 endpoint(s) answered"
    [clock] = having(findings, "clocks", "pass")
    assert clock["summary"].startswith("ours: clock ")


def test_the_command_exits_1_on_a_failure_and_names_the_taken_port() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "meshq.cli", "doctor", "--interface", "127.0.0.1", "--no-mdns",
             "--mesh", "doctor-exit-test", "--wait", "0.5", "--publish-port", str(taken)],
            capture_output=True, text=True, timeout=60, env=_env(),
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"FAIL  ports         publish port {taken} on 127.0.0.1: already in use" in result.stdout
    assert "PASS  mdns          not checked: --no-mdns (seeds only)" in result.stdout
