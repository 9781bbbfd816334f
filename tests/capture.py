"""Capture every frame on one interface with a raw AF_PACKET socket (needs root).

Run inside a network namespace: ``capture.py IFACE OUTFILE MAX_SECONDS MAX_BYTES``
(IFACE ``any`` for all of them: a bridge device itself sees only frames
addressed to it, its ports see what it forwards).
Prints ``ready`` once the socket is bound, then appends raw frames to
OUTFILE until stdin closes (then the frames already queued), MAX_SECONDS
pass or MAX_BYTES are captured.
"""

from __future__ import annotations

import select
import socket
import sys
import time

ETH_P_ALL = 0x0003


def main() -> None:
    interface, outfile = sys.argv[1], sys.argv[2]
    max_seconds, max_bytes = float(sys.argv[3]), int(sys.argv[4])
    sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    if interface != "any":  # "any": every interface of the namespace
        sniffer.bind((interface, 0))
    print("ready", flush=True)
    deadline = time.monotonic() + max_seconds
    captured = 0
    with open(outfile, "wb") as out:
        while captured < max_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select([sniffer, sys.stdin], [], [], remaining)
            if sys.stdin in ready and not sys.stdin.readline():
                # The test is done. Frames the kernel queued for us before
                # then are part of the capture: on a busy machine we may not
                # have read one of them yet.
                sniffer.setblocking(False)
                while captured < max_bytes:
                    try:
                        frame = sniffer.recv(65536)
                    except BlockingIOError:
                        break
                    out.write(frame)
                    captured += len(frame)
                break
            if sniffer in ready:
                frame = sniffer.recv(65536)
                out.write(frame)
                captured += len(frame)
    print(f"captured {captured}", flush=True)


if __name__ == "__main__":
    main()
