"""Static folders on the client listener (``[[http.static]]``): what is served, and what never is.

Hostile paths go over a raw socket, since HTTP clients normalise ``..`` and
percent-encodings away before sending.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

from realtimed.config import ConfigError, load_config
from realtimed.http.static import resolve
from tests.fixtures.daemon import DaemonFactory

SECRET = b"TOP SECRET: outside the served folder"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder to serve, beside a secret file it must never give away."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / ".git").mkdir()
    (root / "index.html").write_text("<!doctype html><title>home</title>")
    (root / "app.js").write_text("export const answer = 42;\n")
    (root / "style.css").write_text("body { margin: 0 }\n")
    (root / "data.bin").write_bytes(b"\x00\x01\x02")
    (root / "sub" / "index.html").write_text("<p>sub</p>")
    (root / ".env").write_bytes(SECRET)
    (root / ".git" / "config").write_bytes(SECRET)
    os.symlink(tmp_path / "secret.txt", root / "escape")
    os.symlink(tmp_path, root / "up")
    os.symlink(root / "app.js", root / "inside.js")
    return root


def _mount(site: Path, **extra: Any) -> dict[str, Any]:
    return {"http": {"static": [{"path": "/app/", "dir": str(site)}], **extra}}


async def _raw_get(url: str, target: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Send ``target`` exactly as given; returns (status, headers, body), the body read by its Content-Length."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            assert chunk, f"connection closed before a response head: {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(body) < int(headers.get("content-length", "0")):
            chunk = await stream.receive_some(65536)
            assert chunk, "connection closed in the middle of a body"
            body += chunk
    return int(lines[0].split(" ", 2)[1]), headers, body


async def test_files_are_served_with_types_and_revalidation(start_daemon: DaemonFactory, site: Path) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon(_mount(site))
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            r = await http.get("/app/")
            assert r.status_code == 200
            assert r.text == "<!doctype html><title>home</title>"
            assert r.headers["content-type"] == "text/html; charset=utf-8"
            assert r.headers["cache-control"] == "no-cache"
            assert r.headers["x-content-type-options"] == "nosniff"
            assert "expires" not in r.headers
            for path, ctype in (
                ("/app/app.js", "text/javascript; charset=utf-8"),
                ("/app/style.css", "text/css; charset=utf-8"),
                ("/app/data.bin", "application/octet-stream"),
                ("/app/sub/", "text/html; charset=utf-8"),
                ("/app/inside.js", "text/javascript; charset=utf-8"),  # a symlink that stays inside
            ):
                r = await http.get(path)
                assert (r.status_code, r.headers["content-type"]) == (200, ctype), path
            # Conditional requests: the ETag answers 304 without the body.
            r = await http.get("/app/app.js")
            again = await http.get("/app/app.js", headers={"If-None-Match": r.headers["etag"]})
            assert again.status_code == 304
            assert again.content == b""
            head = await http.head("/app/app.js")
            assert head.status_code == 200
            assert head.headers["content-length"] == str(len("export const answer = 42;\n"))
            # The prefix without its slash redirects to it.
            r = await http.get("/app")
            assert r.status_code == 308
            assert r.headers["location"].endswith("/app/")


@pytest.mark.parametrize(
    "target",
    [
        "/app/../secret.txt",
        "/app/sub/../../secret.txt",
        "/app/%2e%2e/secret.txt",
        "/app/%2E%2E/secret.txt",
        "/app/..%2fsecret.txt",
        "/app/..%2Fsecret.txt",
        "/app/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/app/..%5csecret.txt",
        "/app/..\\secret.txt",
        "/app/escape",  # a symlink out of the folder
        "/app/up/secret.txt",  # a symlinked folder out of it
        "/app/.env",
        "/app/%2eenv",
        "/app/.git/config",
        "/app/sub/.%2e/.%2e/secret.txt",
        "/app/app.js%00.html",
        "/app//etc/passwd",
        "/app/%ff%fe",
        "/app/empty/",  # a folder without an index
        "/app/sub",  # a folder, not a file
        "/app/missing.js",
        "/app/" + "x" * 300,  # a name too long for the file system
        "/app/" + "a/" * 2000 + "b",  # deeper than any folder
    ],
)
async def test_hostile_paths_get_404_and_nothing_outside(start_daemon: DaemonFactory, site: Path, target: str) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon(_mount(site))
        status, headers, body = await _raw_get(daemon.url(), target)
        assert SECRET not in body
        if status == 308:
            # Werkzeug merges repeated slashes with a redirect, which stays under the mount.
            assert target == "/app//etc/passwd"
            assert headers["location"].endswith("/app/etc/passwd")
        else:
            assert status in (400, 404), (target, status, body)
            assert orjson.loads(body)["error"]["code"] in ("NOT_FOUND", "BAD_REQUEST")
        # The listener goes on serving.
        status, _, _ = await _raw_get(daemon.url(), "/app/app.js")
        assert status == 200


async def test_only_get_and_head(start_daemon: DaemonFactory, site: Path) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon(_mount(site))
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            for method in ("POST", "PUT", "DELETE"):
                r = await http.request(method, "/app/app.js", content=b"x")
                assert r.status_code == 405, method
                assert r.json()["error"]["code"] == "BAD_REQUEST"
            assert (site / "app.js").read_text() == "export const answer = 42;\n"


async def test_not_served_on_the_internal_listener(start_daemon: DaemonFactory, site: Path) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon(_mount(site, internal_listen="127.0.0.1:0"))
        async with httpx.AsyncClient() as http:
            assert (await http.get(daemon.url() + "/app/app.js")).status_code == 200
            r = await http.get(daemon.url("internal") + "/app/app.js")
            assert r.status_code == 404
            assert r.json()["error"]["code"] == "NOT_FOUND"


def test_resolve_refuses_what_is_not_a_file_inside(site: Path) -> None:
    root = site.resolve()
    assert resolve(root, "", "index.html") == root / "index.html"
    assert resolve(root, "sub/", "index.html") == root / "sub" / "index.html"
    assert resolve(root, "inside.js", "index.html") == root / "app.js"
    for bad in ("..", "../secret.txt", "sub/../../secret.txt", "escape", "up/secret.txt", ".env", "a\x00b", "..\\x", "sub", "empty/"):
        assert resolve(root, bad, "index.html") is None, bad


def _problems(tmp_path: Path, static: list[dict[str, Any]]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "realtimed.toml", env={}, data={"http": {"static": static}})
    return dict(info.value.problems)


def test_config_names_every_bad_mount(tmp_path: Path, site: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    good = str(site)
    problems = _problems(
        tmp_path,
        [
            {"path": "app", "dir": good},
            {"path": "/", "dir": good},
            {"path": "/api/v1/", "dir": good},
            {"path": "/ws/", "dir": good},
            {"path": "/dev/", "dir": good},
            {"path": "/a/../b/", "dir": good},
            {"path": "/ok/"},
            {"path": "/ok/", "dir": "file.txt"},
            {"path": "/x/", "dir": "nowhere"},
            {"path": "/y/", "dir": good, "index": "../secret.txt"},
            {"path": "/z/", "dir": good, "listing": True},
        ],
    )
    assert "must be like /app/" in problems["http.static[0].path"]
    assert "must be like /app/" in problems["http.static[1].path"]
    assert "shadow" in problems["http.static[2].path"]
    assert "shadow" in problems["http.static[3].path"]
    assert "shadow" in problems["http.static[4].path"]
    assert "must be like /app/" in problems["http.static[5].path"]
    assert problems["http.static[6].dir"] == "is required"
    assert "duplicate" in problems["http.static[7].path"]
    assert "not a folder" in problems["http.static[7].dir"]
    assert "not a folder" in problems["http.static[8].dir"]
    assert "must be a file name" in problems["http.static[9].index"]
    assert problems["http.static[10].listing"] == "unknown key"


def test_relative_dir_is_from_the_config_file(tmp_path: Path, site: Path) -> None:
    cfg = load_config(tmp_path / "realtimed.toml", env={}, data={"http": {"static": [{"path": "/app/", "dir": "site"}]}})
    assert cfg.http.static[0].dir == site
