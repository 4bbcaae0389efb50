"""``Live``: a value that a reload replaces in place.

A service that must see a reload (the configuration, the token verifier, the
API keys) keeps the box it was given and reads ``value`` at each use; the
daemon's reload assigns the new value once, and every holder sees it.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["Live"]

_T = TypeVar("_T")


class Live(Generic[_T]):
    """A box around the value in force (see the module docstring)."""

    __slots__ = ("value",)

    def __init__(self, value: _T) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Live({self.value!r})"
