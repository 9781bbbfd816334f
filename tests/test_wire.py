"""The codec on its own: round trips, and every malformed input as ProtocolError."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshq.errors import ProtocolError
from meshq.message import Message
from meshq.servicewire import decode_reply, decode_request, encode_reply, encode_request
from meshq.wire import (
    ECHO_BODY_BYTES,
    FLAG_BATCH,
    FLAG_MSGPACK,
    PING_HEAD,
    PROTOCOL_VERSION,
    Bye,
    Hello,
    Limits,
    Ping,
    data_header_packer,
    decode_control,
    decode_data,
    decode_echo,
    decode_payload,
    encode_batch,
    encode_control,
    encode_data,
    encode_echo_ping,
    encode_msgpack,
    encode_payload,
    parse_endpoint,
    routing_id,
    topic_prefix,
)

LIMITS = Limits()
SENDER = bytes(range(16))
ROUTING = routing_id(SENDER, 1)
OTHER = bytes(range(16, 32))


def hello(**changes: object) -> Hello:
    fields: dict[str, object] = {
        "sender": SENDER,
        "name": "alpha",
        "mesh": "default",
        "control": ("tcp://127.0.0.1:7600",),
        "publish": ("tcp://127.0.0.1:7601",),
        "headers": {"role": "sensor"},
        "peers": ((OTHER, ("tcp://198.18.0.2:7600",)),),
        "reply": True,
    }
    fields.update(changes)
    return Hello(**fields)  # type: ignore[arg-type]


def raw_control(kind: int, body: object, version: int = PROTOCOL_VERSION) -> bytes:
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return b"MQ" + bytes((version, kind)) + packed


def test_control_messages_round_trip() -> None:
    for message in (hello(), hello(reply=False, peers=(), headers={}), Ping(SENDER), Bye(SENDER)):
        assert decode_control(ROUTING, encode_control(message), LIMITS) == message


def test_data_frame_round_trip_and_prefix_matching() -> None:
    prefix = topic_prefix("sensors/temp", SENDER, LIMITS)
    flags, payload = encode_payload({"celsius": 21.5})
    frame = encode_data(prefix, flags, 7, 1_700_000_000_123_456_789, payload)
    assert frame.startswith(b"sensors/")  # what ZeroMQ's SUB filter matches on
    message = decode_data(frame, LIMITS)
    assert isinstance(message, Message)
    assert (message.topic, message.sender, message.seq) == ("sensors/temp", SENDER.hex(), 7)
    assert message.timestamp == 1_700_000_000.123456789
    assert message.data == {"celsius": 21.5}


def test_bytes_travel_unchanged() -> None:
    flags, payload = encode_payload(b"\x00\xff raw")
    assert (flags, payload) == (0, b"\x00\xff raw")
    frame = encode_data(topic_prefix("t", SENDER, LIMITS), flags, 1, 0, payload)
    message = decode_data(frame, LIMITS)
    assert isinstance(message, Message) and message.data == b"\x00\xff raw"


def test_header_packer_matches_the_reference_encoder() -> None:
    prefix = topic_prefix("t/x", SENDER, LIMITS)
    pack = data_header_packer(prefix)
    assert pack(prefix, 1, 2, 3) + b"p" == encode_data(prefix, 1, 2, 3, b"p")


@pytest.mark.parametrize("encoded", [False, True])
def test_batch_frames_become_consecutive_messages(encoded: bool) -> None:
    items: list[object] = [b"a", b"", b"ccc"] if not encoded else [{"n": 1}, b"raw", [2]]
    payloads = [encode_msgpack(item) if encoded else item for item in items]
    flags = FLAG_BATCH | (FLAG_MSGPACK if encoded else 0)
    prefix = topic_prefix("b/", SENDER, LIMITS)
    frame = encode_data(prefix, flags, 10, 5, encode_batch(payloads))  # type: ignore[arg-type]
    messages = decode_data(frame, LIMITS)
    assert isinstance(messages, list)
    assert [(m.seq, m.data, m.topic) for m in messages] == [
        (10 + i, item, "b/") for i, item in enumerate(items)
    ]


@pytest.mark.parametrize(
    "batch",
    [
        b"",  # no entries
        b"\x00\x00\x00",  # truncated length
        b"\x00\x00\x00\x05abc",  # length beyond the frame
        b"\x00\x00\x00\x00" * 1025,  # too many entries
    ],
)
def test_malformed_batches_are_refused_whole(batch: bytes) -> None:
    frame = encode_data(topic_prefix("b/", SENDER, LIMITS), FLAG_BATCH, 1, 0, batch)
    with pytest.raises(ProtocolError):
        decode_data(frame, LIMITS)


@pytest.mark.parametrize("topic", ["", "a\0b", "x" * 1025])
def test_bad_topics_are_refused_locally(topic: str) -> None:
    with pytest.raises(ValueError):
        topic_prefix(topic, SENDER, LIMITS)


def test_unencodable_data_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        encode_payload(object())


@pytest.mark.parametrize(
    ("sender", "frame", "reason"),
    [
        (ROUTING, b"MQ", "truncated"),
        (ROUTING, b"XX\x01\x02", "signature"),
        (ROUTING, b"MQ\x02\x02", "version"),
        (ROUTING, b"MQ\x01\x09", "kind"),
        (ROUTING, b"MQ\x01\x02junk", "body"),
        (b"\x00short", b"MQ\x01\x02", "routing id"),
        (SENDER, b"MQ\x01\x02", "routing id"),  # a bare node id is not a routing id
        (ROUTING, b"MQ\x01\x01" + b"\xc1", "msgpack"),
        (ROUTING, raw_control(1, [1, 2]), "map"),
        (ROUTING, raw_control(1, {"name": "a", "mesh": "m", "control": ["udp://x"]}), "control"),
        (ROUTING, raw_control(1, {"name": 5, "mesh": "m", "control": [], "publish": []}), "name"),
        (ROUTING, b"MQ\x01\x01" + b"\x00" * (64 * 1024 + 1), "too large"),
    ],
)
def test_malformed_control_is_one_typed_error(sender: bytes, frame: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_control(sender, frame, LIMITS)
    assert reason in caught.value.reason


def test_hello_limits_are_enforced() -> None:
    base = {"name": "a", "mesh": "m", "control": [], "publish": []}
    too_many_headers = {**base, "headers": {f"k{i}": "v" for i in range(65)}}
    too_many_endpoints = {**base, "control": ["tcp://127.0.0.1:1"] * 17}
    bad_peer = {**base, "peers": [[b"short", []]]}
    long_name = {**base, "name": "n" * 256}
    for body in (too_many_headers, too_many_endpoints, bad_peer, long_name):
        with pytest.raises(ProtocolError):
            decode_control(ROUTING, raw_control(1, body), LIMITS)


def test_unknown_hello_keys_are_ignored() -> None:
    endpoints = ["tcp://127.0.0.1:1"]
    body = {"name": "a", "mesh": "m", "control": endpoints, "publish": endpoints, "future": 1}
    decoded = decode_control(ROUTING, raw_control(1, body), LIMITS)
    assert isinstance(decoded, Hello) and decoded.name == "a"


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"no terminator", "terminator"),
        (b"\0" + bytes(34), "terminator"),  # empty topic
        (b"t\0\x01" + bytes(10), "truncated"),
        (b"t\0\x09" + bytes(33), "version"),
        (b"t\0\x01" + bytes(16) + b"\x80" + bytes(16), "flags"),
    ],
)
def test_malformed_data_is_one_typed_error(frame: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_data(frame, LIMITS)
    assert reason in caught.value.reason


def test_oversized_payload_and_topic_are_refused() -> None:
    small = Limits(max_payload_bytes=10, max_topic_bytes=4)
    header = struct.pack(">B16sBQQ", PROTOCOL_VERSION, SENDER, 0, 1, 0)
    with pytest.raises(ProtocolError):
        decode_data(b"t\0" + header + bytes(11), small)
    with pytest.raises(ProtocolError):
        decode_data(b"toolong\0" + header, small)
    with pytest.raises(ProtocolError):
        decode_payload(1, b"\xc1", LIMITS)
    with pytest.raises(ProtocolError):  # a msgpack flag on a payload that is not msgpack
        decode_data(
            b"t\0" + struct.pack(">B16sBQQ", PROTOCOL_VERSION, SENDER, 1, 1, 0) + b"\xc1", LIMITS
        )


def test_hello_without_endpoints_is_refused() -> None:
    # A peer we cannot answer is no peer; an empty list once crashed the node.
    for key in ("control", "publish"):
        body = {"name": "a", "mesh": "m", "control": ["tcp://127.0.0.1:1"]}
        body["publish"] = ["tcp://127.0.0.1:2"]
        body[key] = []
        with pytest.raises(ProtocolError):
            decode_control(ROUTING, raw_control(1, body), LIMITS)


def test_parse_endpoint() -> None:
    assert parse_endpoint("tcp://198.18.0.5:7600") == ("198.18.0.5", 7600)
    bad_endpoints = (
        "tcp://host:1",
        "udp://1.2.3.4:5",
        "tcp://1.2.3.4",
        "tcp://1.2.3.4:0",
        "tcp://1.2.3.4:65536",
        "tcp://1.2.3.4:07600",  # one spelling per endpoint
        "tcp://1.2.3.4:\u0667\u0666\u0660\u0660",  # non-ASCII digits
    )
    for bad in bad_endpoints:
        with pytest.raises(ValueError):
            parse_endpoint(bad)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.binary(min_size=20, max_size=20))
def test_any_control_bytes_decode_or_raise_protocol_error(frame: bytes, routing: bytes) -> None:
    # The property: a message or ProtocolError; any other exception fails the test.
    try:
        decode_control(routing, b"MQ\x01" + frame, LIMITS)
    except ProtocolError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_any_data_bytes_decode_or_raise_protocol_error(frame: bytes) -> None:
    # The property: a message or ProtocolError; any other exception fails the test.
    try:
        decode_data(frame, LIMITS)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1, max_size=40).filter(lambda t: "\0" not in t),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=10,
    ),
    st.integers(0, 2**64 - 1),
)
def test_any_published_value_round_trips(topic: str, data: object, seq: int) -> None:
    flags, payload = encode_payload(data)
    frame = encode_data(topic_prefix(topic, SENDER, LIMITS), flags, seq, 0, payload)
    message = decode_data(frame, LIMITS)
    assert isinstance(message, Message)
    assert (message.topic, message.seq, message.data) == (topic, seq, data)


@pytest.mark.parametrize("service", [None, False, 0, "tcp://127.0.0.1:1"])
def test_a_malformed_service_endpoint_list_is_a_protocol_error(service: object) -> None:
    endpoints = ["tcp://127.0.0.1:1"]
    body: dict[str, object] = {"name": "a", "mesh": "m", "control": endpoints}
    body.update(publish=endpoints, services=[], service=service)
    with pytest.raises(ProtocolError):
        decode_control(ROUTING, raw_control(1, body), LIMITS)


def test_blocking_publish_endpoints_travel_only_when_present() -> None:
    with_block = hello(publish_block=("tcp://127.0.0.1:7602",))
    assert decode_control(ROUTING, encode_control(with_block), LIMITS) == with_block
    assert b"publish_block" not in encode_control(hello())


@pytest.mark.parametrize("block", [None, False, "tcp://127.0.0.1:1", ["nope"]])
def test_a_malformed_blocking_endpoint_list_is_a_protocol_error(block: object) -> None:
    endpoints = ["tcp://127.0.0.1:1"]
    body: dict[str, object] = {"name": "a", "mesh": "m", "control": endpoints}
    body.update(publish=endpoints, publish_block=block)
    with pytest.raises(ProtocolError):
        decode_control(ROUTING, raw_control(1, body), LIMITS)


KEY = b"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
OTHER_KEY = b"Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"


def test_hello_keys_round_trip_and_gossip_without_keys_still_decodes() -> None:
    message = hello(key=KEY, peer_keys={OTHER: OTHER_KEY})
    decoded = decode_control(ROUTING, encode_control(message), LIMITS)
    assert isinstance(decoded, Hello)
    assert decoded.key == KEY and dict(decoded.peer_keys) == {OTHER: OTHER_KEY}
    plain = decode_control(ROUTING, encode_control(hello()), LIMITS)
    assert isinstance(plain, Hello) and plain.key == b"" and not plain.peer_keys


@pytest.mark.parametrize(
    "key",
    ["short", "#" * 40, " " * 40, 12345, KEY, None],  # bytes is not str either
)
def test_a_malformed_hello_key_is_a_protocol_error(key: object) -> None:
    endpoints = ["tcp://127.0.0.1:1"]
    body = {"name": "a", "mesh": "m", "control": endpoints, "publish": endpoints, "key": key}
    with pytest.raises(ProtocolError, match="bad key"):
        decode_control(ROUTING, raw_control(1, body), LIMITS)
    body = {"name": "a", "mesh": "m", "control": endpoints, "publish": endpoints}
    body["peers"] = [[OTHER, endpoints, key]]
    with pytest.raises(ProtocolError, match="bad key"):
        decode_control(ROUTING, raw_control(1, body), LIMITS)


def test_msgpack_payloads_have_their_own_smaller_bound() -> None:
    limits = Limits(max_msgpack_bytes=1000)
    # 2000 nested empty arrays: would become 2000 list objects, ~78x the bytes.
    amplifier = b"\xdc\x07\xd0" + b"\x90" * 2000
    with pytest.raises(ProtocolError, match="msgpack payload too large"):
        decode_payload(FLAG_MSGPACK, amplifier, limits)
    prefix = topic_prefix("t", SENDER, limits)
    with pytest.raises(ProtocolError):
        decode_data(encode_data(prefix, FLAG_MSGPACK, 1, 0, amplifier), limits)
    # Raw bytes of the same size are not msgpack, and pass.
    message = decode_data(encode_data(prefix, 0, 1, 0, amplifier), limits)
    assert isinstance(message, Message) and message.data == amplifier
    with pytest.raises(ProtocolError):
        decode_request(encode_request(1, b"svc", FLAG_MSGPACK, amplifier), limits)
    assert decode_payload(FLAG_MSGPACK, amplifier[:3] + b"\x90" * 2000, LIMITS) == [[]] * 2000


@pytest.mark.parametrize(
    "payload",
    [
        b"\xdd\x7f\xff\xff\xff",  # an array claiming 2**31 elements, in 5 bytes
        b"\xdf\x7f\xff\xff\xff",  # a map claiming 2**31 entries
        b"\xdb\x7f\xff\xff\xff",  # a str claiming 2 GiB
        b"\xc9\x7f\xff\xff\xff\x01",  # an ext claiming 2 GiB
    ],
)
def test_msgpack_lengths_are_bounded_by_the_payload(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_payload(FLAG_MSGPACK, payload, LIMITS)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_any_request_or_reply_bytes_decode_or_raise_protocol_error(frame: bytes) -> None:
    # The property: a message or ProtocolError; any other exception fails the test.
    for decoder in (decode_request, decode_reply):
        try:
            decoder(frame, LIMITS)
        except ProtocolError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_after_a_valid_head_decode_or_raise_protocol_error(tail: bytes) -> None:
    # Past the fixed heads, where the msgpack decoder gets arbitrary input.
    heads = [
        encode_request(1, b"svc", FLAG_MSGPACK, b""),
        encode_reply(1, 0, flags=FLAG_MSGPACK),
        b"t\0" + bytes((PROTOCOL_VERSION,)) + SENDER + struct.pack(">BQQ", FLAG_MSGPACK, 1, 0),
        b"t\0" + bytes((PROTOCOL_VERSION,)) + SENDER + struct.pack(">BQQ", 3, 1, 0),
    ]
    for decoder, head in zip(
        (decode_request, decode_reply, decode_data, decode_data), heads, strict=True
    ):
        try:
            decoder(head + tail, LIMITS)  # type: ignore[operator]
        except ProtocolError:
            pass
    try:
        decode_control(ROUTING, b"MQ\x01\x01" + tail, LIMITS)
    except ProtocolError:
        pass


@pytest.mark.parametrize(
    "ext",
    [
        b"\xc7\x00\x05",  # zero-length: max_ext_len=0 alone let it through (issue 15)
        b"\xc7\x00\xff",  # zero-length with the timestamp's type
        b"\xd4\x05\x00",  # fixext 1
        b"\xd6\xff\x00\x00\x00\x01",  # the timestamp ext
    ],
)
@pytest.mark.parametrize("where", ["unknown key", "header value", "gossip entry", "name"])
def test_no_ext_type_passes_anywhere_in_a_hello(ext: bytes, where: str) -> None:
    endpoint = b"\xb1tcp://127.0.0.1:1"
    typed = {
        "unknown key": b"\xa6future" + ext,
        "header value": b"\xa7headers\x81\xa1k" + ext,
        "gossip entry": b"\xa5peers\x91\x93\xc4\x10" + OTHER + b"\x91" + endpoint + ext,
        "name": b"\xa4name" + ext,
    }[where]
    body = b"\x84\xa4mesh\xa1m\xa7control\x91" + endpoint + b"\xa7publish\x91" + endpoint + typed
    if where != "name":
        body = b"\x85\xa4name\xa1a" + body[1:]
    # The same body with a str in the ext's place decodes: only the ext is refused.
    text = b"\xd9\x28" + KEY if where == "gossip entry" else b"\xa1x"  # a key is Z85
    decoded = decode_control(ROUTING, b"MQ\x01\x01" + body.replace(ext, text), LIMITS)
    assert isinstance(decoded, Hello)
    with pytest.raises(ProtocolError):
        decode_control(ROUTING, b"MQ\x01\x01" + body, LIMITS)


def test_ext_types_stay_allowed_in_msgpack_payloads() -> None:
    # 8.3: payloads are the application's; only HELLO bodies refuse ext types.
    assert decode_payload(FLAG_MSGPACK, b"\xc7\x00\x05", LIMITS) == msgpack.ExtType(5, b"")
    stamp = decode_payload(FLAG_MSGPACK, b"\xd6\xff\x00\x00\x00\x01", LIMITS)
    assert stamp == msgpack.Timestamp(1, 0)
    reply = decode_reply(encode_reply(1, 0, flags=FLAG_MSGPACK, payload=b"\xd4\x05\x00"), LIMITS)
    assert reply.data == msgpack.ExtType(5, b"\x00")


def test_echo_pings_round_trip_and_saturate_held() -> None:
    ping = Ping(SENDER, sent=2**64 - 1, echo=123_456_789, held=4_000, timed=True)
    frame = encode_control(ping)
    assert len(frame) == 4 + ECHO_BODY_BYTES == 24  # PROTOCOL.md 16.4
    assert frame[:4] == PING_HEAD == encode_control(Ping(SENDER))
    assert decode_control(ROUTING, frame, LIMITS) == ping
    assert decode_echo(frame[4:]) == (2**64 - 1, 123_456_789, 4_000)
    assert decode_echo(encode_echo_ping(1, 2, 2**40)[4:]) == (1, 2, 2**32 - 1)
    assert decode_echo(encode_echo_ping(1, 2, -5)[4:]) == (1, 2, 0)


@pytest.mark.parametrize("size", [1, 4, 19, 21, 64])
def test_a_ping_body_other_than_0_or_20_bytes_is_malformed(size: int) -> None:
    with pytest.raises(ProtocolError, match="bad PING body"):
        decode_control(ROUTING, PING_HEAD + bytes(size), LIMITS)
    with pytest.raises(ProtocolError, match="unexpected body"):  # BYE has no body at all
        decode_control(ROUTING, b"MQ\x01\x03" + bytes(size), LIMITS)


def test_ping_echo_travels_in_hello_only_when_set_and_must_be_a_bool() -> None:
    assert b"ping_echo" not in encode_control(hello())
    decoded = decode_control(ROUTING, encode_control(hello(ping_echo=True)), LIMITS)
    assert isinstance(decoded, Hello) and decoded.ping_echo
    fields = msgpack.unpackb(encode_control(hello())[4:])
    for value in (1, None, "true"):
        with pytest.raises(ProtocolError, match="bad ping_echo flag"):
            decode_control(ROUTING, raw_control(1, {**fields, "ping_echo": value}), LIMITS)
