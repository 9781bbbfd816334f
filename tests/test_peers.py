"""The peer state machine and dialer, driven by a fake clock: no sockets, no sleeps."""

from __future__ import annotations

from meshq.config import MeshConfig
from meshq.peers import Dialer, EventKind, PeerState, PeerTable
from meshq.wire import Hello

CONFIG = MeshConfig()  # suspect after 1.5 s, gone after 3.0 s
A = b"a" * 16
B = b"b" * 16


def hello(sender: bytes, control: str, name: str = "n") -> Hello:
    return Hello(sender, name, "default", (control,), ("tcp://127.0.0.1:9",))


def first(control: tuple[str, ...], source: str | None, current: str | None) -> str:
    return control[0]


def table() -> PeerTable:
    return PeerTable(CONFIG, first)


def kinds(events: list) -> list[EventKind]:  # type: ignore[type-arg]
    return [event.kind for event in events]


def test_hello_joins_once_and_refreshes() -> None:
    peers = table()
    assert kinds(peers.hello(hello(A, "tcp://127.0.0.1:1", "alpha"), now=0.0)) == [EventKind.JOINED]
    assert peers.hello(hello(A, "tcp://127.0.0.1:1", "alpha"), now=1.0) == []
    (peer,) = peers.snapshot()
    assert (peer.id, peer.name, peer.state, peer.last_seen) == (
        A.hex(),
        "alpha",
        PeerState.ALIVE,
        1.0,
    )


def test_silence_makes_suspect_then_gone() -> None:
    peers = table()
    peers.hello(hello(A, "tcp://127.0.0.1:1"), now=0.0)
    assert peers.tick(1.4) == []
    events = peers.tick(1.5)
    assert kinds(events) == [EventKind.SUSPECT]
    assert events[0].peer.state is PeerState.SUSPECT
    assert peers.tick(2.9) == []  # suspect is reported once
    events = peers.tick(3.0)
    assert kinds(events) == [EventKind.LEFT] and events[0].reason == "timeout"
    assert A not in peers


def test_traffic_recovers_a_suspect_and_resets_the_clock() -> None:
    peers = table()
    peers.hello(hello(A, "tcp://127.0.0.1:1"), now=0.0)
    peers.tick(2.0)
    assert kinds(peers.heard(A, now=2.5)) == [EventKind.RECOVERED]
    assert kinds(peers.tick(5.0)) == [EventKind.SUSPECT]  # 2.5 s of silence: not gone yet
    assert kinds(peers.tick(5.5)) == [EventKind.LEFT]  # 3.0 s since the last message


def test_bye_leaves_at_once() -> None:
    peers = table()
    peers.hello(hello(A, "tcp://127.0.0.1:1"), now=0.0)
    events = peers.bye(A)
    assert kinds(events) == [EventKind.LEFT] and events[0].reason == "bye"
    assert peers.bye(A) == [] and peers.heard(A, 1.0) == []


def test_restart_with_new_id_replaces_the_old_peer() -> None:
    peers = table()
    peers.hello(hello(A, "tcp://127.0.0.1:1"), now=0.0)
    events = peers.hello(hello(B, "tcp://127.0.0.1:1"), now=0.5)
    assert [(e.kind, e.peer.id, e.reason) for e in events] == [
        (EventKind.LEFT, A.hex(), "restarted"),
        (EventKind.JOINED, B.hex(), ""),
    ]
    assert [p.id for p in peers.snapshot()] == [B.hex()]


def test_table_is_bounded() -> None:
    peers = PeerTable(MeshConfig(max_peers=1), first)
    peers.hello(hello(A, "tcp://127.0.0.1:1"), now=0.0)
    assert peers.hello(hello(B, "tcp://127.0.0.1:2"), now=0.0) == []
    assert peers.rejected == 1 and len(peers) == 1


def test_dialer_retries_until_connected() -> None:
    dialer = Dialer(CONFIG)  # hello_interval 0.5 s
    dialer.add("tcp://127.0.0.1:1", A, now=0.0, lasting=True)
    assert dialer.due(0.0, connected=[]) == (["tcp://127.0.0.1:1"], [])
    assert dialer.due(0.4, connected=[]) == ([], [])
    assert dialer.due(0.5, connected=[]) == (["tcp://127.0.0.1:1"], [])
    assert dialer.due(5.0, connected=["tcp://127.0.0.1:1"]) == ([], [])
    assert dialer.due(100.0, connected=[]) == (["tcp://127.0.0.1:1"], [])  # lasting: never expires


def test_dialer_drops_gossip_once_answered() -> None:
    dialer = Dialer(CONFIG)
    dialer.add("tcp://127.0.0.1:1", A, now=0.0, lasting=False)
    dialer.add("tcp://127.0.0.1:2", B, now=0.0, lasting=True)
    dialer.due(1.0, connected=["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"])
    assert "tcp://127.0.0.1:1" not in dialer  # gossip: done with it
    assert "tcp://127.0.0.1:2" in dialer  # mDNS: kept until withdrawn


def test_dialer_gossip_expires_and_withdrawal_forgets() -> None:
    dialer = Dialer(CONFIG)
    dialer.add("tcp://127.0.0.1:1", A, now=0.0, lasting=False)
    dialer.add("tcp://127.0.0.1:2", B, now=0.0, lasting=True)
    assert dialer.due(3.0, connected=[]) == (["tcp://127.0.0.1:2"], ["tcp://127.0.0.1:1"])
    dialer.remove("tcp://127.0.0.1:2")
    assert len(dialer) == 0
    dialer.add("tcp://127.0.0.1:3", A, now=0.0, lasting=True)
    dialer.forget_peer(A)
    assert "tcp://127.0.0.1:3" not in dialer


def test_config_rejects_inconsistent_timings() -> None:
    import pytest

    with pytest.raises(ValueError):
        MeshConfig(suspect_after=4.0, gone_after=3.0)
    with pytest.raises(ValueError):
        MeshConfig(heartbeat_interval=0)


def test_dialer_is_bounded() -> None:
    dialer = Dialer(MeshConfig(max_dialing=2, max_peers=2))
    assert dialer.add("tcp://127.0.0.1:1", A, now=0.0, lasting=False)
    assert dialer.add("tcp://127.0.0.1:2", B, now=0.0, lasting=False)
    assert not dialer.add("tcp://127.0.0.1:3", None, now=0.0, lasting=False)  # gossip full
    assert dialer.add("tcp://127.0.0.1:4", None, now=0.0, lasting=True)  # mDNS still fits
    assert dialer.add("tcp://127.0.0.1:5", None, now=0.0, lasting=True)
    assert not dialer.add("tcp://127.0.0.1:6", None, now=0.0, lasting=True)  # 4 in all
    assert dialer.add("tcp://127.0.0.1:1", A, now=1.0, lasting=False)  # known: refreshed
    assert len(dialer) == 4


def test_seeds_are_never_forgotten() -> None:
    dialer = Dialer(CONFIG)
    dialer.add("tcp://127.0.0.1:1", None, now=0.0, lasting=True, pinned=True)
    dialer.add("tcp://127.0.0.1:1", A, now=0.0, lasting=True)  # mDNS names the same node
    dialer.forget_peer(A)  # its BYE
    dialer.remove("tcp://127.0.0.1:1")  # its mDNS goodbye
    assert "tcp://127.0.0.1:1" in dialer


def test_dialer_can_be_hurried_for_a_known_peer() -> None:
    dialer = Dialer(CONFIG)
    dialer.add("tcp://127.0.0.1:1", A, now=0.0, lasting=True)
    assert dialer.due(0.0, connected=[]) == (["tcp://127.0.0.1:1"], [])
    assert dialer.hurry(A, now=0.1) and not dialer.hurry(B, now=0.1)
    assert dialer.due(0.1, connected=[]) == (["tcp://127.0.0.1:1"], [])  # not 0.5


DOCKER = "tcp://198.18.93.1:7600"  # every docker host's docker0, with one fixed port


def docker_hello(sender: bytes, lan: str) -> Hello:
    return Hello(sender, "n", "default", (f"tcp://{lan}:7600", DOCKER), ("tcp://127.0.0.1:9",))


def test_two_live_peers_behind_one_shared_endpoint_both_stay() -> None:
    peers = table()
    peers.hello(docker_hello(A, "198.18.91.2"), now=0.0, source="198.18.91.2")
    events = peers.hello(docker_hello(B, "198.18.91.3"), now=0.1, source="198.18.91.3")
    assert kinds(events) == [EventKind.JOINED]
    for now in (0.5, 1.0, 1.5):  # their periodic HELLOs never evict each other
        assert peers.hello(docker_hello(A, "198.18.91.2"), now, source="198.18.91.2") == []
        assert peers.hello(docker_hello(B, "198.18.91.3"), now, source="198.18.91.3") == []
    assert sorted(p.id for p in peers.snapshot()) == sorted([A.hex(), B.hex()])


def test_a_restart_behind_a_shared_endpoint_is_still_a_restart() -> None:
    peers = table()
    peers.hello(docker_hello(A, "198.18.91.2"), now=0.0, source="198.18.91.2")
    events = peers.hello(docker_hello(B, "198.18.91.2"), now=1.0, source="198.18.91.2")
    assert [(e.kind, e.peer.id, e.reason) for e in events] == [
        (EventKind.LEFT, A.hex(), "restarted"),
        (EventKind.JOINED, B.hex(), ""),
    ]


def test_the_chooser_hears_the_source_and_the_current_choice() -> None:
    asked: list[tuple[tuple[str, ...], str | None, str | None]] = []

    def chooser(control: tuple[str, ...], source: str | None, current: str | None) -> str:
        asked.append((control, source, current))
        return control[-1]

    peers = PeerTable(CONFIG, chooser)
    peers.hello(docker_hello(A, "198.18.91.2"), now=0.0, source="198.18.91.2")
    peers.hello(docker_hello(A, "198.18.91.2"), now=1.0, source="198.18.91.2")
    control = ("tcp://198.18.91.2:7600", DOCKER)
    assert asked == [(control, "198.18.91.2", None), (control, "198.18.91.2", DOCKER)]


def test_dialer_moves_on_from_an_endpoint_that_never_answers() -> None:
    dialer = Dialer(CONFIG)  # hello_interval 0.5 s: given up after 3 HELLOs, 1.5 s
    shared, lan = "tcp://198.18.93.1:5000", "tcp://198.18.91.2:5000"
    dialer.add(shared, A, now=0.0, lasting=True, alternatives=(lan,))
    assert dialer.due(0.0, connected=[]) == ([shared], [])
    assert dialer.due(0.5, connected=[]) == ([shared], [])
    assert dialer.due(1.0, connected=[]) == ([shared], [])
    assert dialer.next_deadline(connected=[]) == 1.5
    assert dialer.due(1.5, connected=[]) == ([lan], [])
    assert dialer.dialling(connected=[]) == {lan}  # its link stays, the one given up goes
    assert dialer.due(1.6, connected=[lan]) == ([], [])  # answered: no more HELLOs
    assert dialer.next_deadline(connected=[lan]) is None
    assert dialer.dialling(connected=[lan]) == set()
