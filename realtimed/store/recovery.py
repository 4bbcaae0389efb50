"""Connection state recovery records in the store: a disconnected Socket.IO
session's positions, kept under its ``pid`` until they expire.

``RecoveryStore`` is the Protocol. A record is opaque bytes (the Socket.IO door
encodes it); the store keeps it, hands it out once, and forgets expired ones.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

__all__ = ["RecoveryStore"]


class RecoveryStore(Protocol):
    """Recovery records. Expiry: a record whose ``expires_at`` has passed is never
    handed out; expired records are deleted when the next record is put."""

    async def put_recovery(self, *, pid: str, user_id: str, record: bytes, expires_at: datetime, now: datetime) -> None:
        """Keep ``record`` under ``pid`` until ``expires_at``, replacing any record
        under that ``pid``; records expired at ``now`` are deleted in the same transaction."""
        ...

    async def take_recovery(self, *, pid: str, now: datetime) -> tuple[str, bytes] | None:
        """Delete the record under ``pid``; return ``(user_id, record)`` if it had not
        expired at ``now`` (a record is handed out once)."""
        ...
