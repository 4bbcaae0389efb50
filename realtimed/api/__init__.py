"""How a capability describes what it offers, with no transport in sight.

``ops.py`` is the op registry both doors (WebSocket, REST) run ops through;
``limits.py`` the per-user op budgets it charges; ``routes.py`` a route's typed
request and response, its checks and schemas; ``validate.py`` the field checks they
share. Capabilities import this package; the gateway and ``http/`` serve it.
"""
