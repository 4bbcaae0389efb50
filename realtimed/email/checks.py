"""The configuration check of email templates, which needs the notification types.

``realtimed.config`` sits below every capability, so it cannot know the built-in
notification types (``realtimed.notify.types``); this check comes in as data,
through ``load_config(checks=...)`` (``realtimed.config_checks``).
"""

from __future__ import annotations

from realtimed.config import Config
from realtimed.notify.types import type_table
from realtimed.templates import TemplateError, placeholders

__all__ = ["email_template_problems"]


def email_template_problems(cfg: Config) -> list[tuple[str, str]]:
    """``[[email.templates]]`` entries naming no notification type (built-in or
    configured), naming one twice, or using a placeholder that is not one of the
    type's vars, as ``(key, problem)``."""
    problems: list[tuple[str, str]] = []
    types = type_table(cfg.notify)
    seen: set[str] = set()
    for i, template in enumerate(cfg.email.templates):
        key = f"email.templates[{i}]"
        ntype = types.get(template.type)
        if ntype is None:
            problems.append((f"{key}.type", f"unknown notification type {template.type!r}"))
            continue
        if template.type in seen:
            problems.append((f"{key}.type", f"a second template for {template.type!r}"))
        seen.add(template.type)
        for field in ("subject", "text", "html"):
            try:
                used = placeholders(getattr(template, field))
            except TemplateError as exc:
                problems.append((f"{key}.{field}", str(exc)))
                continue
            for name in used:
                if name not in ntype.vars:
                    problems.append((f"{key}.{field}", f"placeholder {{{name}}} is not one of the type's vars"))
    return problems
