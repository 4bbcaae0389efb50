"""Notification templates: ``"{sender_name} liked your post"``.

A template is text with ``{name}`` placeholders, nothing more: no attribute or
index access, no conversions, no format specs, so that a template written by an
operator can neither reach into objects nor fail at render time in surprising
ways. ``{{`` and ``}}`` are literal braces. Templates are checked when the
configuration is loaded (``placeholders`` raises ``TemplateError`` for a
malformed one, and the config names the key); rendering only fills in values.

This module imports nothing from realtimed, so the config loader can use it.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["MAX_VALUE_CHARS", "TemplateError", "placeholders", "render", "var_text"]

# A value longer than this is cut (with an ellipsis) before it goes into a title or body.
MAX_VALUE_CHARS: Final = 1000

_FORMATTER: Final = string.Formatter()


class TemplateError(ValueError):
    """A template is malformed: unbalanced braces, or more than a plain ``{name}``."""


def placeholders(template: str) -> list[str]:
    """The placeholder names of ``template``, in order of first use.

    Raises:
        TemplateError: the template is malformed.
    """
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise TemplateError(f"malformed template {template!r}: {exc}") from None
    names: list[str] = []
    for _literal, field, spec, conversion in parts:
        if field is None:
            continue
        if field == "":
            raise TemplateError(f"empty placeholder {{}} in {template!r}: name it, e.g. {{sender_name}}")
        if not field.isidentifier():
            raise TemplateError(f"placeholder {{{field}}} in {template!r} is not a plain name")
        if spec or conversion:
            raise TemplateError(f"placeholder {{{field}}} in {template!r} may not have a format spec or conversion")
        if field not in names:
            names.append(field)
    return names


def var_text(value: Any) -> str:
    """How a variable reads in a title or body: strings as they are, numbers and
    booleans in their JSON spelling, None as empty, long values cut."""
    if value is None:
        text = ""
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    if len(text) > MAX_VALUE_CHARS:
        text = text[: MAX_VALUE_CHARS - 1] + "…"
    return text


def render(template: str, values: Mapping[str, Any]) -> str:
    """Fill ``template`` in from ``values``.

    Raises:
        KeyError: a placeholder has no value (the caller names the type and var).
        TemplateError: the template is malformed (config validation prevents it).
    """
    out: list[str] = []
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise TemplateError(f"malformed template {template!r}: {exc}") from None
    for literal, field, _spec, _conversion in parts:
        out.append(literal)
        if field is not None:
            out.append(var_text(values[field]))
    return "".join(out)
