"""CURVE security: real keys in tmp_path, real sockets on loopback.

Every refusal is checked from a positive observation (a rejection recorded,
a failed handshake seen by a raw client's own monitor) before asserting that
nothing got through, so no test depends on a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

import meshq
from meshq.cli import main as cli_main
from meshq.patterns import Pipeline, Publisher, Worker
from meshq.security import Allowlist, load_public_key, split_seed, write_key_pair

LOOPBACK = ["127.0.0.1"]
WAIT = 10.0  # seconds any single condition may take on a loaded machine


def wait_until(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


class Keys:
    """Key pairs a, b, c (c is never allowed) and one allowlist directory per node."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.public: dict[str, Path] = {}
        self.secret: dict[str, Path] = {}
        for name in ("a", "b", "c"):
            self.public[name], self.secret[name] = write_key_pair(name, root / "keys")
        self.allow: dict[str, Path] = {}
        for name in ("a", "b", "c"):
            folder = root / f"allow-{name}"
            folder.mkdir()
            self.allow[name] = folder

    def admit(self, node: str, *others: str) -> None:
        for other in others:
            shutil.copy(self.public[other], self.allow[node])

    def curve(self, name: str) -> meshq.Curve:
        return meshq.Curve(self.secret[name], allow=self.allow[name], recheck=0.1)

    def key(self, name: str) -> bytes:
        return load_public_key(self.public[name])


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


@pytest.fixture
def context() -> Iterator[zmq.Context]:  # type: ignore[type-arg]
    ctx: zmq.Context = zmq.Context()  # type: ignore[type-arg]
    yield ctx
    ctx.destroy(linger=0)


def secure_node(name: str, mesh: str, keys: Keys, **kwargs: object) -> meshq.Node:
    return meshq.Node(name, mesh=mesh, interfaces=LOOPBACK, security=keys.curve(name), **kwargs)  # type: ignore[arg-type]


def rejected(node: meshq.Node, *, key: bytes | None = None, reason: str = "") -> bool:
    return any(
        (key is None or r.key == key.decode()) and reason in r.reason for r in node.rejections()
    )


# --------------------------------------------------------------------------
# Keys and configuration


def test_keygen_cli_writes_a_loadable_key_pair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["keygen", "alice", "--dir", str(tmp_path / "k")]) == 0
    public, secret = tmp_path / "k" / "alice.key", tmp_path / "k" / "alice.key_secret"
    assert os.stat(secret).st_mode & 0o777 == 0o600
    key = load_public_key(public)
    assert key.decode() in capsys.readouterr().out  # printed, for seeds and allowlists
    curve = meshq.Curve(secret, allow=[key])
    assert curve.public_key == key
    zmq.auth.load_certificate(secret)  # the format pyzmq's zmq.auth reads
    # Never overwrite a key.
    assert cli_main(["keygen", "alice", "--dir", str(tmp_path / "k")]) == 2
    assert load_public_key(public) == key


def test_a_secret_key_readable_by_others_is_refused(keys: Keys) -> None:
    os.chmod(keys.secret["a"], 0o644)
    with pytest.raises(meshq.KeyFileError, match="0644") as info:
        meshq.Curve(keys.secret["a"], allow=keys.allow["a"])
    assert info.value.path == str(keys.secret["a"])
    os.chmod(keys.secret["a"], 0o600)
    meshq.Curve(keys.secret["a"], allow=keys.allow["a"])


def test_bad_key_material_is_a_typed_error(keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(meshq.KeyFileError):
        meshq.Curve(keys.public["a"], allow=[])  # a public file holds no secret
    with pytest.raises(meshq.KeyFileError):
        meshq.Curve(tmp_path / "missing.key_secret", allow=[])
    with pytest.raises(meshq.KeyFileError):
        meshq.Curve(keys.secret["a"], allow=tmp_path / "no-such-dir")
    with pytest.raises(ValueError):
        meshq.Curve(keys.secret["a"], allow=["too short"])
    with pytest.raises(ValueError):
        split_seed("tcp://127.0.0.1:7600#" + "#" * 40)  # Z85 alphabet, but overflows


def test_allowlist_directory_changes_are_seen_and_bad_files_skipped(keys: Keys) -> None:
    allow = Allowlist(keys.allow["a"], recheck=0.0)
    assert not allow.allows(keys.key("b"))
    keys.admit("a", "b")
    (keys.allow["a"] / "junk.key").write_text("not a certificate\n")
    assert allow.allows(keys.key("b"))
    os.remove(keys.allow["a"] / "b.key")
    assert not allow.allows(keys.key("b"))


def test_a_seed_needs_its_key_under_security(keys: Keys, mesh: str) -> None:
    with pytest.raises(ValueError, match="ENDPOINT#KEY"):
        secure_node("a", mesh, keys, seeds=["tcp://127.0.0.1:7600"], discovery=False)


# --------------------------------------------------------------------------
# A secure mesh works


def test_secure_nodes_exchange_every_kind_of_traffic(keys: Keys, mesh: str) -> None:
    keys.admit("a", "b")
    keys.admit("b", "a")
    with secure_node("a", mesh, keys) as a, secure_node("b", mesh, keys) as b:
        a.wait_for_peers(1, timeout=WAIT)
        b.wait_for_peers(1, timeout=WAIT)
        # Publish/subscribe, both ways.
        with a.subscribe("t/") as at, b.subscribe("t/") as bt:
            b.wait_for_subscribers("t/", 2, timeout=WAIT)
            a.wait_for_subscribers("t/", 2, timeout=WAIT)
            b.publish("t/b", {"from": "b"})
            a.publish("t/a", b"from a")
            assert at.recv(timeout=WAIT).data in ({"from": "b"}, b"from a")
            assert bt.recv(timeout=WAIT).data in ({"from": "b"}, b"from a")
        # Request/reply and direct messages.
        b.serve("echo", lambda data: data)
        b.on_direct(lambda sender, data: [sender, data])
        a.wait_for_providers(lambda p: p.get("echo", {}).get(b.id), timeout=WAIT)
        a.wait_for_providers(lambda p: p.get("meshq/direct", {}).get(b.id), timeout=WAIT)
        assert a.request("echo", {"n": 1}, timeout=WAIT) == {"n": 1}
        assert a.send_to(b.id, "hi", timeout=WAIT) == [a.id, "hi"]
        assert a.rejections() == [] and b.rejections() == []


def test_a_pipeline_runs_between_secure_nodes(keys: Keys, mesh: str) -> None:
    keys.admit("a", "b")
    keys.admit("b", "a")
    with secure_node("a", mesh, keys) as a, secure_node("b", mesh, keys) as b:
        Worker(b, "square", lambda task: task * task)  # type: ignore[operator]
        # The stage's service name is the pattern's business: match loosely.
        a.wait_for_providers(
            lambda services: (
                any("square" in name and b.id in ids for name, ids in services.items()) or None
            ),
            timeout=WAIT,
        )
        pipeline = Pipeline(a, "square", batch=4, credit=2, timeout=WAIT)
        pipeline.push_many(range(20), timeout=WAIT)
        pipeline.drain(timeout=WAIT)
        assert sorted(r.value for r in pipeline.results() if r.ok) == [n * n for n in range(20)]
        assert (pipeline.completed, pipeline.failed, pipeline.lost) == (20, 0, 0)


def test_a_blocking_publisher_reaches_a_secure_subscriber(keys: Keys, mesh: str) -> None:
    keys.admit("a", "b")
    keys.admit("b", "a")
    with secure_node("a", mesh, keys) as a, secure_node("b", mesh, keys) as b:
        a.wait_for_peers(1, timeout=WAIT)
        with b.subscribe("blk/") as sub:
            publisher = Publisher(a, "blk/x", when_full="block")  # its own NODROP socket
            publisher.wait_for_subscribers(1, timeout=WAIT)
            publisher.send("through CURVE")
            assert sub.recv(timeout=WAIT).data == "through CURVE"
        assert a.rejections() == [] and b.rejections() == []


def test_durable_streams_run_between_secure_nodes(keys: Keys, mesh: str, tmp_path: Path) -> None:
    keys.admit("a", "b")
    keys.admit("b", "a")
    with secure_node("b", mesh, keys) as b:
        relay = meshq.Relay(secure_node("a", mesh, keys), tmp_path / "relay", ["d/"])
        try:
            b.wait_for_service("meshq/relay/d/", timeout=WAIT)
            assert b.publish("d/1", "kept", durable=True) == 1
            with b.subscribe("d/", durable="reader") as sub:
                assert sub.recv(timeout=WAIT).data == "kept"
            assert b.rejections() == []
        finally:
            relay.close()


def test_nodes_join_through_a_seed_with_its_key(keys: Keys, mesh: str) -> None:
    keys.admit("a", "b")
    keys.admit("b", "a")
    with secure_node("a", mesh, keys, discovery=False) as a:
        seed = f"{a.control_endpoints[0]}#{keys.key('a').decode()}"
        with secure_node("b", mesh, keys, seeds=[seed], discovery=False) as b:
            b.wait_for_peers(1, timeout=WAIT)
            a.wait_for_peers(1, timeout=WAIT)


def test_a_node_reached_through_gossip_is_dialled_with_the_gossiped_key(
    keys: Keys, mesh: str
) -> None:
    for name in ("a", "b", "c"):
        keys.admit(name, *({"a", "b", "c"} - {name}))

    def seed(node: meshq.Node, name: str) -> str:
        return f"{node.control_endpoints[0]}#{keys.key(name).decode()}"

    with (
        secure_node("a", mesh, keys, discovery=False) as a,
        secure_node("b", mesh, keys, seeds=[seed(a, "a")], discovery=False) as b,
    ):
        b.wait_for_peers(1, timeout=WAIT)
        # a and c know of each other only from b's gossip: without the keys
        # in it, neither could dial the other.
        with secure_node("c", mesh, keys, seeds=[seed(b, "b")], discovery=False) as c:
            c.wait_for_peers(2, timeout=WAIT)
            a.wait_for_peers(2, timeout=WAIT)


# --------------------------------------------------------------------------
# Refusals, with the ZAP handler running and with it gone


@pytest.mark.parametrize("zap", ["running", "stopped"])
def test_a_node_with_an_unknown_key_is_rejected(keys: Keys, mesh: str, zap: str) -> None:
    keys.admit("c", "a")  # c would take a, but a does not know c
    config = meshq.MeshConfig(handshake_timeout=0.5)  # how soon c's refused link drops
    with secure_node("a", mesh, keys, config=config) as a:
        if zap == "stopped":
            assert a.runtime.gatekeeper is not None
            a.runtime.gatekeeper.close_zap()
        told: list[meshq.Rejection] = []
        a.on_rejected(told.append)
        with secure_node("c", mesh, keys, config=config) as c:
            # a refuses to dial c (not allowed); c dials a and is refused there.
            wait_until(lambda: rejected(a, key=keys.key("c")), "a refuses c's key")
            if zap == "running":
                wait_until(
                    lambda: (
                        rejected(a, key=keys.key("c"), reason="key not in allowlist")
                        and any(r.address == "127.0.0.1" for r in a.rejections())
                    ),
                    "a's ZAP handler names c's address and key",
                )
            wait_until(lambda: rejected(c, key=keys.key("a")), "c sees a refuse it")
            assert a.peers() == [] and c.peers() == []
            wait_until(lambda: any(r.key == keys.key("c").decode() for r in told), "a's callback")


@pytest.mark.parametrize("zap", ["running", "stopped"])
def test_a_node_without_security_is_rejected(keys: Keys, mesh: str, zap: str) -> None:
    with secure_node("a", mesh, keys) as a:
        if zap == "stopped":
            assert a.runtime.gatekeeper is not None
            a.runtime.gatekeeper.close_zap()
        with meshq.Node("plain", mesh=mesh, interfaces=LOOPBACK) as plain:
            # Its mDNS record has no key: a will not dial it.
            wait_until(lambda: rejected(a, reason="no public key"), "a refuses to dial plain")
            # It dials a, and fails the handshake (no CURVE), seen on a's side.
            wait_until(
                lambda: any(r.address.startswith("client of") for r in a.rejections()),
                "a sees a client fail its handshake",
            )
            assert a.peers() == [] and plain.peers() == []


def _monitored(
    context: zmq.Context,  # type: ignore[type-arg]
    socket_type: int,
    curve_key: str | None,
    keys: Keys,
    server_key: bytes,
) -> tuple[zmq.Socket, zmq.Socket]:  # type: ignore[type-arg]
    sock = context.socket(socket_type)
    sock.setsockopt(zmq.LINGER, 0)
    if curve_key is not None:
        public, secret = zmq.auth.load_certificate(keys.secret[curve_key])
        assert secret is not None
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_serverkey = server_key
    address = f"inproc://test-monitor-{next(_MONITORS)}"  # FD-based default names repeat
    sock.monitor(address, zmq.EVENT_ALL)
    monitor = context.socket(zmq.PAIR)
    monitor.setsockopt(zmq.LINGER, 0)
    monitor.connect(address)
    return sock, monitor


_MONITORS = itertools.count()


def _handshake_outcome(monitor: zmq.Socket, timeout: float = WAIT) -> int:  # type: ignore[type-arg]
    """The first handshake result (or disconnect) the client's own monitor reports."""
    outcomes = {
        zmq.EVENT_HANDSHAKE_SUCCEEDED,
        zmq.EVENT_HANDSHAKE_FAILED_AUTH,
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
        zmq.EVENT_DISCONNECTED,
    }
    deadline = time.monotonic() + timeout
    while monitor.poll(max(0, int((deadline - time.monotonic()) * 1000))):
        event, _value = struct.unpack("=HI", monitor.recv_multipart()[0])
        if event in outcomes:
            return int(event)
    raise AssertionError(f"no handshake outcome within {timeout} s")


@pytest.mark.parametrize("zap", ["running", "stopped"])
@pytest.mark.parametrize("client", ["null", "unknown-key"])
def test_raw_clients_get_nothing_from_any_port(
    keys: Keys,
    mesh: str,
    context: zmq.Context,  # type: ignore[type-arg]
    client: str,
    zap: str,
) -> None:
    curve_key = None if client == "null" else "c"
    # A refused CURVE client is dropped when its handshake times out.
    config = meshq.MeshConfig(handshake_timeout=0.5)
    with secure_node("a", mesh, keys, discovery=False, config=config) as a:
        a.serve("echo", lambda data: data)
        assert a.runtime.gatekeeper is not None
        if zap == "stopped":
            a.runtime.gatekeeper.close_zap()
        server_key = keys.key("a")
        service = a.service_endpoints[0]
        # The control ROUTER and the service ROUTER: a DEALER sends, hears nothing.
        for endpoint in (a.control_endpoints[0], service):
            dealer, monitor = _monitored(context, zmq.DEALER, curve_key, keys, server_key)
            dealer.connect(endpoint)
            assert _handshake_outcome(monitor) != zmq.EVENT_HANDSHAKE_SUCCEEDED
            try:
                dealer.send(b"MQ\x01\x01", zmq.NOBLOCK)  # queued, never delivered
            except zmq.Again:
                pass  # no connection left to queue on: refused for good
            assert not dealer.poll(100)
            dealer.close()
            monitor.close()
        # The publish XPUB: a SUB never gets a subscription in, nor data out.
        sub, monitor = _monitored(context, zmq.SUB, curve_key, keys, server_key)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(a.publish_endpoints[0])
        assert _handshake_outcome(monitor) != zmq.EVENT_HANDSHAKE_SUCCEEDED
        assert a.subscribers("secret") == 0
        for _ in range(20):
            a.publish("secret", b"payload")
        assert not sub.poll(100)
        sub.close()
        monitor.close()
        if zap == "running" and client == "unknown-key":
            assert rejected(a, key=keys.key("c"), reason="key not in allowlist")
        if zap == "running" and client == "null":
            # Which side notices the mechanism mismatch first is a race in
            # libzmq: we read the NULL greeting ("no CURVE"), or the client
            # read ours first and hung up (meshq/gatekeeper.py).
            wait_until(
                lambda: (
                    rejected(a, reason="no CURVE")
                    or rejected(a, reason="hung up during the handshake")
                ),
                "a records the NULL client",
            )
        if zap == "stopped" and client == "unknown-key":
            wait_until(lambda: rejected(a, reason="no ZAP handler"), "a fails closed, and says so")
        stats = a.stats()
        assert stats.get("protocol_errors", 0) == 0 and stats.get("unknown_sender", 0) == 0


# --------------------------------------------------------------------------
# The allowlist changes while running


def test_allowlist_changes_take_effect_without_restart(
    keys: Keys,
    mesh: str,
    context: zmq.Context,  # type: ignore[type-arg]
) -> None:
    keys.admit("b", "a")  # b takes a; a does not take b, yet
    with secure_node("a", mesh, keys) as a, secure_node("b", mesh, keys) as b:
        # b's link to a is refused by a's ZAP handler; libzmq never retries a
        # refused handshake, so this checks that b makes a new one.
        wait_until(
            lambda: any(
                r.address == "127.0.0.1" and r.key == keys.key("b").decode() for r in a.rejections()
            ),
            "a's ZAP handler refuses b at first",
        )
        assert a.peers() == []
        keys.admit("a", "b")
        a.wait_for_peers(1, timeout=WAIT)
        b.wait_for_peers(1, timeout=WAIT)
        # Removing the key stops new connections: a fresh client holding b's
        # key is refused (links already up stay up until they drop).
        os.remove(keys.allow["a"] / "b.key")
        assert a.security is not None
        wait_until(lambda: not a.security.allows(keys.key("b")), "a reads its allowlist again")  # type: ignore[union-attr]
        sub, monitor = _monitored(context, zmq.SUB, "b", keys, keys.key("a"))
        sub.connect(a.publish_endpoints[0])
        assert _handshake_outcome(monitor) != zmq.EVENT_HANDSHAKE_SUCCEEDED
        sub.close()
        monitor.close()


def test_refused_subscription_and_request_links_come_back_when_admitted(
    keys: Keys, mesh: str
) -> None:
    keys.admit("a", "b")
    keys.admit("b", "a")
    with secure_node("a", mesh, keys) as a, secure_node("b", mesh, keys) as b:
        a.wait_for_peers(1, timeout=WAIT)
        b.serve("echo", lambda data: data)
        a.wait_for_providers(lambda p: p.get("echo", {}).get(b.id), timeout=WAIT)
        os.remove(keys.allow["b"] / "a.key")  # b stops taking a
        assert b.security is not None
        wait_until(lambda: not b.security.allows(keys.key("a")), "b reads its allowlist")  # type: ignore[union-attr]
        with pytest.raises(meshq.Timeout):
            a.request("echo", 1, timeout=1.0, retries=0)  # this thread's link: refused
        with a.subscribe("t/") as sub:  # and the subscription's
            wait_until(lambda: rejected(b, key=keys.key("a")), "b refuses a's new links")
            keys.admit("b", "a")
            wait_until(lambda: b.security.allows(keys.key("a")), "b takes a again")  # type: ignore[union-attr]
            # The same subscription and the same thread's requests get through
            # again: libzmq would never retry, meshq makes the links anew.
            b.wait_for_subscribers("t/", 1, timeout=WAIT)  # also syncs this thread's sub
            b.publish("t/x", "through again")
            assert sub.recv(timeout=WAIT).data == "through again"

        def answered() -> bool:
            try:
                return a.request("echo", 2, timeout=0.5, retries=0) == 2
            except meshq.Timeout:
                return False

        wait_until(answered, "the same thread's requests get through again")


def test_retrying_a_refused_link_leaves_newer_healthy_links_alone(keys: Keys, mesh: str) -> None:
    keys.admit("a", "b")
    keys.admit("b", "a")
    with secure_node("a", mesh, keys) as a, secure_node("b", mesh, keys) as b:
        b.serve("slow", lambda data: time.sleep(1.5) or data)  # type: ignore[func-returns-value]
        a.wait_for_providers(lambda p: p.get("slow", {}).get(b.id), timeout=WAIT)
        os.remove(keys.allow["b"] / "a.key")
        assert b.security is not None
        wait_until(lambda: not b.security.allows(keys.key("a")), "b reads its allowlist")  # type: ignore[union-attr]
        refused: list[BaseException] = []

        def other_thread() -> None:
            refused.extend(_error_of(lambda: a.request("slow", 0, timeout=0.3)))
            # a thread's sockets close with the thread's own call
            a.runtime.close_thread_requester()

        worker = threading.Thread(target=other_thread)
        worker.start()  # another thread's link to b: refused
        worker.join()
        assert refused and isinstance(refused[0], meshq.Timeout)
        keys.admit("b", "a")
        wait_until(lambda: b.security.allows(keys.key("a")), "b takes a again")  # type: ignore[union-attr]
        # This thread's link is made after the refusal and works: when the
        # refusal comes due (about 1 s), retrying it must not cut this link.
        slow = a.request_async("slow", "kept", timeout=5.0, retries=0)
        time.sleep(1.1)  # the refusal comes due while "slow" is in flight
        with contextlib.suppress(meshq.Timeout):
            a.request("slow", "nudge", timeout=0.1, retries=0)  # a start: due retries run
        assert slow.result() == "kept"


def _error_of(call: Callable[[], object]) -> list[BaseException]:
    try:
        call()
    except BaseException as exc:
        return [exc]
    return []


def test_asyncio_nodes_run_secure_too(keys: Keys, mesh: str) -> None:
    keys.admit("a", "b")
    keys.admit("b", "a")

    async def scenario() -> tuple[object, object]:
        async with (
            meshq.AsyncNode("a", mesh=mesh, interfaces=LOOPBACK, security=keys.curve("a")) as a,
            meshq.AsyncNode("b", mesh=mesh, interfaces=LOOPBACK, security=keys.curve("b")) as b,
        ):
            await a.wait_for_peers(1, timeout=WAIT)
            b.serve("double", lambda data: data * 2)  # type: ignore[operator]
            sub = a.subscribe("t/")
            await b.wait_for_subscribers("t/", 1, timeout=WAIT)
            b.publish("t/x", b"secret")
            message = await asyncio.wait_for(sub.recv(), WAIT)
            await a.wait_for_providers(lambda p: p.get("double", {}).get(b.id), timeout=WAIT)
            reply = await a.request("double", 21, timeout=WAIT)
            sub.close()
            return message.data, reply

    assert asyncio.run(scenario()) == (b"secret", 42)


def test_cli_commands_take_key_and_allow(keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    node_args = ["--interface", "127.0.0.1", "--no-mdns", "--wait", "0.1", "--expect", "1"]
    secure = ["--key", str(keys.secret["a"]), "--allow", str(keys.allow["a"])]
    assert cli_main(["peers", *node_args, *secure]) == 0
    assert "0 peer(s)" in capsys.readouterr().out
    # A key may start with '-' (one in 85 do): the form that always works.
    one_key = ["--key", str(keys.secret["a"]), f"--allow={keys.key('b').decode()}"]
    assert cli_main(["services", *node_args, *one_key]) == 0
    assert cli_main(["peers", *node_args, "--allow", str(keys.allow["a"])]) == 2
    assert "--allow needs --key" in capsys.readouterr().err
    os.chmod(keys.secret["a"], 0o640)
    assert cli_main(["peers", *node_args, *secure]) == 2
    assert "mode 0640" in capsys.readouterr().err


def test_cli_allow_takes_a_key_that_starts_with_a_dash(
    keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    # One Z85 public key in 85 starts with '-', which argparse would read as
    # an option: a fixed one, so the case is tested every run, not by chance.
    public = "-" + keys.key("b").decode()[1:]
    assert len(public) == 40
    node_args = ["--interface", "127.0.0.1", "--no-mdns", "--wait", "0.1", "--expect", "1"]
    for allow in (["--allow", public], [f"--allow={public}"]):
        assert cli_main(["services", *node_args, "--key", str(keys.secret["a"]), *allow]) == 0
        assert "expected one argument" not in capsys.readouterr().err
