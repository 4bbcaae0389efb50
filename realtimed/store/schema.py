"""Schema versions: the numbered migrations of each backend and the rules for applying them.

Each backend keeps its SQL in ``migrations/<backend>/NNNN_name.sql``, numbered
1, 2, 3, ... with no gap; a database records the versions applied in its
``schema_migrations`` table. A backend applies what is pending in one
transaction at start (``store.apply_migrations``) or with ``realtimed migrate``.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Final

import attrs

from realtimed.errors import RealtimedError

__all__ = ["Migration", "SchemaVersionError", "load_migrations", "pending_migrations"]

_MIGRATION_NAME: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class SchemaVersionError(RealtimedError):
    """The database schema does not match this realtimed: it is newer, or
    migrations are pending and ``store.apply_migrations`` is off."""


@attrs.frozen
class Migration:
    version: int
    name: str  # e.g. "0001_initial"
    sql: str


def load_migrations(backend: str) -> list[Migration]:
    """The versioned SQL files of ``backend`` in order (``migrations/<backend>/NNNN_name.sql``)."""
    folder = resources.files("realtimed.store").joinpath("migrations", backend)
    out: list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match is None:
            continue
        out.append(
            Migration(int(match.group(1)), entry.name[: -len(".sql")], entry.read_text(encoding="utf-8"))
        )
    out.sort(key=lambda m: m.version)
    versions = [m.version for m in out]
    if versions != list(range(1, len(out) + 1)):
        raise RuntimeError(f"{backend} migrations are not numbered 1, 2, 3, ...: {versions}")
    return out


def pending_migrations(migrations: list[Migration], current: int, *, apply: bool) -> list[Migration]:
    """The migrations after ``current``, after checking that the schema is not newer.

    Raises:
        SchemaVersionError: ``current`` is newer than the newest known migration,
            or migrations are pending and ``apply`` is False.
    """
    newest = migrations[-1].version if migrations else 0
    if current > newest:
        raise SchemaVersionError(
            f"database schema version {current} is newer than this realtimed ({newest}): "
            "upgrade realtimed or point it at another database"
        )
    pending = [m for m in migrations if m.version > current]
    if pending and not apply:
        raise SchemaVersionError(
            f"database schema version {current} is older than this realtimed ({newest}) and "
            "store.apply_migrations is off: run `realtimed migrate`"
        )
    return pending
