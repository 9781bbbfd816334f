"""Messages published just before close() reach a connected subscriber.

A real publisher process on loopback: it waits for the subscriber, publishes
50 messages and closes at once (goodbye included). The subscriber reads only
after it has seen the publisher leave, the case a reviewer saw lose all 50:
the subscriber dropped its link to a departed publisher with the messages
still queued in it, unread.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading

import meshq

LOOPBACK = ["127.0.0.1"]
WAIT = 20.0  # seconds any one condition may take on a loaded machine

PUBLISHER = textwrap.dedent(
    """
    import sys
    import meshq

    mesh, seed = sys.argv[1], sys.argv[2]
    node = meshq.Node("pub", mesh=mesh, interfaces=["127.0.0.1"], seeds=[seed], discovery=False)
    node.wait_for_subscribers("t/", 1, timeout=20)
    for i in range(50):
        node.publish("t/x", i)
    node.close()
    """
)


def run_publisher(mesh: str, seed: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", PUBLISHER, mesh, seed])


def test_fifty_published_before_close_are_all_received_after_the_publisher_left(
    mesh: str,
) -> None:
    with meshq.Node("sub", mesh=mesh, interfaces=LOOPBACK, discovery=False) as node:
        left = threading.Event()
        node.on_peer_left(lambda peer: left.set())
        with node.subscribe("t/") as sub:
            publisher = run_publisher(mesh, node.control_endpoints[0])
            try:
                node.wait_for_peers(1, timeout=WAIT)  # and connects sub to it meanwhile
                assert left.wait(WAIT), "the publisher never said goodbye"
                assert publisher.wait(WAIT) == 0
                got = [sub.recv(timeout=WAIT).data for _ in range(50)]
            finally:
                publisher.kill()
                publisher.wait()
            assert got == list(range(50))
            assert node.stats()["messages_missed"] == 0


def test_asyncio_fifty_published_before_close_are_all_received(mesh: str) -> None:
    async def scenario() -> list[object]:
        async with meshq.AsyncNode("sub", mesh=mesh, interfaces=LOOPBACK, discovery=False) as node:
            left = threading.Event()
            node.on_peer_left(lambda peer: left.set())
            with node.subscribe("t/") as sub:
                publisher = run_publisher(mesh, node.control_endpoints[0])
                try:
                    await node.wait_for_peers(1, timeout=WAIT)
                    loop = asyncio.get_running_loop()
                    assert await loop.run_in_executor(None, left.wait, WAIT)
                    await asyncio.sleep(0)  # the loop applies the departure first
                    return [(await sub.recv(timeout=WAIT)).data for _ in range(50)]
                finally:
                    publisher.kill()
                    publisher.wait()

    assert asyncio.run(scenario()) == list(range(50))
