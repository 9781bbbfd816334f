"""Ctrl-C ends a wait with no timeout that blocks inside libzmq.

``Subscription.recv()`` with no timeout waits in the SUB socket's own
recv; ``RequestFuture.result()`` and ``Node.wait_any`` with no timeout
wait in the reply socket's recv or a zmq poll. A real SIGINT to a real
process blocked there must raise KeyboardInterrupt in it (pyzmq sees the
interrupted call, EINTR, and runs Python's handler), and the ``with
Node`` blocks around the wait must then close, so the process ends.
"""

from __future__ import annotations

import signal
import textwrap
import time
from pathlib import Path

import pytest

from tests.harness import python_child

#: The child's exit code once KeyboardInterrupt reached it and its nodes closed.
INTERRUPTED = 42

CHILD = textwrap.dedent(
    f"""
    import sys
    import meshq

    mesh, what = sys.argv[1], sys.argv[2]
    try:
        with (
            meshq.Node("caller", mesh=mesh, interfaces=["127.0.0.1"]) as node,
            meshq.Node("provider", mesh=mesh, interfaces=["127.0.0.1"]) as provider,
        ):
            provider.serve_deferred("silent", lambda data, reply_to: None)  # never answers
            node.wait_for_service("silent", timeout=20)
            if what == "recv":
                with node.subscribe("never/") as subscription:
                    print("waiting", flush=True)
                    subscription.recv()
            else:
                future = node.request_async("silent", b"", timeout=600, retries=0)
                print("waiting", flush=True)
                if what == "result":
                    future.result()
                else:
                    node.wait_any([future])
            print("returned", flush=True)
    except KeyboardInterrupt:
        print("interrupted", node.closed, provider.closed, flush=True)
        sys.exit({INTERRUPTED})
    """
)


def wait_until_asleep_in_poll(pid: int, timeout: float = 20.0) -> None:
    """Wait until the main thread of ``pid`` sleeps in poll (libzmq's wait).

    /proc/PID/wchan names the kernel function a sleeping task waits in; a
    kernel that does not say ("0") leaves only the task's state: asleep.
    """
    deadline = time.monotonic() + timeout
    while not asleep_in_poll(pid):
        assert time.monotonic() < deadline, "the child's main thread never slept in poll"
        time.sleep(0.01)


def asleep_in_poll(pid: int) -> bool:
    where = Path(f"/proc/{pid}/wchan").read_text()
    if where != "0":
        return "poll" in where
    state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    return state == "S"


@pytest.mark.parametrize("what", ["recv", "result", "wait_any"])
def test_ctrl_c_ends_a_wait_without_timeout_inside_libzmq(mesh: str, what: str) -> None:
    with python_child(CHILD, mesh, what) as child:
        assert child.stdout is not None and child.stdout.readline() == "waiting\n"
        wait_until_asleep_in_poll(child.pid)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
        assert (child.returncode, out) == (INTERRUPTED, "interrupted True True\n"), err
        assert "Traceback" not in err
