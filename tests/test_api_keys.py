"""Named API keys: ``api.keys`` entries ``{name, key}`` (bare strings named by position,
``keys_file`` lines ``name:key``), the name logged with every server API call that
changes state and a label of ``realtimed_server_api_requests_total``."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from realtimed.auth import ApiKeys
from realtimed.config import ApiConfig, ApiKeyConfig, ConfigError, load_config
from tests.fixtures.daemon import DaemonFactory

BACKEND_KEY = "rtd_backend_key_of_at_least_32_characters"
CRON_KEY = "rtd_cron_key_of_at_least_32_characters_too"


def _keys(tmp_path: Path, text: str) -> list[tuple[str, str]]:
    cfg = load_config(tmp_path / "c.toml", env={}, text=text)
    return [(k.name, k.key) for k in cfg.api.keys]


def _problems(tmp_path: Path, text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.toml", env={}, text=text)
    return dict(info.value.problems)


def test_named_and_bare_keys(tmp_path: Path) -> None:
    assert _keys(tmp_path, '[api]\nkeys = [{name = "backend", key = "k1"}, "k2", {key = "k3"}]\n') == [
        ("backend", "k1"),
        ("keys[1]", "k2"),
        ("keys[2]", "k3"),
    ]
    assert _keys(tmp_path, '[[api.keys]]\nname = "cron.nightly-1"\nkey = "k1"\n') == [("cron.nightly-1", "k1")]
    # In TOML a bare string is a key, colons and all; in a file, `name:key`.
    assert _keys(tmp_path, '[api]\nkeys = ["ops:k:1"]\n') == [("keys[0]", "ops:k:1")]
    (tmp_path / "keys").write_text("# keys\nbackend:k1\n  cron : k2:with:colons \nk3\n")
    assert _keys(tmp_path, '[api]\nkeys_file = "keys"\n') == [("backend", "k1"), ("cron", "k2:with:colons"), ("keys[2]", "k3")]
    # From code, bare strings too.
    assert ApiConfig(keys=["a", ApiKeyConfig(name="b", key="c")]).keys == [
        ApiKeyConfig(name="keys[0]", key="a"),
        ApiKeyConfig(name="b", key="c"),
    ]


def test_bad_names_and_keys_are_refused_without_showing_keys(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("bad name:secret-one\n:secret-two\nbackend:secret-three\nbackend:secret-four\n")
    problems = _problems(tmp_path, '[api]\nkeys_file = "keys"\n')
    assert set(problems) == {"api.keys[0].name", "api.keys[1].name", "api.keys[3].name"}
    assert "must be 1 to 64 letters" in problems["api.keys[0].name"]
    assert problems["api.keys[3].name"] == "duplicate name 'backend' (also api.keys[2])"
    text = (
        '[api]\nkeys = [{name = "a", key = "same-secret"}, {name = "b", key = "same-secret"}, '
        '{name = "c", key = ""}, {name = ".hidden", key = "x1"}, {name = "keys[0]", key = "x2"}, '
        '{name = "' + "n" * 65 + '", key = "x3"}, {name = "a", key = "x4", extra = 1}]\n'
    )
    problems = _problems(tmp_path, text)
    assert problems["api.keys[1].key"] == "the same key as api.keys[0]: each key needs its own value"
    assert problems["api.keys[2].key"] == "must not be empty"
    assert "must be 1 to 64" in problems["api.keys[3].name"]
    assert "must be 1 to 64" in problems["api.keys[4].name"]  # position names are not for the taking
    assert "must be 1 to 64" in problems["api.keys[5].name"]
    assert problems["api.keys[6].extra"] == "unknown key"
    assert all("same-secret" not in message for message in problems.values())
    assert _problems(tmp_path, '[api]\nkeys = [""]\n') == {"api.keys[0].key": "must not be empty"}
    assert _problems(tmp_path, '[api]\nkeys = "k"\n') == {"api.keys": "expected a list, got 'k'"}
    assert "expected a string" in _problems(tmp_path, '[api]\nkeys = [{name = 5, key = "k"}]\n')["api.keys[0].name"]


def test_identify_names_the_key() -> None:
    keys = ApiKeys.from_config(ApiConfig(keys=[ApiKeyConfig(name="backend", key=BACKEND_KEY), CRON_KEY]))
    assert keys.names == ("backend", "keys[1]")
    assert keys.identify(BACKEND_KEY) == "backend"
    assert keys.identify(CRON_KEY) == "keys[1]"
    for wrong in ("", BACKEND_KEY[:-1], BACKEND_KEY + " ", "backend"):
        assert keys.identify(wrong) is None


def _samples(text: str) -> dict[tuple[str, str, str], float]:
    out: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "realtimed_server_api_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    out[(labels["key"], labels["method"], labels["status"])] = sample.value
    return out


async def test_key_name_is_logged_for_changes_and_counted(
    start_daemon: DaemonFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="realtimed.http.app")
    with trio.fail_after(20):
        daemon = await start_daemon(
            {"api": {"keys": [{"name": "backend-logged", "key": BACKEND_KEY}, CRON_KEY]}}
        )
        backend = {"Authorization": f"Bearer {BACKEND_KEY}"}
        cron = {"Authorization": f"Bearer {CRON_KEY}"}
        async with httpx.AsyncClient(base_url=daemon.url()) as client:
            before = _samples((await client.get("/metrics")).text)
            published = await client.post(
                "/server/v1/publish", json={"room": "job:1", "event": "job.progress", "data": {}}, headers=backend
            )
            assert published.status_code == 200
            refused = await client.post("/server/v1/publish", json={"room": 5}, headers=backend)
            assert refused.status_code == 400
            unbanned = await client.delete("/server/v1/users/alice/ban", headers=cron)
            assert unbanned.status_code < 500
            assert (await client.get("/server/v1/stats", headers=cron)).status_code == 200
            # A method no route knows is one label, whatever its name.
            odd = await client.request("PROPFIND", "/server/v1/stats", headers=cron)
            assert odd.status_code == 405
            assert (await client.post("/server/v1/publish", json={}, headers={"Authorization": "Bearer wrong"})).status_code == 401
            after = _samples((await client.get("/metrics")).text)
    lines = [r.getMessage() for r in caplog.records if r.name == "realtimed.http.app" and "with API key" in r.getMessage()]
    assert lines == [
        "server API POST /server/v1/publish -> 200 with API key backend-logged",
        "server API POST /server/v1/publish -> 400 with API key backend-logged",
        f"server API DELETE /server/v1/users/alice/ban -> {unbanned.status_code} with API key keys[1]",
        "server API PROPFIND /server/v1/stats -> 405 with API key keys[1]",
    ]

    def grew(labels: tuple[str, str, str]) -> float:
        return after.get(labels, 0) - before.get(labels, 0)

    assert grew(("backend-logged", "POST", "2xx")) == 1
    assert grew(("backend-logged", "POST", "4xx")) == 1
    assert grew(("keys[1]", "GET", "2xx")) == 1
    assert grew(("keys[1]", "other", "4xx")) == 1
    assert not any(key == "PROPFIND" or method == "PROPFIND" for key, method, _ in after)
