"""The command line and the examples, run as a user would run them."""

from __future__ import annotations

import argparse
import re
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
# The commands' short default waits are for a person at a terminal; a loaded
# CI machine may need longer to discover the mesh. Each such command returns
# as soon as it finds what it waits for, so a long cap costs nothing.
PATIENT = ["--wait", "20"]  # within the 30 s each run may take


def test_demo_runs_a_mesh_that_hears_itself() -> None:
    result = subprocess.run(
        [*MESHQ, "demo", "--duration", "2"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all nodes heard each other" in result.stdout
    for name in ("alpha", "bravo", "charlie"):
        assert f"joined: {name}" in result.stdout
    lines = result.stdout.split("\n\nNext:\n")[0].splitlines()
    for line in lines[1:-1]:  # between the banner and the verdict: one node's line each
        assert re.fullmatch(r"\[(alpha|bravo|charlie) *\] [^\[]*", line), line
    assert "\nNext:\n" in result.stdout and "examples/pubsub_sensors.py" in result.stdout


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
            [
                *MESHQ,
                "peers",
                "--mesh",
                mesh,
                "--interface",
                "127.0.0.1",
                "--expect",
                "1",
                *PATIENT,
            ],
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
            [*MESHQ, "call", "add", "[1, 2, 3]", "--json", *PATIENT, *common],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert call.returncode == 0, call.stderr
        assert call.stdout.strip() == "6"
        listing = subprocess.run(
            [*MESHQ, "services", "--expect", "1", *PATIENT, *common],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert listing.returncode == 0, listing.stderr
        assert "add" in listing.stdout and "adder" in listing.stdout
        # Every node answers meshq/introspect: listed, it would be on every line.
        assert listing.stdout.startswith("1 service(s)") and "introspect" not in listing.stdout
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
        ("typed_orders", "billed [2, 3], total 5, messages missed 0"),
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

        stored = run("pub", "cli/x", "stored", "--durable", "--count", "3", "--timeout", "20")
        assert "last seq 3" in stored
        assert "cli/" in run("streams", *PATIENT) and "seq 1..3" in run("streams", *PATIENT)
        replayed = run("replay", "cli/", "--from", "2", *PATIENT)
        assert "#2 " in replayed and "#3 " in replayed and "#1 " not in replayed
        assert "b'stored'" in replayed
        unslashed = subprocess.run(
            [*MESHQ, "replay", "cli", *common], capture_output=True, text=True, timeout=30
        )
        assert unslashed.returncode == 2 and "did you mean 'cli/'?" in unslashed.stderr
    finally:
        relay.send_signal(signal.SIGINT)  # Ctrl-C: the relay closes cleanly
        assert relay.wait(timeout=10) == 0
        for stream in (relay.stdout, relay.stderr):
            if stream is not None:
                stream.close()


# --- issue 10: the command line as a new user meets it -------------------


def meshq_cli(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``python -m meshq ARGV``, as `python -m meshq` users run it; never hangs."""
    return subprocess.run(
        [sys.executable, "-m", "meshq", *argv], capture_output=True, text=True, timeout=timeout
    )


def subcommands() -> dict[str, argparse.ArgumentParser]:
    from meshq.cli import build_parser

    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_help_is_plain_text_and_hides_nothing_internal() -> None:
    result = meshq_cli("--help")
    assert result.returncode == 0, result.stderr
    for wrong in ("==SUPPRESS==", "``", "demo-node"):
        assert wrong not in result.stdout
    for command in subcommands():
        assert f"    {command} " in result.stdout


def test_every_option_with_a_default_shows_it_in_help() -> None:
    checked = 0
    for name, parser in subcommands().items():
        text = parser.format_help()
        # The help of each option: from its line to the next option's line.
        blocks = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
        for action in parser._actions:
            if not action.option_strings or action.default in (None, False, [], argparse.SUPPRESS):
                continue
            (block,) = [b for b in blocks if b.startswith(action.option_strings[0])]
            assert "default" in block, f"meshq {name} {action.option_strings[0]}: {block!r}"
            checked += 1
    assert checked > 20


def test_version_and_python_dash_m() -> None:
    result = meshq_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"meshq {meshq.__version__}"
    assert "usage: meshq" in meshq_cli("peers", "--help").stdout


def test_every_command_that_joins_a_mesh_takes_the_common_options() -> None:
    # README: "Each takes `--mesh`, ... and `--help`", except the commands it names.
    readme = (ROOT / "README.md").read_text()
    (line,) = [p for p in readme.split("\n\n") if p.startswith("Every command takes `--help`")]
    options = re.findall(r"`(--[a-z-]+)`", line)
    excluded = set(re.findall(r"`meshq ([a-z]+)`", line))
    assert {"--mesh", "--interface", "--seed", "--key", "--allow", "--help"} <= set(options)
    assert excluded == {"demo", "keygen"}
    for name, parser in subcommands().items():
        if name in excluded:
            continue
        taken = {flag for action in parser._actions for flag in action.option_strings}
        assert set(options) <= taken, f"meshq {name} lacks {set(options) - taken}"


def test_pub_with_no_subscriber_says_nothing_was_sent_and_how_to_send(mesh: str) -> None:
    common = ["--mesh", mesh, "--interface", "127.0.0.1"]
    refused = meshq_cli("pub", "cli/alone", "hello", "--timeout", "0.3", *common)
    assert refused.returncode == 1
    assert "nothing sent" in refused.stderr and "--subscribers 0" in refused.stderr
    assert "meshq sub cli/alone" in refused.stderr
    anyway = meshq_cli("pub", "cli/alone", "hello", "--subscribers", "0", *common)
    assert anyway.returncode == 0, anyway.stderr
    assert "published 1 message(s) on 'cli/alone' to 0 subscriber(s)" in anyway.stdout


def test_invalid_json_names_the_argument() -> None:
    for command in ("pub", "call"):
        result = meshq_cli(command, "cli/x", "{celsius: 21}", "--json", "--interface", "127.0.0.1")
        assert result.returncode == 2
        assert "argument DATA: not valid JSON" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_replay_from_zero_is_refused_clearly() -> None:
    result = meshq_cli("replay", "orders/", "--from", "0", "--interface", "127.0.0.1")
    assert result.returncode == 2
    assert "argument --from: sequence numbers start at 1, got 0" in result.stderr


def test_a_public_key_given_as_the_secret_key_is_named_first(tmp_path: Path) -> None:
    assert meshq_cli("keygen", "display", "--dir", str(tmp_path)).returncode == 0
    public = tmp_path / "display.key"
    result = meshq_cli("peers", "--key", str(public), "--wait", "0", "--interface", "127.0.0.1")
    assert result.returncode == 2
    assert "this is a public key" in result.stderr and "display.key_secret" in result.stderr
    assert "chmod" not in result.stderr


def test_interface_errors_give_cli_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    result = meshq_cli("peers", "--interface", "0.0.0.0", "--wait", "0")
    assert result.returncode == 2
    assert "--interface 127.0.0.1" in result.stderr and "interfaces=" not in result.stderr
    monkeypatch.setenv("MESHQ_INTERFACES", "127.0.0.1,eth0")
    result = meshq_cli("peers", "--wait", "0")
    assert result.returncode == 2
    assert "MESHQ_INTERFACES='127.0.0.1,eth0'" in result.stderr and "'eth0'" in result.stderr


def test_sigterm_closes_a_command_with_a_goodbye(mesh: str) -> None:
    with meshq.Node("watcher", mesh=mesh, interfaces=["127.0.0.1"]) as watcher:
        sub = subprocess.Popen(
            [*MESHQ, "sub", "cli/", "--timeout", "60", "--mesh", mesh, "--interface", "127.0.0.1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert sub.stdout is not None
            assert "subscribed to" in sub.stdout.readline()  # its node is up
            watcher.wait_for_peers(1, timeout=20)
            sub.send_signal(signal.SIGTERM)
            left = next(
                (
                    event
                    for event in watcher.events(timeout=20)
                    if event.kind is meshq.EventKind.LEFT and event.peer.name == "meshq-sub"
                ),
                None,
            )
            assert left is not None and left.reason == "bye"  # not "timeout" 3 s later
            assert sub.wait(timeout=20) == 128 + signal.SIGTERM
        finally:
            if sub.poll() is None:
                sub.kill()
            sub.communicate()
