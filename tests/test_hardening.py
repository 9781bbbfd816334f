"""Bad input on real sockets: repeat offenders, junk on every port, mDNS floods and spoofs."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq
from zeroconf import IPVersion, ServiceInfo, Zeroconf

import meshq
from meshq.discovery import SERVICE_TYPE, MdnsDiscovery
from meshq.offences import Offences
from meshq.security import load_public_key, write_key_pair
from meshq.servicewire import encode_request
from meshq.wire import PROTOCOL_VERSION, routing_id
from tests.test_security import LOOPBACK, WAIT, Keys, secure_node, wait_until

GARBAGE = b"MQ\x01\x09not a control message"


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def test_offences_ban_after_the_limit_within_the_window_only() -> None:
    offences = Offences(limit=3, window=10.0, ban=60.0, capacity=4)
    assert not offences.offend(b"x", 0.0) and not offences.offend(b"x", 1.0)
    assert not offences.active  # offences, but no ban yet: nothing to look up
    assert offences.offend(b"x", 2.0)  # the third within 10 s
    assert offences.active
    assert offences.banned(b"x", 61.9) and not offences.banned(b"x", 62.0)
    assert not offences.active  # its only ban expired
    # Spread out, offences never add up to a ban.
    assert not any(offences.offend(b"y", t * 11.0) for t in range(10))
    # Bounded: a flood of fresh names forgets the oldest.
    for n in range(100):
        offences.offend(bytes([n]), 0.0)
    assert len(offences._counts) <= 4


def _hello_frame(name: str, mesh: str, port: int, key: bytes | None) -> bytes:
    endpoint = f"tcp://127.0.0.1:{port}"
    body = {"name": name, "mesh": mesh, "control": [endpoint], "publish": [endpoint]}
    if key is not None:
        body["key"] = key.decode()  # type: ignore[assignment]
    packed: bytes = msgpack.packb(body)
    return b"MQ" + bytes((PROTOCOL_VERSION, 1)) + packed


@pytest.mark.parametrize("secure", [False, True])
def test_a_peer_sending_garbage_is_cut_off_and_the_others_keep_working(
    keys: Keys, mesh: str, secure: bool
) -> None:
    keys.admit("a", "b", "c")
    keys.admit("b", "a")
    config = meshq.MeshConfig(max_offences=5)
    context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
    bad_key = keys.key("c") if secure else None
    with meshq.Node(
        "a",
        mesh=mesh,
        interfaces=LOOPBACK,
        config=config,
        security=keys.curve("a") if secure else None,
    ) as a:
        seed = a.control_endpoints[0] + (f"#{keys.key('a').decode()}" if secure else "")
        with meshq.Node(
            "b",
            mesh=mesh,
            interfaces=LOOPBACK,
            seeds=[seed],
            discovery=False,
            security=keys.curve("b") if secure else None,
        ) as b:
            a.wait_for_peers(1, timeout=WAIT)
            bad_id = os.urandom(16)

            def raw_dealer() -> zmq.Socket:  # type: ignore[type-arg]
                dealer = context.socket(zmq.DEALER)
                dealer.setsockopt(zmq.LINGER, 0)
                dealer.setsockopt(zmq.ROUTING_ID, routing_id(bad_id, 1))
                if secure:
                    public, secret = zmq.auth.load_certificate(keys.secret["c"])
                    dealer.curve_publickey, dealer.curve_secretkey = public, secret
                    dealer.curve_serverkey = keys.key("a")
                dealer.connect(a.control_endpoints[0])
                return dealer  # type: ignore[no-any-return]

            dealer = raw_dealer()
            dealer.send(_hello_frame("bad", mesh, 1, bad_key))  # joins first, then misbehaves
            wait_until(lambda: any(p.name == "bad" for p in a.peers()), "the bad peer joins")
            for _ in range(5):
                dealer.send(GARBAGE)
            wait_until(lambda: a.stats().get("peers_banned") == 1, "a cuts the bad peer off")
            wait_until(lambda: all(p.name != "bad" for p in a.peers()), "it left a's table")
            dealer.send(_hello_frame("bad", mesh, 1, bad_key))
            wait_until(lambda: a.stats().get("banned_dropped", 0) >= 1, "its HELLO is dropped")
            assert all(p.name != "bad" for p in a.peers())
            if secure:
                # With its key banned, a new connection is refused too.
                dealer.close()
                dealer = raw_dealer()
                wait_until(
                    lambda: any("banned" in r.reason for r in a.rejections()),
                    "a refuses the banned key",
                )
            dealer.close()
            # The good peer never noticed.
            a.serve("echo", lambda data: data)
            b.wait_for_providers(lambda p: p.get("echo", {}).get(a.id), timeout=WAIT)
            assert b.request("echo", b"still here", timeout=WAIT) == b"still here"
            assert [p.name for p in a.peers()] == ["b"]
    context.destroy(linger=0)


# --------------------------------------------------------------------------
# Junk on every listening port while a good peer works


def _greeting(mechanism: bytes, as_server: int = 0) -> bytes:
    return (
        b"\xff"
        + bytes(8)
        + b"\x7f"
        + b"\x03\x00"
        + mechanism.ljust(20, b"\0")
        + bytes([as_server])
        + bytes(31)
    )


def _junk(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 600))  # noise
    if kind == 1:
        return _greeting(b"CURVE")[: rng.randrange(1, 64)]  # a greeting cut short
    if kind == 2:
        # A full CURVE greeting, then a HELLO command of random content,
        # sometimes cut short: the server must check the box and refuse it.
        hello = b"\x05HELLO\x01\x00" + bytes(72) + rng.randbytes(120)
        command = b"\x04" + bytes([len(hello)]) + hello
        return _greeting(b"CURVE") + command[: rng.randrange(1, len(command) + 1)]
    if kind == 3:
        return _greeting(b"NULL") + b"\x04\x29\x05READY" + rng.randbytes(35)  # NULL on CURVE
    return _greeting(b"CURVE") + b"\x04\xff" + rng.randbytes(rng.randrange(0, 300))  # lies


JUNK_CONNECTIONS = 400


def _throw_junk(ports: list[int], stop: threading.Event, count: list[int]) -> None:
    rng = random.Random(5)
    # Bounded in count and time; the time only ends a run gone wrong (about
    # 1 s on a quiet machine; 400 took over 20 s on a loaded one).
    deadline = time.monotonic() + 80.0
    for n in range(JUNK_CONNECTIONS):
        if stop.is_set() or time.monotonic() > deadline:
            return
        with socket.create_connection(("127.0.0.1", ports[n % len(ports)]), timeout=2.0) as conn:
            try:
                conn.sendall(_junk(rng))
                if rng.random() < 0.3:
                    conn.recv(64)  # sometimes read what the server says back
            except OSError:
                pass  # the server hung up on us: that is the point
        count[0] += 1


@pytest.mark.parametrize("secure", [True, False])
def test_junk_on_every_port_leaves_good_traffic_flowing(
    keys: Keys, mesh: str, secure: bool
) -> None:
    keys.admit("a", "b")
    keys.admit("b", "a")

    def node(name: str) -> meshq.Node:
        curve = keys.curve(name) if secure else None
        return meshq.Node(name, mesh=mesh, interfaces=LOOPBACK, security=curve)

    with node("a") as a, node("b") as b:
        a.serve("echo", lambda data: data)
        b.wait_for_peers(1, timeout=WAIT)
        b.wait_for_providers(lambda p: p.get("echo", {}).get(a.id), timeout=WAIT)
        ports = [
            int(endpoint.rpartition(":")[2])
            for endpoint in (
                a.control_endpoints[0],
                a.publish_endpoints[0],
                a.service_endpoints[0],
                b.control_endpoints[0],
                b.publish_endpoints[0],
            )
        ]
        stop, thrown = threading.Event(), [0]
        thrower = threading.Thread(target=_throw_junk, args=(ports, stop, thrown))
        with b.subscribe("good/") as sub:
            a.wait_for_subscribers("good/", 1, timeout=WAIT)
            thrower.start()
            try:
                replies = received = 0
                # Good exchanges for as long as the junk flies (bounded; each
                # step waits for its own answer). The thrower is not stopped
                # when they end first: it finishes its count.
                for n in range(5000):
                    if not thrower.is_alive():
                        break
                    assert b.request("echo", n, timeout=WAIT) == n
                    replies += 1
                    a.publish("good/n", n)
                    assert sub.recv(timeout=WAIT).data == n
                    received += 1
            except BaseException:
                stop.set()
                raise
            finally:
                thrower.join()
        # Every junk connection was made and answered or hung up on (a refused
        # connect would have ended the thrower early), between good exchanges.
        assert thrown[0] == JUNK_CONNECTIONS and replies > 0 and received == replies
        assert a.stats().get("internal_errors", 0) == 0
        assert b.stats().get("internal_errors", 0) == 0
        assert not secure or (a.runtime.gatekeeper is not None and a.runtime.gatekeeper.running)
        assert [p.name for p in a.peers()] == ["b"] and [p.name for p in b.peers()] == ["a"]
        assert b.request("echo", "after", timeout=WAIT) == "after"


# --------------------------------------------------------------------------
# mDNS: floods of unique names, spoofed records


def _record(name: str, mesh: str, port: int, key: bytes | None = None) -> ServiceInfo:
    node_id = os.urandom(16).hex()
    properties = {"v": str(PROTOCOL_VERSION), "id": node_id, "mesh": mesh}
    if key is not None:
        properties["key"] = key.decode()
    return ServiceInfo(
        SERVICE_TYPE,
        f"{name}-{node_id[:12]}.{SERVICE_TYPE}",
        addresses=[socket.inet_aton("127.0.0.1")],
        port=port,
        properties=properties,
        server=f"spoof-{node_id[:16]}.local.",
    )


def test_an_mdns_flood_of_unique_names_stays_bounded(mesh: str) -> None:
    config = meshq.MeshConfig(max_mdns_records=5)
    with meshq.Node("a", mesh=mesh, interfaces=LOOPBACK, config=config) as a:
        discovery = next(d for d in a.runtime.discoveries if isinstance(d, MdnsDiscovery))
        zc = Zeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only)
        try:
            assert zc.loop is not None
            registered = [  # bounded: 20 fake nodes, unreachable port 9
                asyncio.run_coroutine_threadsafe(
                    zc.async_register_service(
                        _record(f"flood{n}", mesh, 9), cooperating_responders=True
                    ),
                    zc.loop,
                )
                for n in range(20)
            ]
            for future in registered:
                future.result(WAIT)  # registered; announcements go out meanwhile
            wait_until(lambda: discovery.flooded > 0, "a notices the flood")
            assert len(discovery._endpoints) <= 5
            assert a.peers() == []
        finally:
            zc.close()


def test_a_spoofed_record_with_a_wrong_key_leads_nowhere(keys: Keys, mesh: str) -> None:
    keys.admit("a", "b", "c")  # c's key is allowed: the spoof's key passes the allowlist
    keys.admit("b", "a")
    # b advertises nothing and dials nobody: a can only learn of b's address
    # from the spoof, which pairs it with c's key.
    with secure_node("a", mesh, keys) as a, secure_node("b", mesh, keys, discovery=False) as b:
        b_control = b.control_endpoints[0]
        zc = Zeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only)
        try:
            spoof = _record("spoof", mesh, int(b_control.rpartition(":")[2]), keys.key("c"))
            zc.register_service(spoof, cooperating_responders=True)
            # a dials b expecting c's key; b cannot answer as c: the handshake fails.
            wait_until(
                lambda: any(
                    r.address == b_control and r.key == keys.key("c").decode()
                    for r in a.rejections()
                ),
                "a records the failed handshake with the spoofed key",
            )
            wait_until(
                lambda: any(r.address.startswith("client of") for r in b.rejections()),
                "b records a client it could not authenticate",
            )
            assert a.peers() == [] and b.peers() == []
        finally:
            zc.close()


def test_write_key_pair_refuses_odd_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_key_pair("../x", tmp_path)
    public, _secret = write_key_pair("ok", tmp_path)
    assert len(load_public_key(public)) == 40


def test_a_hello_claiming_another_key_is_dropped(
    keys: Keys,
    mesh: str,
) -> None:
    keys.admit("a", "b", "c")
    context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
    with secure_node("a", mesh, keys, discovery=False) as a:
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.ROUTING_ID, routing_id(os.urandom(16), 1))
        public, secret = zmq.auth.load_certificate(keys.secret["c"])
        dealer.curve_publickey, dealer.curve_secretkey = public, secret
        dealer.curve_serverkey = keys.key("a")
        dealer.connect(a.control_endpoints[0])
        # c is allowed, but says it is b: the HELLO is dropped and counted.
        dealer.send(_hello_frame("liar", mesh, 1, keys.key("b")))
        wait_until(lambda: a.stats().get("protocol_errors", 0) >= 1, "a drops the HELLO")
        dealer.send(_hello_frame("honest", mesh, 1, keys.key("c")))
        wait_until(lambda: any(p.name == "honest" for p in a.peers()), "the honest one joins")
        assert all(p.name != "liar" for p in a.peers())
        dealer.close()
    context.destroy(linger=0)


def test_a_caller_sending_malformed_requests_is_ignored_while_others_are_served(
    mesh: str,
) -> None:
    context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
    config = meshq.MeshConfig(max_offences=3)
    with (
        meshq.Node("a", mesh=mesh, interfaces=LOOPBACK, config=config, discovery=False) as a,
        meshq.Node(
            "b", mesh=mesh, interfaces=LOOPBACK, seeds=[a.control_endpoints[0]], discovery=False
        ) as b,
    ):
        a.serve("echo", lambda data: data)
        b.wait_for_providers(lambda p: p.get("echo", {}).get(a.id), timeout=WAIT)
        bad = context.socket(zmq.DEALER)
        bad.setsockopt(zmq.LINGER, 0)
        bad.connect(a.service_endpoints[0])
        for _ in range(3):
            bad.send(b"Q\x01junk")
        wait_until(lambda: a.stats().get("service_callers_banned") == 1, "a bans the caller")
        valid = encode_request(1, b"echo", 0, b"hi")
        bad.send(valid)
        wait_until(lambda: a.stats().get("service_banned_dropped", 0) >= 1, "its request dropped")
        assert not bad.poll(100)  # no reply for it
        assert b.request("echo", b"still served", timeout=WAIT) == b"still served"
        bad.close()
    context.destroy(linger=0)
