"""Static files on the client listener: the folders of ``[[http.static]]``.

So that a small web app (the demo in ``examples/web``, or an application's own
front end) can be served from the same origin as ``/ws`` and ``/api/v1``,
without a CORS allow-list or a second server.

What is served:
    Regular files inside the mounted folder, for GET and HEAD only, with a
    content type from the file name, ``ETag`` and ``Last-Modified`` (a
    conditional request gets 304), ``Cache-Control: no-cache`` (browsers
    revalidate, so a changed file shows at once) and
    ``X-Content-Type-Options: nosniff``. A path that ends with ``/`` serves the
    mount's index file from that folder.

What is never served, answered 404 ``NOT_FOUND`` like a missing file:
    any path segment that is ``..`` or starts with ``.`` (dotfiles such as
    ``.env``, ``.git``), a NUL byte or a backslash, a path that leaves the
    folder through a symlink, and anything that is not a regular file. The
    check runs on the path after percent-decoding (``%2e%2e``, ``%2f``) and
    again on the resolved file, so neither encodings nor symlinks reach
    outside the folder.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from quart import Response
from quart.helpers import send_file
from quart_trio import QuartTrio

from realtimed.config import Config
from realtimed.errors import NotFound

log = logging.getLogger(__name__)

# Types that must not depend on the machine's mime.types (module scripts need a JavaScript
# type). Quart adds "; charset=utf-8" to text/* types.
_CONTENT_TYPES: Final = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".map": "application/json",
    ".json": "application/json",
    ".html": "text/html",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".wasm": "application/wasm",
    ".webmanifest": "application/manifest+json",
}


def content_type(path: Path) -> str:
    known = _CONTENT_TYPES.get(path.suffix.lower())
    if known is not None:
        return known
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def resolve(root: Path, subpath: str, index: str) -> Path | None:
    """The file that ``subpath`` (already percent-decoded) names under ``root``, or None.

    ``root`` must be resolved (absolute, no symlinks). None for anything that
    is not a regular file inside ``root``; see the module docstring.
    """
    if "\x00" in subpath or "\\" in subpath:
        return None
    segments = [s for s in subpath.split("/") if s]
    if any(s.startswith(".") for s in segments):  # "..", ".", and dotfiles
        return None
    candidate = root.joinpath(*segments)
    if not subpath or subpath.endswith("/"):
        candidate = candidate / index
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a symlink loop, a name too long
        return None
    if not real.is_relative_to(root) or not real.is_file():
        return None
    return real


def _handler(root: Path, index: str) -> Callable[[str], Awaitable[Response]]:
    async def serve(subpath: str = "") -> Response:
        file = resolve(root, subpath, index)
        if file is None:
            raise NotFound("no such file")
        response = await send_file(file, mimetype=content_type(file), conditional=True)
        # Revalidate every time (the ETag makes that cheap) instead of send_file's 12 h expiry.
        response.headers["Cache-Control"] = "no-cache"
        response.headers.pop("Expires", None)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    return serve


def add_static_routes(app: QuartTrio, cfg: Config) -> None:
    """Serve every ``[[http.static]]`` folder under its prefix (``/app`` redirects to ``/app/``)."""
    for i, mount in enumerate(cfg.http.static):
        assert mount.dir is not None  # the configuration check requires it
        root = mount.dir.resolve()
        view = _handler(root, mount.index)
        endpoint = f"static_{i}"
        app.add_url_rule(mount.path, endpoint, view, methods=["GET", "HEAD"], defaults={"subpath": ""})
        app.add_url_rule(f"{mount.path}<path:subpath>", endpoint, view, methods=["GET", "HEAD"])
        log.debug("serving %s under %s", root, mount.path)
