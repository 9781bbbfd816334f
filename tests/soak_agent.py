"""Several nodes of one host in one process, formed and torn down on command (soak test).

Prints JSON lines on stdout: ``ready`` once, then for each ``form`` command
``formed`` (every node's alive peers, how long the mesh took, and the
nodes' ``links_remade`` and ``control_dropped`` counts) and for each
``teardown`` command ``torn_down``. Reads commands on stdin:
``{"cmd": "form", "round": 3, "mesh": "m", "nodes": 4, "peers": 15,
"timeout": 30}`` starts ``nodes`` nodes with mDNS on this host's address
and waits until each sees ``peers`` alive peers (or the timeout passes);
``{"cmd": "teardown", "round": 3}`` closes them; ``{"cmd": "close"}`` or
the end of stdin ends the process.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

import meshq
from meshq.peers import PeerState


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"ev": event, **fields}) + "\n")
    sys.stdout.flush()


def form(address: str, command: dict[str, Any]) -> list[meshq.Node]:
    started = time.monotonic()
    nodes = [
        meshq.Node(f"soak-{address}-{i}", mesh=command["mesh"], interfaces=[address])
        for i in range(command["nodes"])
    ]
    deadline = started + command["timeout"]
    for node in nodes:
        try:
            node.wait_for_peers(command["peers"], timeout=max(0.0, deadline - time.monotonic()))
        except meshq.Timeout:
            pass  # reported below: the test names the pairs that did not mesh
    emit(
        "formed",
        round=command["round"],
        seconds=time.monotonic() - started,
        nodes={
            node.id: sorted(p.id for p in node.peers() if p.state is PeerState.ALIVE)
            for node in nodes
        },
        links_remade=sum(node.stats().get("links_remade", 0) for node in nodes),
        control_dropped=sum(node.stats().get("control_dropped", 0) for node in nodes),
    )
    return nodes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # stderr is read only at the end
    emit("ready", id=f"host-{args.address}")
    nodes: list[meshq.Node] = []
    try:
        for line in sys.stdin:
            command = json.loads(line)
            if command["cmd"] == "form":
                nodes = form(args.address, command)
            elif command["cmd"] == "teardown":
                for node in nodes:
                    node.close()
                nodes = []
                emit("torn_down", round=command["round"])
            elif command["cmd"] == "close":
                break
    finally:
        for node in nodes:
            node.close()


if __name__ == "__main__":
    main()
