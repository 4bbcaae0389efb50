"""Secrets from systemd credentials (``<key>_credential``): a file of
``$CREDENTIALS_DIRECTORY``, which the unit's ``LoadCredential=`` fills."""

from __future__ import annotations

from pathlib import Path

import pytest

from realtimed.config import REDACTED, ConfigError, config_to_dict, load_config


@pytest.fixture
def creds(tmp_path: Path) -> Path:
    folder = tmp_path / "credentials"
    folder.mkdir()
    (folder / "hs").write_text("a-secret-of-at-least-32-bytes-xxxxxxxx\n")
    (folder / "keys").write_text("# the backend's keys\nbackend:rtd_first_key\nrtd_bare_key\n\n")
    (folder / "tls_key").write_text("-----BEGIN PRIVATE KEY-----\n")
    (folder / "tls_cert").write_text("-----BEGIN CERTIFICATE-----\n")
    (folder / "fcm").write_text("{}\n")
    return folder


def _problems(tmp_path: Path, text: str, env: dict[str, str]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.toml", env=env, text=text)
    return dict(info.value.problems)


def test_secret_values_and_files_from_credentials(tmp_path: Path, creds: Path) -> None:
    text = (
        '[http]\ntls_cert_credential = "tls_cert"\ntls_key_credential = "tls_key"\n'
        '[auth]\nhs256_secret_credential = "hs"\n'
        '[api]\nkeys_credential = "keys"\n'
        '[push]\nservice_account_credential = "fcm"\n'
    )
    cfg = load_config(tmp_path / "c.toml", env={"CREDENTIALS_DIRECTORY": str(creds)}, text=text)
    assert cfg.auth.hs256_secret == "a-secret-of-at-least-32-bytes-xxxxxxxx"
    assert [(k.name, k.key) for k in cfg.api.keys] == [("backend", "rtd_first_key"), ("keys[1]", "rtd_bare_key")]
    # A credential that stands for a file gives its path: the daemon opens it there.
    assert cfg.http.tls_key_file == str(creds / "tls_key")
    assert cfg.http.tls_cert_file == str(creds / "tls_cert")
    assert cfg.push.service_account_file == str(creds / "fcm")
    shown = config_to_dict(cfg)
    assert shown["auth"]["hs256_secret"] == REDACTED
    assert shown["api"]["keys"][0] == {"name": "backend", "key": REDACTED}


def test_one_api_key_from_its_own_credential(tmp_path: Path, creds: Path) -> None:
    (creds / "ci").write_text("rtd_ci_key\n")
    text = '[[api.keys]]\nname = "ci"\nkey_credential = "ci"\n[[api.keys]]\nname = "web"\nkey = "rtd_web_key"\n'
    cfg = load_config(tmp_path / "c.toml", env={"CREDENTIALS_DIRECTORY": str(creds)}, text=text)
    assert [(k.name, k.key) for k in cfg.api.keys] == [("ci", "rtd_ci_key"), ("web", "rtd_web_key")]


def test_credentials_without_systemd_are_a_clear_problem(tmp_path: Path) -> None:
    problems = _problems(tmp_path, '[auth]\nhs256_secret_credential = "hs"\n', env={})
    assert "CREDENTIALS_DIRECTORY is not set" in problems["auth.hs256_secret_credential"]
    assert "LoadCredential=hs:PATH" in problems["auth.hs256_secret_credential"]


def test_missing_credential_names_the_unit_line(tmp_path: Path, creds: Path) -> None:
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    problems = _problems(tmp_path, '[store]\npostgres_dsn_credential = "dsn"\n[http]\ntls_key_credential = "nope"\n', env)
    assert "no credential 'dsn'" in problems["store.postgres_dsn_credential"]
    assert "LoadCredential=dsn:PATH" in problems["store.postgres_dsn_credential"]
    assert "no credential 'nope'" in problems["http.tls_key_credential"]
    # A folder in the credentials folder is not a credential.
    (creds / "folder").mkdir()
    problems = _problems(tmp_path, '[auth]\nhs256_secret_credential = "folder"\n', env)
    assert "no credential 'folder'" in problems["auth.hs256_secret_credential"]


@pytest.mark.parametrize("name", ["../outside", "a/b", ".hidden", "-x", "", "x" * 65, "sp ace", "colon:x", 5, ["hs"]])
def test_credential_names_stay_inside_the_credentials_folder(tmp_path: Path, creds: Path, name: object) -> None:
    (creds.parent / "outside").write_text("not a credential\n")
    text = "[auth]\nhs256_secret_credential = " + (f'"{name}"' if isinstance(name, str) else repr(name).replace("'", '"'))
    problems = _problems(tmp_path, text + "\n", {"CREDENTIALS_DIRECTORY": str(creds)})
    assert "expected a credential name" in problems["auth.hs256_secret_credential"]


def test_one_source_per_secret(tmp_path: Path, creds: Path) -> None:
    (tmp_path / "hs_file").write_text("x" * 40)
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    for text, keys in (
        ('[auth]\nhs256_secret = "x"\nhs256_secret_credential = "hs"\n', {"auth.hs256_secret_credential"}),
        ('[auth]\nhs256_secret_file = "hs_file"\nhs256_secret_credential = "hs"\n', {"auth.hs256_secret_file", "auth.hs256_secret_credential"}),
        ('[http]\ntls_cert_file = "c.pem"\ntls_key_file = "k.pem"\ntls_key_credential = "tls_key"\n', {"http.tls_key_credential"}),
    ):
        problems = _problems(tmp_path, text, env)
        assert set(problems) == keys, text
        assert all(message.startswith("give only one of") for message in problems.values())


def test_secret_that_is_not_text_is_a_problem_not_a_crash(tmp_path: Path, creds: Path) -> None:
    (creds / "binary").write_bytes(b"\xff\xfe\x00secret")
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00secret")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    problems = _problems(tmp_path, '[auth]\nhs256_secret_credential = "binary"\n[api]\nkeys_file = "binary"\n', env)
    assert "is not UTF-8 text" in problems["auth.hs256_secret_credential"]
    assert "is not UTF-8 text" in problems["api.keys_file"]
    config = tmp_path / "latin1.toml"
    config.write_bytes(b'[server]\nnode = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(config, env={})
    assert "is not UTF-8 text" in info.value.problems[0][1]


def test_files_read_are_recorded(tmp_path: Path, creds: Path) -> None:
    (tmp_path / "keys").write_text("backend:rtd_k\n")
    config = tmp_path / "c.toml"
    config.write_text('[api]\nkeys_file = "keys"\n[auth]\nhs256_secret_credential = "hs"\n')
    cfg = load_config(config, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.files_read == (("", str(config)), ("api.keys_file", str(tmp_path / "keys")))
