"""Push through Firebase Cloud Messaging (HTTP v1).

``fcm`` is the client (OAuth2 access tokens, ``messages:send``, Instance ID
topics, FCM's structured errors), ``messages`` builds and checks messages,
``service`` holds devices, topics and the ``push.send`` job kind (its payload
in ``jobs``), ``channel`` is the ``push`` delivery channel notifications go
through, and ``http`` the REST routes.
"""
