"""Configuration: typed loading, one message per mistake, env overrides, secrets from files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from realtimed.config import (
    DEFAULT_OP_LIMITS,
    DEV_API_KEY,
    DEV_HS256_SECRET,
    REDACTED,
    ConfigError,
    config_to_dict,
    load_config,
    reference_rows,
)

ROOT = Path(__file__).resolve().parent.parent


def test_embedded_defaults_load() -> None:
    cfg = load_config(None, env={})
    assert cfg.http.listen == "127.0.0.1:8700"
    assert cfg.store.backend == "sqlite"
    assert cfg.gateway.max_frame_bytes == 512 * 1024
    assert cfg.gateway.auth_timeout_s == 5.0


def test_repository_config_is_a_complete_single_node() -> None:
    cfg = load_config(ROOT / "realtimed.toml", env={})
    assert cfg.store.backend == "sqlite"
    assert cfg.broker.backend == "memory"
    assert cfg.http.listen == "127.0.0.1:8700"
    # Relative paths resolve against the file's own folder.
    assert cfg.server.state_dir == ROOT / "state"


def test_every_mistake_is_reported_with_its_key(tmp_path: Path) -> None:
    text = """
[server]
nodee = "typo"
[http]
listen = "nohostport"
[log]
level = "loud"
[gateway]
heartbeat_s = -1
max_frame_bytes = "big"
[[namespaces]]
prefix = "job:"
history_size = -5
[[namespaces]]
prefix = "job:"
[[cron]]
name = "x"
schedule = "not a schedule"
kind = "noop"
timezone = "Mars/Olympus"
[bogus]
a = 1
"""
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.toml", env={}, text=text)
    keys = [key for key, _ in info.value.problems]
    assert set(keys) == {
        "server.nodee",
        "http.listen",
        "log.level",
        "gateway.heartbeat_s",
        "gateway.max_frame_bytes",
        "namespaces[0].history_size",
        "cron[0].schedule",
        "cron[0].timezone",
        "bogus",
    } | ({"namespaces[1].prefix"} & set(keys))
    messages = dict(info.value.problems)
    assert messages["server.nodee"] == "unknown key"
    assert "at least 1" in messages["gateway.heartbeat_s"]
    assert "expected an integer" in messages["gateway.max_frame_bytes"]
    assert "'loud'" in messages["log.level"]


def test_duplicate_namespace_prefix_is_an_error(tmp_path: Path) -> None:
    text = '[[namespaces]]\nprefix = "job:"\n[[namespaces]]\nprefix = "job:"\n'
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.toml", env={}, text=text)
    assert info.value.problems == [("namespaces[1].prefix", "duplicate prefix 'job:'")]


def test_environment_overrides_and_their_errors(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        env={"REALTIMED__HTTP__LISTEN": "127.0.0.1:9000", "REALTIMED__SHUTDOWN__GRACE_S": "3", "OTHER": "x"},
    )
    assert cfg.http.listen == "127.0.0.1:9000"
    assert cfg.shutdown.grace_s == 3.0
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"REALTIMED__SHUTDOWN__GRACE_S": "soon", "REALTIMED__HTTP__NOPE": "1"})
    problems = dict(info.value.problems)
    assert problems["shutdown.grace_s (from REALTIMED__SHUTDOWN__GRACE_S)"] == "expected a number, got 'soon'"
    assert problems["http.nope (from REALTIMED__HTTP__NOPE)"] == "unknown key"


def test_secrets_from_files_and_redaction(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cr3t\n")
    (tmp_path / "keys").write_text("# api keys\nkey-one\nkey-two\n")
    text = '[auth]\nhs256_secret_file = "secret"\n[api]\nkeys_file = "keys"\n'
    cfg = load_config(tmp_path / "c.toml", env={}, text=text)
    assert cfg.auth.hs256_secret == "s3cr3t"
    assert cfg.api.key_values == ["key-one", "key-two"]
    assert [k.name for k in cfg.api.keys] == ["keys[0]", "keys[1]"]
    shown = config_to_dict(cfg)
    assert shown["auth"]["hs256_secret"] == REDACTED
    assert shown["api"]["keys"] == [{"name": "keys[0]", "key": REDACTED}, {"name": "keys[1]", "key": REDACTED}]
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.toml", env={}, text='[auth]\nhs256_secret_file = "missing"\n')
    assert info.value.problems[0][0] == "auth.hs256_secret_file"


def test_development_secrets_refused_on_a_public_listener(tmp_path: Path) -> None:
    data = {"http": {"listen": "0.0.0.0:8700"}, "auth": {"hs256_secret": DEV_HS256_SECRET}}
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.toml", env={}, data=data)
    assert info.value.problems[0][0] == "http.listen"
    data = {"http": {"listen": "0.0.0.0:8700"}, "api": {"keys": [DEV_API_KEY]}}
    with pytest.raises(ConfigError):
        load_config(tmp_path / "c.toml", env={}, data=data)
    assert load_config(tmp_path / "c.toml", env={}, data={"http": {"listen": "0.0.0.0:8700"}})


def test_short_credentials_refused_on_a_public_listener(tmp_path: Path) -> None:
    strong_secret = "s" * 32
    strong_key = "k" * 32

    def problems(http: dict[str, str], *, secret: str = strong_secret, keys: list[str] | None = None, algs: list[str] | None = None) -> dict[str, str]:
        data = {
            "http": http,
            "auth": {"hs256_secret": secret, "algorithms": algs or ["HS256"]},
            "api": {"keys": [strong_key] if keys is None else keys},
        }
        try:
            load_config(tmp_path / "c.toml", env={}, data=data)
        except ConfigError as exc:
            return dict(exc.problems)
        return {}

    public = {"listen": "0.0.0.0:8700"}
    assert problems(public) == {}
    found = problems(public, secret="s" * 31, keys=[strong_key, "short-key"])
    assert set(found) == {"auth.hs256_secret", "api.keys[1]"}
    assert "31 bytes" in found["auth.hs256_secret"] and "RFC 7518" in found["auth.hs256_secret"]
    assert "http.listen" in found["auth.hs256_secret"]
    assert "short-key" not in found["api.keys[1]"]  # the key is named, its value is not shown
    # Bytes, not characters: 16 two-byte characters are 32 bytes.
    assert problems(public, secret="é" * 16) == {}
    # HS512 needs a 64-byte secret.
    assert "HS512" in problems(public, secret="s" * 48, algs=["HS256", "HS512"])["auth.hs256_secret"]
    # A public internal listener counts too; loopback listeners only are not checked.
    assert set(problems({"listen": "127.0.0.1:8700", "internal_listen": "10.0.0.5:8701"}, keys=["k"])) == {"api.keys[0]"}
    assert problems({"listen": "127.0.0.1:8700"}, secret="short", keys=["k"]) == {}
    # An HMAC secret that no allowed algorithm uses is not checked.
    assert problems(public, secret="short", algs=["RS256"]) == {}


def test_reference_covers_every_key() -> None:
    keys = {key for key, _, _ in reference_rows()}
    assert "gateway.max_frame_bytes" in keys
    assert "namespaces[].recovery_cap" in keys
    assert all(help_text for _, _, help_text in reference_rows())


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIMED__")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "realtimed", *args], capture_output=True, text=True, env=full_env, timeout=60
    )


def test_check_config_prints_effective_config_redacted() -> None:
    result = _cli("check-config", str(ROOT / "realtimed.toml"))
    assert result.returncode == 0, result.stderr
    shown = orjson.loads(result.stdout)
    assert shown["auth"]["hs256_secret"] == REDACTED
    assert shown["http"]["listen"] == "127.0.0.1:8700"


def test_check_config_exits_2_with_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[log]\nlevel = "loud"\n[gateway]\nheartbeat_s = 0\nmystery = 1\n')
    result = _cli("check-config", str(bad))
    assert result.returncode == 2
    assert "log.level" in result.stderr
    assert "gateway.heartbeat_s" in result.stderr
    assert "gateway.mystery: unknown key" in result.stderr


def test_bad_environment_value_fails_as_clearly_as_the_file() -> None:
    result = _cli(
        "check-config", str(ROOT / "realtimed.toml"), env={"REALTIMED__GATEWAY__HEARTBEAT_S": "often"}
    )
    assert result.returncode == 2
    assert "gateway.heartbeat_s (from REALTIMED__GATEWAY__HEARTBEAT_S): expected a number, got 'often'" in result.stderr


def test_token_command_prints_only_a_token() -> None:
    import jwt

    result = _cli("token", "-c", str(ROOT / "realtimed.toml"), "--sub", "alice", "--ttl", "15m", "--rooms", "job:*")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert "\n" not in token
    claims = jwt.decode(token, DEV_HS256_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["rooms"] == ["job:*"]
    assert 890 <= claims["exp"] - claims["iat"] <= 910


def test_readme_configuration_reference_is_current() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import config_reference
    finally:
        sys.path.pop(0)
    text = (ROOT / "README.md").read_text()
    assert config_reference.rewrite(text) == text, "run: python scripts/config_reference.py --write"


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "config").glob("*.toml")))
def test_example_configs_are_valid(name: str, tmp_path: Path) -> None:
    text = (ROOT / "config" / name).read_text().replace("/etc/realtimed/", f"{tmp_path}/")
    contents = {
        "postgres_dsn": "postgresql://realtimed:pw@127.0.0.1:5432/realtimed\n",
        "redis_url": "redis://127.0.0.1:6379/0\n",
        "api_keys": "backend:rtd_" + "k" * 40 + "\n",
    }
    # The same secrets as files (*_file) and as systemd credentials (*_credential).
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for secret in ("postgres_dsn", "redis_url", "api_keys", "tls_cert", "tls_key"):
        (tmp_path / secret).write_text(contents.get(secret, "x\n"))
        (credentials / secret).write_text(contents.get(secret, "x\n"))
    cfg = load_config(tmp_path / name, env={"CREDENTIALS_DIRECTORY": str(credentials)}, text=text)
    assert cfg.store.backend == "postgres"
    assert cfg.api.key_values == ["rtd_" + "k" * 40]


def test_token_command_refuses_bad_input_clearly() -> None:
    result = _cli("token", "-c", str(ROOT / "realtimed.toml"), "--sub", "alice", "--rooms", "bad*pattern")
    assert result.returncode == 2
    assert "cannot mint" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379", "unknown scheme 'http://'"),
        ("127.0.0.1:6379", "expected a URL such as redis://"),
        ("redis+sentinel://:pw@s1:26379,s2:26379", "needs the service name"),
        ("redis+sentinel://s1:26379/", "needs the service name"),
        ("redis+sentinel://s1:26379/main/zero", "database after the service name must be a number"),
        ("redis+sentinel://s1/main?sentinel_pasword=x", "unknown option 'sentinel_pasword'"),
        ("redis+cluster://n1:7000,,n2:7001", "empty host"),
        ("redis+cluster://n1:7000,n2:port", "malformed host 'n2:port'"),
        ("redis+cluster://n1:70000", "from 1 to 65535"),
        ("redis+cluster://n1:7000,::1:7001", "write IPv6 addresses as [address]:port"),
        ("redis+cluster://[::1:7000", "malformed IPv6 host"),
        ("redis+cluster://", "no host"),
        ("redis+cluster://n1:7000/3", "only database 0"),
        ("redis://a:6379,b:6379/0", "several hosts need redis+sentinel:// or redis+cluster://"),
        ("redis://:pw@a:6379/main", "must be a database number"),
    ],
)
def test_redis_url_mistakes_name_the_key(url: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.toml", env={}, data={"broker": {"backend": "redis", "redis_url": url}})
    [(key, text)] = info.value.problems
    assert key == "broker.redis_url"
    assert message in text
    assert "pw" not in text  # the URL is a secret: never echoed whole


def test_redis_urls_of_every_topology_load(tmp_path: Path) -> None:
    from realtimed.redis_url import parse_redis_url

    for url in (
        "redis://127.0.0.1:6379/0",
        "rediss://:pw@cache.example:6380/2",
        "unix:///run/redis.sock?db=1",
        "redis+sentinel://:pw@s1:26379,s2,[::1]:26380/main/3?sentinel_password=sp",
        "redis+cluster://user:pw@n1:7000,n2:7001,[::1]:7002",
    ):
        assert load_config(tmp_path / "c.toml", env={}, data={"broker": {"redis_url": url}}).broker.redis_url == url
    sentinel = parse_redis_url("redis+sentinel://:p%40ss@s1:26379,s2,[::1]:26380/main/3?sentinel_password=sp")
    assert sentinel.kind == "sentinel" and sentinel.service == "main" and sentinel.db == 3
    assert sentinel.hosts == (("s1", 26379), ("s2", 26379), ("::1", 26380))
    assert (sentinel.username, sentinel.password, sentinel.sentinel_password) == (None, "p@ss", "sp")
    assert "p@ss" not in repr(sentinel) and "sp" not in repr(sentinel)
    cluster = parse_redis_url("redis+cluster://user:pw@n1:7000,n2")
    assert cluster.kind == "cluster" and cluster.hosts == (("n1", 7000), ("n2", 6379))
    assert (cluster.username, cluster.password) == ("user", "pw")


def test_redis_url_from_a_file_is_validated_and_redacted(tmp_path: Path) -> None:
    (tmp_path / "redis_url").write_text("redis+cluster://:pw@n1:7000,n2:7001\n")
    text = '[broker]\nbackend = "redis"\nredis_url_file = "redis_url"\n'
    cfg = load_config(tmp_path / "c.toml", env={}, text=text)
    assert cfg.broker.redis_url == "redis+cluster://:pw@n1:7000,n2:7001"
    assert config_to_dict(cfg)["broker"]["redis_url"] == REDACTED
    (tmp_path / "redis_url").write_text("redis+sentinel://:pw@s1:26379\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.toml", env={}, text=text)
    assert info.value.problems[0][0] == "broker.redis_url"


def test_op_limits_merge_over_the_defaults() -> None:
    cfg = load_config(None, env={}, text='[gateway.op_limits]\n"message.send" = {per = 10, window_s = 5}\n')
    limits = cfg.gateway.op_limits
    assert (limits["message.send"].per, limits["message.send"].window_s) == (10, 5.0)
    # The entries not named keep their defaults.
    assert limits["*"] == DEFAULT_OP_LIMITS["*"]
    assert limits["conversation.open"] == DEFAULT_OP_LIMITS["conversation.open"]
    # check-config shows them as plain tables.
    assert config_to_dict(cfg)["gateway"]["op_limits"]["message.send"] == {"per": 10, "window_s": 5.0}


def test_op_limits_mistakes_name_their_key() -> None:
    text = """
[gateway.op_limits]
"message.sned" = {per = 10, window_s = 10}
ping = {per = 5, window_s = 1}
"*" = {per = 0, window_s = -1, burst = 3}
"message.send" = 5
"message.edit" = {per = 1.5, window_s = "10"}
"""
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, text=text)
    problems = dict(info.value.problems)
    assert "unknown op 'message.sned'" in problems['gateway.op_limits."message.sned"']
    assert "ping is not counted per user" in problems["gateway.op_limits.ping"]
    assert problems['gateway.op_limits."*".per'] == "must be at least 1, got 0"
    assert problems['gateway.op_limits."*".window_s'] == "must be at least 0.001, got -1.0"
    assert problems['gateway.op_limits."*".burst'] == "unknown key"
    assert problems['gateway.op_limits."message.send"'] == "expected a table, got 5"
    assert problems['gateway.op_limits."message.edit".per'] == "expected an integer, got 1.5"
    assert problems['gateway.op_limits."message.edit".window_s'] == "expected a number, got '10'"
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, text="[gateway]\nop_limits = 3\nban_cache_s = -1\n")
    problems = dict(info.value.problems)
    assert problems["gateway.op_limits"] == "expected a table, got 3"
    assert problems["gateway.ban_cache_s"] == "must be at least 0, got -1.0"


def test_reference_lists_op_limit_entries() -> None:
    keys = {key for key, _, _ in reference_rows()}
    assert {"gateway.op_limits", "gateway.op_limits.<name>.per", "gateway.op_limits.<name>.window_s"} <= keys
