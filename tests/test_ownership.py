"""Thread ownership: objects whose socket one thread owns refuse every other thread.

A ZeroMQ socket touched by two threads at once aborts the process inside
libzmq (``Bad address (src/fq.cpp:56)``); meshq raises RuntimeError, naming
the owner thread, before any such call reaches libzmq.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import meshq

LOOPBACK = ["127.0.0.1"]

# Run in a child process: if the check failed, libzmq would abort the whole
# process, and the test sees that as an exit status instead of losing pytest.
_FLOOD_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading, time
    import meshq

    mesh = sys.argv[1]
    FLOOD = 200_000  # messages at most, and 20 s at most
    with meshq.Node("flood", mesh=mesh, interfaces=["127.0.0.1"], discovery=False) as node:
        sub = node.subscribe("flood/")
        stop = threading.Event()
        published = [0]

        def publish() -> None:
            deadline = time.monotonic() + 20.0
            while not stop.is_set() and published[0] < FLOOD and time.monotonic() < deadline:
                node.publish("flood/x", b"y" * 100)
                published[0] += 1

        errors: list[str] = []
        other_received = [0]

        def read_from_the_wrong_thread() -> None:
            for _ in range(2_000):  # bounded in count
                try:
                    sub.recv(timeout=0.001)
                    other_received[0] += 1
                except RuntimeError as exc:
                    errors.append(str(exc))
                except meshq.MeshqError:
                    pass
            try:
                sub.close()
            except RuntimeError as exc:
                errors.append("close: " + str(exc))

        publisher = threading.Thread(target=publish, name="publisher")
        intruder = threading.Thread(target=read_from_the_wrong_thread, name="intruder")
        publisher.start()
        received = 0
        deadline = time.monotonic() + 20.0
        while received < 1_000 and time.monotonic() < deadline:  # flood under way
            try:
                sub.recv(timeout=0.1)
                received += 1
            except meshq.Timeout:
                pass
        intruder.start()
        while intruder.is_alive() and time.monotonic() < deadline:  # both threads read
            try:
                sub.recv(timeout=0.01)
                received += 1
            except meshq.Timeout:
                pass
        intruder.join(10)
        stop.set()
        publisher.join(10)
        after = 0
        while after < 10 and time.monotonic() < deadline + 5:  # the owner still reads
            node.publish("flood/after", b"z")
            try:
                sub.recv(timeout=0.05)
                after += 1
            except meshq.Timeout:
                pass
        sub.close()
        print(json.dumps({
            "errors": len(errors),
            "first": errors[0] if errors else "",
            "close": [e for e in errors if e.startswith("close: ")],
            "other_received": other_received[0],
            "received": received,
            "after": after,
        }))
    """
)


def test_two_threads_reading_one_subscription_under_a_flood(mesh: str) -> None:
    child = subprocess.run(
        [sys.executable, "-c", _FLOOD_SCRIPT, mesh],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    outcome = json.loads(child.stdout.strip().splitlines()[-1])
    assert outcome["errors"] == 2_001  # every recv() and the close() of the intruder
    assert outcome["other_received"] == 0  # nothing reached the wrong thread
    assert "MainThread" in outcome["first"] and "intruder" in outcome["first"]
    assert len(outcome["close"]) == 1
    assert outcome["received"] >= 1_000 and outcome["after"] == 10


def test_a_request_future_belongs_to_the_thread_that_made_it(mesh: str) -> None:
    with meshq.Node("owner", mesh=mesh, interfaces=LOOPBACK, discovery=False) as node:
        node.serve("echo", lambda data: data)
        deadline = time.monotonic() + 10
        while "echo" not in node.services():  # offered locally: appears at once
            assert time.monotonic() < deadline
            time.sleep(0.01)
        future = node.request_async("echo", b"ping", timeout=5.0, retries=0)
        caught: list[BaseException] = []

        def meddle() -> None:
            for call in (future.result, future.done):
                try:
                    call()
                except BaseException as exc:
                    caught.append(exc)

        thread = threading.Thread(target=meddle, name="meddler")
        thread.start()
        thread.join(10)
        assert len(caught) == 2
        for exc in caught:
            assert isinstance(exc, RuntimeError)
            assert "MainThread" in str(exc) and "meddler" in str(exc) and "echo" in str(exc)
        assert future.result() == b"ping"  # the owner is unaffected
        # Once it is done, the answer is plain data: any thread may read it.
        results: list[object] = []
        reader = threading.Thread(target=lambda: results.append(future.result()))
        reader.start()
        reader.join(10)
        assert results == [b"ping"]


def test_closing_a_subscription_from_another_thread_is_refused(mesh: str) -> None:
    with meshq.Node("closer", mesh=mesh, interfaces=LOOPBACK, discovery=False) as node:
        sub = node.subscribe("x/")
        caught: list[BaseException] = []

        def close_it() -> None:
            try:
                sub.close()
            except BaseException as exc:
                caught.append(exc)

        thread = threading.Thread(target=close_it, name="closer-thread")
        thread.start()
        thread.join(10)
        assert len(caught) == 1 and isinstance(caught[0], RuntimeError)
        assert not sub.closed
        sub.close()
        assert sub.closed
        with pytest.raises(meshq.Closed):
            sub.recv(timeout=0.1)
