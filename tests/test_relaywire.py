"""The relay codec on its own: no ext type passes where 9.10 names a type."""

from __future__ import annotations

from collections.abc import Callable

import msgpack
import pytest

from meshq import relaywire
from meshq.errors import ProtocolError
from meshq.servicewire import decode_request, encode_request
from meshq.wire import FLAG_MSGPACK, Limits

MSG_ID = bytes(24)
# One valid request per operation, with the parser the relay uses for it.
VALID: dict[str, tuple[Callable[[list[object]], object], list[object]]] = {
    "pub": (relaywire.parse_publishes, ["pub", "orders/eu", MSG_ID, 1, b"\x01"]),
    "pubs": (relaywire.parse_publishes, ["pubs", [["orders/eu", MSG_ID, 1, b"\x01"]]]),
    "fetch": (
        relaywire.parse_fetch,
        ["fetch", "billing", "orders/", "first", 0, 10, 5.0, [1], 30.0, 5],
    ),
    "open": (relaywire.parse_open, ["open", "billing", "orders/", "seq", 3]),
    "ack": (relaywire.parse_ack, ["ack", "billing", [1], [2]]),
    "nak": (relaywire.parse_nak, ["nak", "billing", [1]]),
    "read": (relaywire.parse_read, ["read", 0, 10]),
    "dead": (relaywire.parse_read, ["dead", "billing", 0, 10]),
}
EXTS = [msgpack.ExtType(5, b""), msgpack.ExtType(5, b"x"), msgpack.Timestamp(1, 0)]


def over_the_wire(document: object) -> list[object]:
    """The document as the relay gets it: packed into a request frame and decoded."""
    packed: bytes = msgpack.packb(document, use_bin_type=True)
    frame = encode_request(1, b"meshq/relay/orders/", FLAG_MSGPACK, packed)
    data = decode_request(frame, Limits()).data
    assert isinstance(data, list)
    return data


def places(document: list[object]) -> list[tuple[int, ...]]:
    """Every argument position, and every position inside an argument that is a list."""
    found: list[tuple[int, ...]] = []
    for i, item in enumerate(document[1:], 1):
        found.append((i,))
        if isinstance(item, list):
            for j, inner in enumerate(item):
                found.append((i, j))
                if isinstance(inner, list):
                    found.extend((i, j, k) for k in range(len(inner)))
    return found


def replaced(document: list[object], place: tuple[int, ...], new: object) -> list[object]:
    copy = msgpack.unpackb(msgpack.packb(document, use_bin_type=True), raw=False)
    target = copy
    for index in place[:-1]:
        target = target[index]
    target[place[-1]] = new
    return copy  # type: ignore[no-any-return]


@pytest.mark.parametrize("operation", sorted(VALID))
def test_an_ext_in_any_typed_place_of_a_relay_request_is_refused(operation: str) -> None:
    parse, document = VALID[operation]
    parse(over_the_wire(document))  # the document itself is valid
    for place in places(document):
        for ext in EXTS:
            with pytest.raises(ProtocolError):
                parse(over_the_wire(replaced(document, place, ext)))


def test_an_ext_in_a_relay_record_is_refused() -> None:
    record = [1, "orders/eu", MSG_ID, 1, b"\x01", 5, 1]
    assert relaywire.decode_records(over_the_wire([record]))
    for i in range(len(record)):
        for ext in EXTS:
            with pytest.raises(ProtocolError):
                relaywire.decode_records(over_the_wire([replaced(record, (i,), ext)]))
