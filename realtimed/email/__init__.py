"""Email: notifications by SMTP.

``smtp`` is the client (smtplib on worker threads, a bounded pool of
connections), ``message`` the templates and the MIME message, ``unsubscribe``
the signed one-click links, ``service`` addresses, bounces, unsubscribes and
the ``email.send`` job kind (its payload in ``jobs``), ``channel`` the
``email`` delivery channel notifications go through, and ``http`` the server
API routes and the unsubscribe page.
"""
