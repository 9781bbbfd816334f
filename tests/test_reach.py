"""Choice of a peer's endpoint, restart detection and fallback when hosts share addresses."""

from __future__ import annotations

import ipaddress

import pytest

from meshq.reach import Route, choose_control, is_restart

# This host: 198.18.91.1 on the LAN, 198.18.93.1 on a docker0 every host has.
NETWORKS = (ipaddress.IPv4Network("198.18.91.0/24"), ipaddress.IPv4Network("198.18.93.0/24"))
MINE = frozenset({ipaddress.IPv4Address("198.18.91.1"), ipaddress.IPv4Address("198.18.93.1")})
OWN = ("tcp://198.18.91.1:7600", "tcp://198.18.93.1:7600")
DOCKER = "tcp://198.18.93.1:7600"
PEER2 = "tcp://198.18.91.2:7600"
PEER3 = "tcp://198.18.91.3:7600"


def test_the_endpoint_the_peer_speaks_from_wins_over_its_order_and_a_current_choice() -> None:
    chosen = choose_control((DOCKER, PEER2), NETWORKS, own=MINE, source="198.18.91.2", exclude=OWN)
    assert chosen == PEER2
    other = "tcp://198.18.91.9:7600"  # a second LAN address of the peer, chosen before
    assert (
        choose_control((other, PEER2), NETWORKS, own=MINE, source="198.18.91.2", current=other)
        == PEER2
    )


def test_our_own_endpoint_is_never_chosen() -> None:
    assert choose_control((DOCKER,), NETWORKS, own=MINE, exclude=OWN) is None
    assert choose_control((DOCKER, PEER2), NETWORKS, own=MINE, exclude=OWN) == PEER2


def test_a_bad_first_choice_does_not_stick() -> None:
    # Chosen at a shared address before (no source known): a better one wins now.
    shared = "tcp://198.18.93.1:5555"
    assert choose_control((shared, PEER2), NETWORKS, own=MINE, current=shared) == PEER2


def test_without_a_source_a_current_choice_the_peer_still_lists_is_kept() -> None:
    a, b = "tcp://198.18.91.2:1", "tcp://198.18.91.7:1"
    assert choose_control((a, b), NETWORKS, own=MINE, current=b) == b  # no flapping between the two
    assert choose_control((a,), NETWORKS, own=MINE, current=b) == a  # no longer listed


def test_two_live_peers_behind_one_shared_endpoint_are_no_restart() -> None:
    # Peer 2 is talked to at its LAN address; peer 3 also lists docker0:7600.
    assert not is_restart(PEER2, "198.18.91.2", (PEER3, DOCKER), "198.18.91.3")
    # Even if peer 2 had been chosen at the shared endpoint, its host differs.
    assert not is_restart(DOCKER, "198.18.91.2", (PEER3, DOCKER), "198.18.91.3")


def test_a_new_id_at_the_same_endpoint_and_host_is_a_restart() -> None:
    assert is_restart(PEER2, "198.18.91.2", (PEER2, DOCKER), "198.18.91.2")
    assert is_restart("tcp://127.0.0.1:7600", "127.0.0.1", ("tcp://127.0.0.1:7600",), "127.0.0.1")


def test_without_sources_the_endpoint_alone_decides() -> None:
    assert is_restart(PEER2, None, (PEER2,), "198.18.91.2")
    assert not is_restart(PEER2, None, (PEER3,), None)


def test_a_route_moves_on_from_an_endpoint_that_never_answers() -> None:
    route = Route(("tcp://198.18.93.1:5000", PEER2), since=0.0)
    assert route.current == "tcp://198.18.93.1:5000"
    assert route.next_change(give_up_after=3.0) == 3.0
    assert not route.advance(2.9, give_up_after=3.0)
    assert route.advance(3.0, give_up_after=3.0) and route.current == PEER2
    assert route.advance(6.0, give_up_after=3.0) and route.current == route.endpoints[0]
    assert route.answered({PEER2}) and not route.answered({PEER3})


def test_a_route_of_one_endpoint_stays() -> None:
    route = Route((PEER2,), since=0.0)
    assert not route.advance(100.0, give_up_after=3.0) and route.next_change(3.0) is None
    with pytest.raises(ValueError):
        Route((), since=0.0)
