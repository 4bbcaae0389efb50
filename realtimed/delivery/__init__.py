"""Delivery: rooms and their history, the router.

Below the transports and the capabilities, above the broker; the frames it
delivers are ``realtimed.frames`` (a frame's JSON and its WebSocket bytes, built
once), which the broker carries too. ``rooms.py`` (room state, the ``HistoryBackend`` and
``RoomPresenceBackend`` Protocols and their in-memory implementations),
``redis_history.py`` (the Redis ``HistoryBackend``) and ``router.py`` (deliveries to
users and rooms on this node, and the bridge to the ``Broker`` between nodes).
"""
