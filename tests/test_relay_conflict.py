"""Two relays claiming one stream: one owns it by a rule everyone applies, and it is never split.

Real relays (in this process, and as processes of their own), real
discovery on loopback; every publisher is a fresh node that may discover
either relay first.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import meshq
from tests.harness import Agent
from tests.test_relay import LOOPBACK, wait_for_relay
from tests.test_relay_failures import relay_argv, start


def streams_command(mesh: str) -> list[str]:
    """``meshq streams`` on this mesh, waiting up to 10 s for every relay to be found."""
    return [sys.executable, "-m", "meshq.cli", "streams", "--mesh", mesh, "--wait", "10",
            "--interface", *LOOPBACK]  # fmt: skip


def infos(node: meshq.Node, stream: str) -> dict[str, dict[str, object]]:
    """Every claiming relay's "info" by relay id."""
    found = node.gather(f"meshq/relay/{stream}", ["info"], timeout=5)
    assert not found.errors and not found.missing, found
    return {relay: info for relay, info in found.replies.items() if isinstance(info, dict)}


def test_the_oldest_claim_owns_a_stream_and_the_other_relay_refuses_it(
    mesh: str, tmp_path: Path
) -> None:
    with (
        meshq.Node("first", mesh=mesh, interfaces=LOOPBACK) as first_node,
        meshq.Node("second", mesh=mesh, interfaces=LOOPBACK) as second_node,
        meshq.Node("client", mesh=mesh, interfaces=LOOPBACK) as client,
    ):
        meshq.Relay(first_node, tmp_path / "first", ["orders/"])
        time.sleep(0.01)  # a later claim (ns clock): the order is what is tested
        meshq.Relay(second_node, tmp_path / "second", ["orders/"])
        wait_for_relay(client, "orders/", relays=2)
        publisher = meshq.DurablePublisher(client, timeout=10)
        assert [publisher.publish("orders/a", i) for i in range(20)] == list(range(1, 21))
        found = infos(client, "orders/")
        assert found[first_node.id]["messages"] == 20  # all in the owner
        assert found[second_node.id]["messages"] == 0  # none in the other
        # The other refuses what only the owner may take.
        deadline = time.monotonic() + 10
        while True:  # (once the second relay has settled: until then it refuses everything)
            opened = client.gather("meshq/relay/orders/", ["open", "c", "orders/", "first", 0])
            assert set(opened.replies) == {first_node.id}
            refusal = opened.errors[second_node.id].remote_message
            if not refusal.startswith("relay settling"):
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert refusal.startswith("relay does not own stream 'orders/'")
        with client.subscribe("orders/", durable="reader") as sub:
            assert [sub.recv(timeout=5).data for _ in range(20)] == list(range(20))
        deadline = time.monotonic() + 10  # the relays' conflict check runs every second
        while not all(info["conflict"] for info in infos(client, "orders/").values()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        shown = subprocess.run(
            streams_command(mesh),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.stdout.count("CONFLICT: stream 'orders/' is claimed by 2 relays") == 2
        assert f"relay {first_node.id[:8]} owns it" in shown.stdout
        assert "this relay owns it" in shown.stdout


def test_two_relay_processes_on_one_stream_never_split_it(
    mesh: str, tmp_path: Path, agents: list[Agent]
) -> None:
    relays = [
        start(
            agents,
            relay_argv("relay", mesh, LOOPBACK[0], "--data", str(tmp_path / f"r{n}")),
            f"relay{n}",
        )
        for n in range(2)
    ]
    for i in range(6):  # as six runs of `meshq pub s/9 x --durable`
        with meshq.Node(f"pub{i}", mesh=mesh, interfaces=LOOPBACK) as node:
            wait_for_relay(node, "s/")  # whichever relay it hears of first
            assert node.publish("s/9", f"x{i}", durable=True, timeout=10) is not None
    with meshq.Node("checker", mesh=mesh, interfaces=LOOPBACK) as node:
        wait_for_relay(node, "s/", relays=2)
        counts = sorted(int(info["messages"]) for info in infos(node, "s/").values())  # type: ignore[call-overload]
    assert counts == [0, 6]
    assert {r.id for r in relays}  # both ran throughout
