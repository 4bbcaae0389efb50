"""Brokers carry deliveries between nodes (see ``base.Broker``).

Below delivery (the router is the broker's one user): a ``Delivery`` carries a
``realtimed.frames.Frame``, and nothing here imports ``realtimed.delivery``.
"""

from __future__ import annotations

from realtimed.broker.base import Broker, Delivery
from realtimed.broker.memory import MemoryBroker, MemoryHub

__all__ = ["Broker", "Delivery", "MemoryBroker", "MemoryHub"]
