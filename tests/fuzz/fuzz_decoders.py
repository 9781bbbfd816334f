"""Fuzz every decoder of peer input: any bytes give a message or ProtocolError.

Run under atheris (coverage-guided) when it is installed::

    python tests/fuzz/fuzz_decoders.py -runs=100000

and as a bounded random-bytes loop otherwise (same command, ``-runs=N``
respected). The first input byte picks the decoder, so one corpus covers all.
Exits non-zero, with the input printed, on any other exception.
"""

from __future__ import annotations

import random
import sys

try:
    import atheris  # type: ignore[import-untyped]
except ImportError:  # not installable everywhere (it needs a libFuzzer build)
    atheris = None

from meshq import servicewire, wire
from meshq.errors import ProtocolError
from meshq.servicewire import decode_reply, decode_request
from meshq.wire import FLAG_MSGPACK, Limits, decode_control, decode_data, decode_payload

# Small limits, so that the fuzzer reaches the "too large" branches too.
LIMITS = Limits(
    max_control_bytes=2048,
    max_topic_bytes=64,
    max_peers=8,
    max_headers=8,
    max_payload_bytes=4096,
    max_msgpack_bytes=1024,
)
_ROUTING = bytes(range(1, 21))


def one_input(data: bytes) -> None:
    """Feed ``data[1:]`` to the decoder that ``data[0]`` picks."""
    if not data:
        return
    choice, frame = data[0] % 6, data[1:]
    try:
        if choice == 0:
            decode_control(_ROUTING, frame, LIMITS)
        elif choice == 1:
            decode_control(_ROUTING, b"MQ\x01\x01" + frame, LIMITS)  # straight to HELLO's msgpack
        elif choice == 2:
            decode_data(frame, LIMITS)
        elif choice == 3:
            decode_request(frame, LIMITS)
        elif choice == 4:
            decode_reply(frame, LIMITS)
        else:
            decode_payload(FLAG_MSGPACK, frame, LIMITS)
    except ProtocolError:
        pass


def _runs(argv: list[str]) -> int:
    for arg in argv:
        if arg.startswith("-runs="):
            return int(arg.split("=", 1)[1])
    return 10_000


def random_loop(runs: int, seed: int = 0) -> None:
    """The fallback: ``runs`` random inputs (and mutations of valid-looking heads)."""
    rng = random.Random(seed)
    heads = [b"", b"MQ\x01\x01", b"MQ\x01\x02", b"t\x00\x01", b"Q\x01", b"A\x01"]
    for _ in range(runs):
        body = rng.randbytes(rng.randrange(0, 300))
        one_input(bytes([rng.randrange(256)]) + rng.choice(heads) + body)


def main() -> None:
    if atheris is None:
        random_loop(_runs(sys.argv))
        print("atheris not installed: ran the random-bytes loop", file=sys.stderr)
        return
    # Coverage guidance for the codec modules only (meshq's package import
    # pulls in everything, which import hooks would miss).
    for module in (wire, servicewire):
        for name in dir(module):
            value = getattr(module, name)
            own = getattr(value, "__module__", None) == module.__name__
            if own and hasattr(value, "__code__"):  # plain functions, not classes
                setattr(module, name, atheris.instrument_func(value))
    atheris.Setup(sys.argv, atheris.instrument_func(one_input))
    atheris.Fuzz()  # exits the process when the runs are done


if __name__ == "__main__":
    main()
