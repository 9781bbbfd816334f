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

__all__ = [
    "MAX_MSG_ID_BYTES",
    "RELAY_SERVICE_PREFIX",
    "START_KINDS",
    "Fetch",
    "Publish",
    "Record",
    "decode_records",
    "parse_fetch",
    "parse_publish",
    "parse_publishes",
    "stream_of_service",
]

RELAY_SERVICE_PREFIX: Final = "meshq/relay/"
MAX_MSG_ID_BYTES: Final = 64
#: Where a new consumer starts: the stream's first message, after a given
#: sequence number, at a given time (ns since the epoch), or new messages only.
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


def _is_int(value: object) -> TypeGuard[int]:
    return type(value) is int and value >= 0


def parse_publishes(request: list[object]) -> list[Publish]:
    """The messages of a "pub" or "pubs" request. Raises ProtocolError."""
    if request[0] == "pub":
        return [parse_publish(request[1:])]
    if not (len(request) == 2 and isinstance(request[1], list) and 0 < len(request[1]) <= MAX_PUBS):
        raise ProtocolError(f"pubs takes a list of 1..{MAX_PUBS} messages")
    return [parse_publish(item if isinstance(item, list) else []) for item in request[1]]


def parse_publish(fields: list[object]) -> Publish:
    """One message: [topic, msg_id, flags, payload]. Raises ProtocolError."""
    if len(fields) != 4:
        raise ProtocolError("a published message is topic, id, flags, payload")
    topic, msg_id, flags, payload = fields
    if not (isinstance(topic, str) and topic):
        raise ProtocolError("pub topic must be a non-empty string")
    if not (isinstance(msg_id, bytes) and 0 < len(msg_id) <= MAX_MSG_ID_BYTES):
        raise ProtocolError(f"message id must be 1..{MAX_MSG_ID_BYTES} bytes")
    if not (_is_int(flags) and flags <= 0xFF and isinstance(payload, bytes)):
        raise ProtocolError("pub flags must be u8 and payload bytes")
    return Publish(topic, msg_id, flags, payload)  # type: ignore[arg-type]


def parse_fetch(request: list[object]) -> Fetch:
    if len(request) != 10:
        raise ProtocolError("fetch takes 9 arguments")
    _, consumer, prefix, start, start_arg, limit, wait, acks, ack_wait, max_deliver = request
    if not (isinstance(consumer, str) and 0 < len(consumer) <= 255):
        raise ProtocolError("consumer name must be 1..255 characters")
    if not isinstance(prefix, str) or start not in START_KINDS or not _is_int(start_arg):
        raise ProtocolError("bad fetch prefix or start position")
    if not (_is_int(limit) and 0 < limit <= MAX_FETCH):
        raise ProtocolError(f"fetch limit must be 1..{MAX_FETCH}")
    for value in (wait, ack_wait):
        if not (isinstance(value, (int, float)) and 0 <= value <= 3600):
            raise ProtocolError("fetch wait and ack_wait must be 0..3600 seconds")
    if not (_is_int(max_deliver) and max_deliver != 0):
        raise ProtocolError("max_deliver must be >= 1")
    if not (isinstance(acks, list) and len(acks) <= MAX_ACKS and all(map(_is_int, acks))):
        raise ProtocolError(f"acks must be a list of at most {MAX_ACKS} sequence numbers")
    return Fetch(
        consumer,
        prefix,
        str(start),
        start_arg,  # type: ignore[arg-type]
        limit,  # type: ignore[arg-type]
        float(wait),  # type: ignore[arg-type]
        acks,
        float(ack_wait),  # type: ignore[arg-type]
        max_deliver,  # type: ignore[arg-type]
    )


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
