"""The configuration checks that need the capabilities, for ``load_config(checks=...)``.

Every command that loads a daemon's configuration (``run``, ``check-config``,
``realtimed jobs``, a reload) passes ``DAEMON_CONFIG_CHECKS``, so that each names
the same problems.
"""

from __future__ import annotations

from typing import Final

from realtimed.config import ConfigCheck
from realtimed.email.checks import email_template_problems
from realtimed.jobs.kinds import cron_config_problems

__all__ = ["DAEMON_CONFIG_CHECKS"]

#: The cron entries' job kinds and payloads, and the email templates' notification types.
DAEMON_CONFIG_CHECKS: Final[tuple[ConfigCheck, ...]] = (cron_config_problems, email_template_problems)
