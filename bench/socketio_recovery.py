"""CPU per delivery that Socket.IO recovery tracking adds to the door's fan-out.

Usage: ``python bench/socketio_recovery.py [--sockets 1000] [--publications 200] [--rounds 3]``

In one process, the Socket.IO door's ``SioClient.send_frame`` delivers room
publications (each encoded once) to ``--sockets`` sockets, first with recovery
off (no tracker), then on (per-stream position and ring append per delivery), in
alternating rounds so that both see the same machine load. The socket's own
write is left out (a no-op), so the figures are the door's per-delivery work
alone: the transport's write adds the same to both.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import trio

from realtimed.frames import Frame
from realtimed.protocol import encode_event
from realtimed.socketio.door import SioClient
from realtimed.socketio.recovery import Tracker


class _Socket:
    """What ``SioClient`` needs of its socket, writing nothing."""

    connected = True
    engine = SimpleNamespace(closed=False, address="127.0.0.1", outbox_bytes=0)

    def send_encoded(self, ws_bytes: bytes, record: str) -> None:
        pass


def _client(tracking: bool) -> SioClient:
    client = SioClient(_Socket(), node="bench", connected_at=datetime.now(UTC), ops_burst=10)  # type: ignore[arg-type]
    if tracking:
        client.tracker = Tracker(1000, datetime.now(UTC))
    return client


def _round(sockets: int, publications: int, tracking: bool) -> float:
    clients = [_client(tracking) for _ in range(sockets)]
    started = time.process_time()
    for seq in range(1, publications + 1):
        data: Any = {"pct": seq}
        frame = Frame(encode_event("job.progress", data, room="job:1", seq=seq, epoch="e1"), "job.progress",
                      room="job:1", seq=seq, epoch="e1")
        for client in clients:
            client.send_frame(frame)
    return (time.process_time() - started) / (sockets * publications)


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--publications", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    off: list[float] = []
    on: list[float] = []
    for _ in range(args.rounds):
        off.append(_round(args.sockets, args.publications, False))
        on.append(_round(args.sockets, args.publications, True))
    best_off, best_on = min(off) * 1e9, min(on) * 1e9
    print(f"{args.sockets} sockets x {args.publications} publications, best of {args.rounds} rounds (CPU per delivery):")
    print(f"  recovery off: {best_off:7.0f} ns")
    print(f"  recovery on:  {best_on:7.0f} ns  (+{best_on - best_off:.0f} ns, x{best_on / best_off:.2f})")


def main() -> None:
    trio.run(_main)


if __name__ == "__main__":
    main()
