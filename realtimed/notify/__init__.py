"""Notifications: the in-app inbox and the policy pipeline that decides on push.

``service.NotifyService`` runs the pipeline of DESIGN.md ("Notifications and
push") over delivery channels (``channel.DeliveryChannel``; ``inbox`` is the
in-app one, ``realtimed.push.channel`` the FCM one); ``policy`` holds its pure
rules (quiet hours, caps, digest windows), ``checks`` what a queued delivery
verifies before it goes out, ``jobs`` its job kinds and their payload types,
``templates`` the title and body templates, ``types`` the built-in types, and
``http`` the REST routes. This package's ``__init__`` imports nothing, so that
the config loader can use ``templates`` without a cycle.
"""
