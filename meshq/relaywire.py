"""The relay protocol: what durable publishers and consumers ask a relay, as msgpack lists.

A relay offers one request/reply service per stream, named
``meshq/relay/<stream>`` (see meshq/servicewire.py for the frames); each
request's payload is one of these lists, and docs/PROTOCOL.md gives the
details:

    ["pub", topic, msg_id, flags, payload]         -> seq (stored and on disk)
    ["pubs", [[topic, msg_id, flags, payload], ...]] -> [seq, ...] (all on disk)
    ["fetch", consumer, prefix, start, start_arg, limit, wait, acks, ack_wait, max_deliver]
                                                   -> [record, ...]
    ["open", consumer, prefix, start, start_arg]  -> ack floor (creates the consumer)
    ["ack", consumer, [seq, ...], [released seq, ...]] -> count newly acknowledged
    ["nak", consumer, [seq, ...]]                  -> nil (due again now, delivery counted)
    ["read", after_seq, limit]                     -> [record, ...] (no consumer)
    ["dead", consumer, after_seq, limit]           -> [record, ...] (its dead letters)
    ["info"]                                       -> {stream statistics}

    record = [seq, topic, msg_id, flags, payload, time_ns, deliveries]

Pure functions; the decoders raise ProtocolError for anything malformed.
"""

from __future__ import annotations

from typing import Final, NamedTuple, TypeGuard

from .errors import ProtocolError
from .wire import FLAG_MSGPACK

__all__ = [
    "MAX_MSG_ID_BYTES",
    "RELAY_SERVICE_PREFIX",
    "START_KINDS",
    "Ack",
    "Fetch",
    "Nak",
    "Open",
    "Publish",
    "Read",
    "Record",
    "decode_records",
    "parse_ack",
    "parse_fetch",
    "parse_nak",
    "parse_open",
    "parse_publish",
    "parse_publishes",
    "parse_read",
    "stream_of_service",
]

RELAY_SERVICE_PREFIX: Final = "meshq/relay/"
MAX_MSG_ID_BYTES: Final = 64
#: Where a new consumer starts: the stream's first message, at a given
#: sequence number (that one included), at the first message the relay stored
#: at or after a given time (ns since the epoch, the relay's store time), or
#: with new messages only.
START_KINDS: Final = ("first", "seq", "time", "new")
MAX_FETCH: Final = 4096
#: Most messages in one "pubs" request.
MAX_PUBS: Final = 1024
MAX_ACKS: Final = 65536


class Publish(NamedTuple):
    topic: str
    msg_id: bytes
    flags: int
    payload: bytes


class Fetch(NamedTuple):
    consumer: str
    prefix: str
    start: str
    start_arg: int
    limit: int
    wait: float
    acks: list[int]
    ack_wait: float
    max_deliver: int


class Open(NamedTuple):
    consumer: str
    prefix: str
    start: str
    start_arg: int


class Ack(NamedTuple):
    consumer: str
    acks: list[int]
    released: list[int]


class Nak(NamedTuple):
    consumer: str
    seqs: list[int]


class Read(NamedTuple):
    consumer: str  # "" for a plain read, else whose dead letters
    after: int
    limit: int


class Record(NamedTuple):
    """One stored message as a relay sends it."""

    seq: int
    topic: str
    msg_id: bytes
    flags: int
    payload: bytes
    time_ns: int
    deliveries: int


def stream_of_service(service: str) -> str | None:
    """The stream a relay service name serves, or None for other services."""
    if service.startswith(RELAY_SERVICE_PREFIX):
        return service[len(RELAY_SERVICE_PREFIX) :]
    return None


# Every parser takes the request list (operation first) and raises
# ProtocolError for anything malformed; integers are unsigned and below
# 2**63, where SQLite's integers end.

_MAX_INT = 2**63 - 1


def _is_int(value: object) -> TypeGuard[int]:
    return type(value) is int and 0 <= value <= _MAX_INT


def _is_seconds(value: object) -> TypeGuard[float]:
    return type(value) in (int, float) and 0 <= value <= 3600  # type: ignore[operator]


def _seqs(value: object, what: str) -> list[int]:
    if not (type(value) is list and len(value) <= MAX_ACKS and all(map(_is_int, value))):
        raise ProtocolError(f"{what} must be a list of at most {MAX_ACKS} sequence numbers")
    return value


def _consumer_name(value: object) -> str:
    if not (type(value) is str and 0 < len(value.encode()) <= 255):
        raise ProtocolError("a consumer name is 1..255 UTF-8 bytes")
    return value


def _arity(request: list[object], n: int) -> None:
    if len(request) != n:
        raise ProtocolError(f"{request[0]} takes {n - 1} arguments")


def parse_publishes(request: list[object]) -> list[Publish]:
    """The messages of a "pub" or "pubs" request."""
    if request[0] == "pub":
        return [parse_publish(request[1:])]
    _arity(request, 2)
    items = request[1]
    if not (type(items) is list and 0 < len(items) <= MAX_PUBS):
        raise ProtocolError(f"pubs takes a list of 1..{MAX_PUBS} messages")
    return [parse_publish(item if type(item) is list else []) for item in items]


def parse_publish(fields: list[object]) -> Publish:
    """One message: [topic, msg_id, flags, payload]."""
    if len(fields) != 4:
        raise ProtocolError("a published message is topic, id, flags, payload")
    topic, msg_id, flags, payload = fields
    if not (type(topic) is str and topic):
        raise ProtocolError("pub topic must be a non-empty string")
    if not (type(msg_id) is bytes and 0 < len(msg_id) <= MAX_MSG_ID_BYTES):
        raise ProtocolError(f"message id must be 1..{MAX_MSG_ID_BYTES} bytes")
    if not (flags in (0, FLAG_MSGPACK) and type(flags) is int and type(payload) is bytes):
        raise ProtocolError("pub flags must be 0 (bytes) or 1 (msgpack), payload bytes")
    return Publish(topic, msg_id, flags, payload)


def _start(start: object, start_arg: object) -> tuple[str, int]:
    if start not in START_KINDS or not _is_int(start_arg):
        raise ProtocolError("bad start position")
    return str(start), start_arg


def parse_fetch(request: list[object]) -> Fetch:
    _arity(request, 10)
    _, consumer, prefix, start, start_arg, limit, wait, acks, ack_wait, max_deliver = request
    if type(prefix) is not str:
        raise ProtocolError("a prefix is a string")
    if not (_is_int(limit) and 0 < limit <= MAX_FETCH):
        raise ProtocolError(f"fetch limit must be 1..{MAX_FETCH}")
    if not (_is_seconds(wait) and _is_seconds(ack_wait) and ack_wait > 0):
        raise ProtocolError("fetch wait must be 0..3600 seconds, ack_wait more than 0")
    if not (_is_int(max_deliver) and max_deliver >= 1):
        raise ProtocolError("max_deliver must be >= 1")
    return Fetch(
        _consumer_name(consumer),
        prefix,
        *_start(start, start_arg),
        limit,
        float(wait),
        _seqs(acks, "acks"),
        float(ack_wait),
        max_deliver,
    )


def parse_open(request: list[object]) -> Open:
    _arity(request, 5)
    _, consumer, prefix, start, start_arg = request
    if type(prefix) is not str:
        raise ProtocolError("a prefix is a string")
    return Open(_consumer_name(consumer), prefix, *_start(start, start_arg))


def parse_ack(request: list[object]) -> Ack:
    _arity(request, 4)
    return Ack(_consumer_name(request[1]), _seqs(request[2], "acks"), _seqs(request[3], "released"))


def parse_nak(request: list[object]) -> Nak:
    _arity(request, 3)
    return Nak(_consumer_name(request[1]), _seqs(request[2], "naks"))


def parse_read(request: list[object]) -> Read:
    """A "read" ([after, limit]) or "dead" ([consumer, after, limit]) request."""
    if request[0] == "read":
        _arity(request, 3)
        consumer, (after, limit) = "", request[1:]
    else:
        _arity(request, 4)
        consumer, after, limit = _consumer_name(request[1]), request[2], request[3]
    if not (_is_int(after) and _is_int(limit)):
        raise ProtocolError("a read takes a sequence number and a limit")
    return Read(consumer, after, min(limit, MAX_FETCH))


def decode_records(reply: object) -> list[Record]:
    """Records from a relay's fetch or read reply. Raises ProtocolError."""
    if not isinstance(reply, list):
        raise ProtocolError("relay reply is not a list")
    records = []
    for item in reply:
        if not (type(item) is list and len(item) == 7):
            raise ProtocolError("bad relay record")
        seq, topic, msg_id, flags, payload, time_ns, deliveries = item
        # type() checks, not isinstance: msgpack gives exactly these types.
        if not (
            type(seq) is int
            and type(topic) is str
            and type(msg_id) is bytes
            and type(flags) is int
            and type(payload) is bytes
            and type(time_ns) is int
            and type(deliveries) is int
            and seq > 0
            and 0 <= flags <= 0xFF
            and time_ns >= 0
            and deliveries >= 0
        ):
            raise ProtocolError("bad relay record")
        records.append(Record(seq, topic, msg_id, flags, payload, time_ns, deliveries))
    return records
