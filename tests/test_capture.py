"""What a packet capture on the LAN sees: CURVE hides the payload, NULL does not.

Two hosts in network namespaces on a bridge (198.18.0.0/15, needs root); a
raw AF_PACKET socket inside the bridge's namespace records every frame while
one host publishes a marker to the other.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Agent, Lan, agent_argv, can_make_namespaces
from tests.test_multiprocess import publish_until_received
from tests.test_security import Keys

CAPTURE = str(Path(__file__).with_name("capture.py"))


@pytest.fixture
def lan2() -> Iterator[Lan]:
    if not can_make_namespaces():
        pytest.skip("network namespaces need root and iproute2")
    with Lan(2) as lan:
        yield lan


@pytest.mark.parametrize("secure", [True, False])
def test_a_capture_on_the_bridge_sees_payloads_only_without_security(
    lan2: Lan, agents: list[Agent], mesh: str, tmp_path: Path, secure: bool
) -> None:
    keys = Keys(tmp_path)
    keys.admit("a", "b")
    keys.admit("b", "a")
    started = []
    for host, key in enumerate(("a", "b")):
        extra = ["--key", str(keys.secret[key]), "--allow", str(keys.allow[key])] if secure else []
        argv = agent_argv(f"node-{key}", mesh, lan2.addresses[host], *extra)
        # The harness name prefixes the published payloads; unlike the node
        # name it is not in the mDNS records, which anyone can read.
        agent = Agent(lan2.argv(host, argv), f"payload{host}")
        agents.append(agent)
        started.append(agent)
    sender, reader = started
    reader.expect(lambda e: e["ev"] == "joined" and e["name"] == "node-a", timeout=15)
    sender.expect(lambda e: e["ev"] == "joined" and e["name"] == "node-b", timeout=15)
    capture_file = tmp_path / "bridge.raw"
    in_switch = ["ip", "netns", "exec", lan2.switch, sys.executable, CAPTURE]
    capture = subprocess.Popen(
        [*in_switch, "any", str(capture_file), "30", str(8 * 1024 * 1024)],  # 30 s, 8 MiB at most
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert capture.stdout is not None and capture.stdout.readline().strip() == "ready"
        reader.send(cmd="subscribe", prefix="secret/")
        reader.expect(lambda e: e["ev"] == "subscribed", timeout=10)
        message = publish_until_received(sender, "secret/payload", reader)
        assert isinstance(message["data"], str) and message["data"].startswith(sender.name)
    finally:
        assert capture.stdin is not None
        capture.stdin.close()  # ends the capture
        capture.wait(timeout=35)
    captured = capture_file.read_bytes()
    payload = str(message["data"]).encode()
    assert b"secret/payload" in captured or secure  # the topic is payload too
    if secure:
        # The handshake was on the wire (its greeting names the mechanism)...
        assert b"CURVE" in captured
        # ...but neither the message nor its topic.
        assert payload not in captured and b"secret/payload" not in captured
        assert b"payload0-" not in captured
        # (Node names are not secret: mDNS records carry them, docs/SECURITY.md.)
    else:
        assert b"NULL" in captured and payload in captured
