"""Issue 10's rough edges: wrong-type arguments and the logs a new user sees.

Real nodes on loopback, real keys and a real relay; logs captured from the
``meshq`` loggers as an application would see them.
"""

from __future__ import annotations

import errno
import logging
import re
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

import meshq
from meshq.gatekeeper import Gatekeeper
from meshq.security import KeyBook, Rejection, write_key_pair

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = ["127.0.0.1"]
MECHANISM_MISMATCH = zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH


def wait_until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


# --- interfaces -------------------------------------------------------------


def test_a_string_for_interfaces_is_a_type_error_with_the_fix() -> None:
    with pytest.raises(TypeError, match=r"interfaces must be a list .* interfaces=\['127.0.0.1'\]"):
        meshq.Node("n", interfaces="127.0.0.1")  # type: ignore[arg-type]  # the mistake under test


@pytest.mark.parametrize("item", [b"127.0.0.1", 127, None])
def test_an_address_that_is_not_a_str_is_a_type_error(item: object) -> None:
    with pytest.raises(TypeError, match=r"interfaces: each address must be a str"):
        meshq.Node("n", interfaces=[item])  # type: ignore[list-item]


@pytest.mark.parametrize("address", ["0.0.0.0", "224.0.0.251", "255.255.255.255"])
def test_an_address_peers_cannot_be_told_is_refused_before_binding(address: str) -> None:
    with pytest.raises(ValueError, match=rf"interfaces: {re.escape(address)} is not the address"):
        meshq.Node("n", interfaces=[address])


def test_a_bad_meshq_interfaces_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHQ_INTERFACES", "127.0.0.1, eth0")
    with pytest.raises(ValueError, match=r"MESHQ_INTERFACES='127.0.0.1, eth0': .*'eth0'"):
        meshq.Node("n")
    monkeypatch.setenv("MESHQ_INTERFACES", "0.0.0.0")
    with pytest.raises(ValueError, match=r"MESHQ_INTERFACES='0.0.0.0': 0.0.0.0 is not"):
        meshq.Node("n")


# --- logs -------------------------------------------------------------------


def security_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "meshq.security" and r.levelno == logging.WARNING
    ]


def test_a_keyless_client_gives_one_warning(
    mesh: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshq")
    write_key_pair("secure", tmp_path)
    security = meshq.Curve(tmp_path / "secure.key_secret", allow=[])
    context = zmq.Context()
    client = context.socket(zmq.DEALER)
    listener = context.socket(zmq.SUB)
    try:
        with (
            meshq.Node("secure", mesh=mesh, interfaces=LOOPBACK, security=security) as secure,
            meshq.Node("plain", mesh=mesh, interfaces=LOOPBACK),  # dialled, refused: no key
        ):
            # A keyless client of two of the node's listening sockets: each
            # handshake is refused, and the monitor names our endpoint, not it.
            client.connect(secure.control_endpoints[0])
            listener.connect(secure.publish_endpoints[0])

            def refused_all_ways() -> bool:
                rejections = secure.rejections()
                # Which side notices the mechanism mismatch first is a race in
                # libzmq: either we read the client's NULL greeting ("no
                # CURVE"), or the client saw ours first and hung up.
                no_curve = {
                    r.address
                    for r in rejections
                    if "no CURVE" in r.reason or "hung up during the handshake" in r.reason
                }
                dialled = any("announced no public key" in r.reason for r in rejections)
                return dialled and len(no_curve) >= 2

            started = time.monotonic()
            wait_until(refused_all_ways, "refusals by dial and at two listening sockets", 10.0)
            elapsed = time.monotonic() - started
    finally:
        for sock in (client, listener):
            sock.close(linger=0)  # or term() waits for them forever
        context.term()
    # One warning per re-log window (10 s) for all of them: one, unless a
    # loaded machine took longer than a window to refuse them all.
    warnings = security_warnings(caplog)
    assert 1 <= len(warnings) <= 1 + int(elapsed // 10), (elapsed, warnings)


@pytest.mark.parametrize(
    ("event", "value", "reason"),
    [
        (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, MECHANISM_MISMATCH, "no CURVE"),
        (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, errno.EPIPE, "hung up during the handshake"),
        (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, errno.ECONNRESET, "hung up during the handshake"),
    ],
)
def test_a_keyless_client_is_named_whichever_side_notices_first(
    tmp_path: Path, event: int, value: int, reason: str
) -> None:
    # The two endings libzmq reports for one keyless client at a CURVE
    # server, depending on which side read the other's greeting first.
    write_key_pair("secure", tmp_path)
    curve = meshq.Curve(tmp_path / "secure.key_secret", allow=[])
    context = zmq.Context()
    refused: list[Rejection] = []
    gatekeeper = Gatekeeper(context, curve, KeyBook(), refused.append)
    monitor, reader = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    try:
        monitor.bind("inproc://fake-monitor")
        reader.connect("inproc://fake-monitor")
        monitor.send_multipart([struct.pack("=HI", event, value), b"tcp://127.0.0.1:7600"])
        assert gatekeeper._on_event(reader, server=True)
    finally:
        monitor.close(linger=0)
        reader.close(linger=0)
        context.term()
    assert [(r.address, reason in r.reason) for r in refused] == [
        ("client of tcp://127.0.0.1:7600", True)
    ]


def test_the_readme_rejection_log_line_is_the_real_one(
    mesh: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    readme = (ROOT / "README.md").read_text()
    (documented,) = re.findall(r"`(peer \S+ rejected: [^`]*)`", readme)
    address, key = re.fullmatch(r"peer (\S+) rejected: .* \(key (.+)\)", documented).groups()  # type: ignore[union-attr]
    assert len(key) == 40  # a real key's length in the example
    pattern = re.escape(documented).replace(re.escape(address), r"\S+", 1)
    pattern = pattern.replace(re.escape(key), ".{40}")
    caplog.set_level(logging.WARNING, logger="meshq")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    for name in ("sensor", "intruder"):
        write_key_pair(name, tmp_path)
    shutil.copy(tmp_path / "sensor.key", allowed)

    def curve(name: str) -> meshq.Curve:
        return meshq.Curve(tmp_path / f"{name}.key_secret", allow=allowed)

    with (
        meshq.Node("sensor", mesh=mesh, interfaces=LOOPBACK, security=curve("sensor")) as sensor,
        meshq.Node("intruder", mesh=mesh, interfaces=LOOPBACK, security=curve("intruder")),
    ):
        wait_until(lambda: sensor.rejections(), "the intruder refused")
    logged = security_warnings(caplog)
    assert any(re.fullmatch(pattern, line) for line in logged), (documented, logged)


def test_a_durable_consumer_started_with_its_relay_running_does_not_warn(
    mesh: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshq")
    relay = meshq.Relay(
        meshq.Node("relay", mesh=mesh, interfaces=LOOPBACK), tmp_path / "relay", ["orders/"]
    )
    try:
        with meshq.Node("shop", mesh=mesh, interfaces=LOOPBACK) as shop:
            wait_until(lambda: "meshq/relay/orders/" in shop.services(), "the relay found")
            shop.publish("orders/1", {"qty": 1}, durable=True)
        with (
            meshq.Node("billing", mesh=mesh, interfaces=LOOPBACK) as node,
            node.subscribe("orders/", durable="billing") as sub,
        ):
            # Asked at once, before discovery found the relay: the first fetch misses it.
            assert sub.recv(timeout=20).data == {"qty": 1}
    finally:
        relay.close()
    assert not [r for r in caplog.records if "no relay holds" in r.getMessage()]


# --- topics -------------------------------------------------------------------


@pytest.mark.parametrize("topic", [b"sensors/temp", 7, None])
def test_a_topic_that_is_not_a_str_is_a_type_error_naming_it(mesh: str, topic: object) -> None:
    with meshq.Node("n", mesh=mesh, interfaces=LOOPBACK) as node:
        calls: list[Callable[[], object]] = [
            lambda: node.publish(topic, 1),  # type: ignore[call-overload]  # the mistake under test
            lambda: node.publish_many(topic, [1]),  # type: ignore[arg-type]
            lambda: node.publish_blocking(topic, 1),  # type: ignore[arg-type]
            lambda: node.publish(topic, 1, durable=True),  # type: ignore[call-overload]
            lambda: node.subscribe(topic),  # type: ignore[call-overload]
        ]
        for call in calls:
            with pytest.raises(TypeError, match=r"^(topic|prefix) must be a str such as"):
                call()
