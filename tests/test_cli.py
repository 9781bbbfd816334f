"""The command line and the examples, run as a user would run them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import meshq
from meshq.patterns import Publisher

ROOT = Path(__file__).resolve().parent.parent
MESHQ = [sys.executable, "-m", "meshq.cli"]


def test_demo_runs_a_mesh_that_hears_itself() -> None:
    result = subprocess.run(
        [*MESHQ, "demo", "--duration", "2"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all nodes heard each other" in result.stdout
    for name in ("alpha", "bravo", "charlie"):
        assert f"joined: {name}" in result.stdout


def test_pub_reaches_sub_across_processes(mesh: str) -> None:
    common = ["--mesh", mesh, "--interface", "127.0.0.1"]
    sub = subprocess.Popen(
        [*MESHQ, "sub", "cli/", "--count", "1", "--timeout", "30", *common],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # pub waits until the subscriber is connected, so one message is enough.
        pub = subprocess.run(
            [*MESHQ, "pub", "cli/greeting", "hello mesh", "--timeout", "20", *common],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert pub.returncode == 0, pub.stderr
        out, err = sub.communicate(timeout=30)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    assert sub.returncode == 0, err
    assert "cli/greeting" in out and "b'hello mesh'" in out


def test_peers_lists_the_nodes_on_a_mesh(mesh: str) -> None:
    with meshq.Node("listed", mesh=mesh, interfaces=["127.0.0.1"]):
        result = subprocess.run(
            [*MESHQ, "peers", "--mesh", mesh, "--interface", "127.0.0.1", "--expect", "1"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 0, result.stderr
    assert "1 peer(s)" in result.stdout and "listed" in result.stdout


def test_cli_reports_bad_input_without_a_traceback() -> None:
    result = subprocess.run(
        [*MESHQ, "peers", "--interface", "not-an-ip"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "not an IPv4 interface address" in result.stderr and "Traceback" not in result.stderr


def test_patterns_publisher_sends_on_its_topic(mesh: str) -> None:
    with meshq.Node("p", mesh=mesh, interfaces=["127.0.0.1"]) as node, node.subscribe("t/") as sub:
        publisher = Publisher(node, "t/fixed")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            publisher.send({"v": 1})
            try:
                message = sub.recv(timeout=0.02)
                break
            except meshq.Timeout:
                continue
        else:
            raise AssertionError("nothing received")
        assert (message.topic, message.data) == ("t/fixed", {"v": 1})


def test_peers_watch_prints_joins_as_they_happen(mesh: str) -> None:
    watch = subprocess.Popen(
        [
            *MESHQ,
            "peers",
            "--watch",
            "--duration",
            "20",
            "--mesh",
            mesh,
            "--interface",
            "127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        assert "watching mesh" in watch.stdout.readline()
        with meshq.Node("visitor", mesh=mesh, interfaces=["127.0.0.1"]):
            line = watch.stdout.readline()  # blocks until the join is printed (or the run ends)
        assert line.startswith("joined") and "visitor" in line
    finally:
        watch.kill()
        watch.wait()
        for stream in (watch.stdout, watch.stderr):
            if stream is not None:
                stream.close()


def test_interfaces_come_from_the_environment_when_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from meshq.interfaces import resolve_interfaces

    monkeypatch.setenv("MESHQ_INTERFACES", "127.0.0.1, 127.0.0.1")
    assert resolve_interfaces(None) == ("127.0.0.1",)
    assert resolve_interfaces(["127.0.0.2"]) == ("127.0.0.2",)  # explicit wins
    monkeypatch.setenv("MESHQ_INTERFACES", "")
    assert "127.0.0.1" not in resolve_interfaces(None)  # default: non-loopback only


def test_call_and_services_reach_a_provider(mesh: str) -> None:
    common = ["--mesh", mesh, "--interface", "127.0.0.1"]
    with meshq.Node("adder", mesh=mesh, interfaces=["127.0.0.1"]) as node:
        node.serve("add", lambda data: sum(data))  # type: ignore[call-overload]
        call = subprocess.run(
            [*MESHQ, "call", "add", "[1, 2, 3]", "--json", *common],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert call.returncode == 0, call.stderr
        assert call.stdout.strip() == "6"
        listing = subprocess.run(
            [*MESHQ, "services", "--expect", "1", *common],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert listing.returncode == 0, listing.stderr
        assert "add" in listing.stdout and "adder" in listing.stdout
    missing = subprocess.run(
        [*MESHQ, "call", "add", "x", "--wait", "0.2", *common],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 1 and "no provider" in missing.stderr


def run_example(name: str) -> str:
    """Run ``examples/<name>.py`` as a user would; return what it printed (exit 0 asserted)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{name}.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_example_pubsub_sensors_runs() -> None:
    assert run_example("pubsub_sensors").count("sensors/temp") == 5


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("calculator", "RemoteError ZeroDivisionError"),
        ("durable_orders", "every order exactly once, in order"),
        ("pipeline", "completed 100, failed 0, lost 0"),
        ("pipeline_sink", "sink received 100 results, sum of squares 328350"),
        ("scatter_gather", "no answer from: slow"),
        ("secure_mesh", "sensor refused"),
    ],
)
def test_example_runs(name: str, expected: str) -> None:
    assert expected in run_example(name)


def test_relay_streams_and_replay_commands(mesh: str, tmp_path: Path) -> None:
    common = ["--mesh", mesh, "--interface", "127.0.0.1"]
    relay = subprocess.Popen(
        [
            *MESHQ,
            "relay",
            "--data",
            str(tmp_path),
            "--streams",
            "cli/",
            "--duration",
            "60",
            *common,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert relay.stdout is not None
        assert "storing ['cli/']" in relay.stdout.readline()

        def run(*argv: str) -> str:
            result = subprocess.run(
                [*MESHQ, *argv, *common], capture_output=True, text=True, timeout=30
            )
            assert result.returncode == 0, result.stdout + result.stderr
            return result.stdout

        assert "last seq 3" in run("pub", "cli/x", "stored", "--durable", "--count", "3")
        assert "cli/" in run("streams") and "seq 1..3" in run("streams")
        replayed = run("replay", "cli/", "--from", "2")
        assert "#2 " in replayed and "#3 " in replayed and "#1 " not in replayed
        assert "b'stored'" in replayed
    finally:
        relay.send_signal(signal.SIGINT)  # Ctrl-C: the relay closes cleanly
        assert relay.wait(timeout=10) == 0
        for stream in (relay.stdout, relay.stderr):
            if stream is not None:
                stream.close()
