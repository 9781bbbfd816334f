"""A wait for replies that has run out returns; it never becomes a wait without end.

The durable producers of the relay-kill chaos test (tests/test_relay_failures.py)
stalled for good on a loaded machine: Requester.wait read the clock twice,
a preempted thread got a negative time left, and zmq polls a negative
timeout forever, here for a reply from a relay that had been SIGKILLed.
"""

from __future__ import annotations

import threading

import meshq
from meshq.services import ReplyTo

LOOPBACK = ["127.0.0.1"]
SAFETY = 30.0  # seconds after which the held reply is sent anyway, so a broken build ends


def test_a_wait_past_its_deadline_returns_without_a_reply(mesh: str) -> None:
    held: list[ReplyTo] = []
    arrived = threading.Event()

    def hold(data: object, reply_to: ReplyTo) -> None:
        held.append(reply_to)  # answered only at the end: a provider that went silent
        arrived.set()

    with (
        meshq.Node("provider", mesh=mesh, interfaces=LOOPBACK) as provider,
        meshq.Node("caller", mesh=mesh, interfaces=LOOPBACK) as caller,
    ):
        provider.serve_deferred("silent", hold)
        caller.wait_for_service("silent", timeout=15)
        future = caller.request_async("silent", 1, timeout=60)
        assert arrived.wait(15)
        requester = caller.runtime.requester()
        assert requester.poll_limit(-0.01) == 0  # ms: "no time left" is not "forever"
        safety = threading.Timer(SAFETY, lambda: held[0].send("late"))
        safety.start()
        try:
            requester.pump(-0.01)  # the time left, read a moment too late
            # Returned without the reply: the wait never outlived its deadline.
            assert not future.ready
        finally:
            safety.cancel()
            held[0].send("done")
        assert future.result(timeout=15) == "done"
