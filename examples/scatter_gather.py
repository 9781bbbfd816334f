"""Scatter-gather: ask every provider of a service at once, take what comes back in time.

    python examples/scatter_gather.py

Three nodes offer "stats" (their own made-up load figures); one of them is
too slow to answer within the deadline. The caller asks them all at once
with ``node.gather`` and prints the replies and who stayed silent.
"""

from __future__ import annotations

import threading
import time

import meshq

LOOPBACK = ["127.0.0.1"]


def main() -> int:
    mesh = f"example-{time.time_ns()}"  # a fresh mesh: never mixes with other runs
    release = threading.Event()  # lets the slow node finish once we are done
    nodes = [meshq.Node(name, mesh=mesh, interfaces=LOOPBACK) for name in ("a", "b", "slow")]
    try:
        nodes[0].serve("stats", lambda data: {"node": "a", "load": 0.3})
        nodes[1].serve("stats", lambda data: {"node": "b", "load": 0.7})
        nodes[2].serve("stats", lambda data: release.wait(5) and {"node": "slow"})
        with meshq.Node("caller", mesh=mesh, interfaces=LOOPBACK) as caller:
            caller.wait_for_service("stats", 3, timeout=10)  # discovery takes a moment
            names = {node.id: node.name for node in nodes}
            result = caller.gather("stats", None, timeout=0.5)
            release.set()
            for provider, reply in sorted(result.replies.items(), key=lambda kv: names[kv[0]]):
                print(f"{names[provider]}: {reply}")
            print("no answer from:", ", ".join(names[p] for p in result.missing) or "nobody")
            return 0 if len(result.replies) == 2 and len(result.missing) == 1 else 1
    finally:
        release.set()
        for node in nodes:
            node.close()


if __name__ == "__main__":
    raise SystemExit(main())
