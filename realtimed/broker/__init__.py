"""Brokers carry deliveries between nodes (see ``base.Broker``)."""

from __future__ import annotations

from realtimed.broker.base import Broker, Delivery
from realtimed.broker.memory import MemoryBroker, MemoryHub

__all__ = ["Broker", "Delivery", "MemoryBroker", "MemoryHub"]
