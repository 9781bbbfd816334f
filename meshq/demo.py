"""``meshq demo``: a live mesh of several processes on one interface.

Each process runs one node that finds the others by mDNS, publishes on
``demo/<name>`` at a capped rate and subscribes to ``demo/``. Every second it
prints its peers and message rates; after ``duration`` seconds it says whom
it heard from and exits. The parent starts the processes (each is
``python -m meshq.demo NAME ...``), relays their output line by line and
returns 0 only if every node heard every other node.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from .errors import Timeout
from .node import Node
from .peers import Peer

__all__ = ["run_demo", "run_demo_node"]

_NAMES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
_TICK = 0.01  # seconds between publish batches
_JOIN_TIMEOUT = 10.0


def run_demo(nodes: int, duration: float, rate: int, mesh: str | None, interface: str) -> int:
    """Start ``nodes`` processes and wait for them; 0 if all succeeded."""
    if not 2 <= nodes <= len(_NAMES):
        raise ValueError(f"--nodes must be 2..{len(_NAMES)}")
    mesh = mesh or f"demo-{os.getpid()}"
    print(f"meshq demo: {nodes} nodes on {interface}, mesh {mesh!r}, {duration:g} s", flush=True)
    children = []
    for name in _NAMES[:nodes]:
        command = [sys.executable, "-m", "meshq.demo", name]
        command += ["--mesh", mesh, "--interface", interface, "--nodes", str(nodes)]
        command += ["--duration", str(duration), "--rate", str(rate)]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        children.append(child)
    output = threading.Lock()  # one line at a time, never two run together
    relays = [threading.Thread(target=_relay, args=(child.stdout, output)) for child in children]
    for relay in relays:
        relay.start()
    failed = 0
    try:
        for child in children:
            try:
                failed += child.wait(timeout=duration + _JOIN_TIMEOUT + 10) != 0
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
                failed += 1
    except KeyboardInterrupt:
        # The terminal sent SIGINT to the children too; let them say goodbye.
        for child in children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        failed = len(children)
    for relay in relays:
        relay.join()
    print("meshq demo: " + ("all nodes heard each other" if not failed else f"{failed} failed"))
    print(_next_steps(), flush=True)
    return 0 if not failed else 1


def _relay(stream: IO[bytes] | None, output: threading.Lock) -> None:
    if stream is None:
        return
    for line in stream:
        text = line.decode(errors="replace")
        with output:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
            sys.stdout.flush()


def _next_steps() -> str:
    """Where to go after the demo, with commands that run as printed."""
    meshq = _command("meshq", Path(sys.executable).parent / "meshq")
    python = _command("python", Path(sys.executable))
    steps = [
        (f"{meshq} sub 'sensors/' --interface 127.0.0.1", "in one terminal, then"),
        (f"{meshq} pub sensors/temp 21.5 --interface 127.0.0.1", "in another"),
        (f"{python} examples/pubsub_sensors.py", "publish/subscribe in one file (examples/)"),
        (f"{meshq} --help", "every command"),
        ("README.md", "what meshq guarantees, and how"),
    ]
    width = max(len(command) for command, _ in steps)
    return "\nNext:\n" + "\n".join(f"  {c:{width}}   {what}" for c, what in steps)


def _command(name: str, path: Path) -> str:
    """``name`` if the shell finds this very program by it, else its (relative) path."""
    found = shutil.which(name)
    if found is not None and os.path.abspath(found) == os.path.abspath(path):
        return name
    if not path.exists():
        return name
    relative = os.path.relpath(path)
    return path.as_posix() if relative.startswith("..") else relative


def run_demo_node(
    name: str, mesh: str, interface: str, nodes: int, duration: float, rate: int
) -> int:
    """One demo process: publish, receive, report every second. 0 if it heard everyone."""

    output = threading.Lock()

    def say(text: str) -> None:
        # Peer callbacks speak from the event thread: print writes the text
        # and the newline separately, so two unlocked lines run together.
        with output:
            print(f"[{name:7}] {text}", flush=True)

    started = time.monotonic()
    with Node(name, mesh=mesh, interfaces=[interface]) as node:

        @node.on_peer_joined
        def joined(peer: Peer) -> None:
            say(f"joined: {peer.name} ({peer.id[:8]}) at {peer.endpoint}")

        @node.on_peer_left
        def left(peer: Peer) -> None:
            say(f"left:   {peer.name} ({peer.id[:8]})")

        subscription = node.subscribe("demo/")
        try:
            node.wait_for_peers(nodes - 1, timeout=_JOIN_TIMEOUT)
            say(f"mesh of {nodes} formed {time.monotonic() - started:.3f} s after start")
        except Timeout:
            say(f"only {len(node.peers())} of {nodes - 1} peers after {_JOIN_TIMEOUT} s")
        names = {node.id: name}
        heard: collections.Counter[str] = collections.Counter()
        batch = max(1, int(rate * _TICK))
        sent = received = 0
        window_sent = window_received = window_from_peers = 0
        end = time.monotonic() + duration
        next_report = time.monotonic() + 1.0
        next_batch = time.monotonic()
        while time.monotonic() < end:
            for _ in range(batch):
                sent += 1
                node.publish(f"demo/{name}", sent.to_bytes(8, "big"))
            window_sent += batch
            next_batch += _TICK
            while True:  # receive until the next batch is due
                wait = next_batch - time.monotonic()
                if wait <= 0:
                    break
                try:
                    message = subscription.recv(timeout=wait)
                except Timeout:
                    break
                received += 1
                window_received += 1
                heard[message.sender] += 1
                window_from_peers += message.sender != node.id
            now = time.monotonic()
            if now >= next_report:
                names.update({peer.id: peer.name for peer in node.peers()})
                publishers = sum(1 for sender in heard if sender != node.id)
                say(
                    f"peers={len(node.peers())}  sent {window_sent:,} msg/s  "
                    f"received {window_received:,} msg/s "
                    f"({window_from_peers:,} from {publishers} peer(s), the rest our own)"
                )
                window_sent = window_received = window_from_peers = 0
                next_report = now + 1.0
        subscription.close()
        names.update({peer.id: peer.name for peer in node.peers()})
        others = sorted(names.get(sender, sender[:8]) for sender in heard if sender != node.id)
        heard_from = ", ".join(others) or "nobody"
        say(f"done: sent {sent:,}, received {received:,}; heard from {heard_from}")
        return 0 if len(others) >= nodes - 1 else 1


def _node_main(argv: Sequence[str] | None = None) -> int:
    """``python -m meshq.demo NAME ...``: one demo process, started by :func:`run_demo`."""
    parser = argparse.ArgumentParser(prog="python -m meshq.demo")
    parser.add_argument("name")
    parser.add_argument("--mesh", required=True)
    parser.add_argument("--interface", required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--rate", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        return run_demo_node(
            args.name, args.mesh, args.interface, args.nodes, args.duration, args.rate
        )
    except KeyboardInterrupt:
        return 130  # Ctrl-C reached every process; the with-block said goodbye


if __name__ == "__main__":
    sys.exit(_node_main())
