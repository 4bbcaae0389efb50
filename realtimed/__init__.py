"""realtimed: a standalone realtime daemon (chat, presence, notifications, push, jobs)."""

from __future__ import annotations

__version__ = "0.1.0"
