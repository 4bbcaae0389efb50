"""The documented production install (README, "Install"), run into a scratch root.

There is no systemd PID 1 here, so the module does what the README does and then
what systemd would do, by hand:

1. build the wheel (``pip wheel --no-deps``; here also ``--no-build-isolation
   --no-index`` from a copy of the sources, so that nothing is downloaded and the
   worktree gets no ``build/``);
2. ``python -m venv <root>/opt/realtimed`` and ``<root>/opt/realtimed/bin/pip install
   --no-deps --no-index realtimed-*.whl``. The dependencies would come from PyPI;
   here they come from the running test environment, through a ``.pth`` file in
   the new venv that names its site-packages (``--system-site-packages`` would not
   do: a venv made from a venv's Python gets the *base* interpreter's site-packages).
   A ``.pth`` line only adds a path, so the running environment's editable
   realtimed is never imported: the test checks that the wheel's copy runs;
3. ``<root>/opt/realtimed/bin/realtimed install-systemd --root <root> --user <u>``,
   with a throwaway system user (created by useradd and removed at the end) in place
   of ``realtimed``;
4. systemd's part: the sysusers.d file through ``systemd-sysusers --root``, the unit
   through ``systemd-analyze verify`` (the binary is where ``ExecStart=`` names it)
   and ``systemd-analyze security --offline=true`` (at most 1.6), then a start as the
   unit describes it: ``StateDirectory=``, each ``LoadCredential=`` copied into a
   credentials folder the user owns (``$CREDENTIALS_DIRECTORY``), ``Environment=``,
   ``WorkingDirectory=``, and ``ExecStart=`` under ``setpriv --reuid --regid
   --clear-groups``. Paths under /etc and /var are taken under the scratch root, and
   ``REALTIMED__HTTP__LISTEN`` picks a free port.

It needs root (owners, setpriv, useradd); without it the module is skipped.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import site
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import jwt
import pytest
import trio

from realtimed.config import load_config
from realtimed.install import (
    DEFAULT_CONFIG,
    DOCUMENTED_EXEC,
    credential_names,
    render_unit,
    unreadable_files,
    why_unreadable,
)

ROOT = Path(__file__).resolve().parent.parent
ANALYZE = shutil.which("systemd-analyze")


def _need(what: str) -> None:
    """Skip locally; under CI the install test must run, so fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI installs it: see .ci/run)")
    pytest.skip(what)


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a root shell: none of the test run's own settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "CREDENTIALS_DIRECTORY", "VIRTUAL_ENV") and not k.startswith("REALTIMED__")
    }
    env.update(extra)
    return env


def _run(*command: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command as a root shell would, from / (so that no folder of the test run is
    on the path of a ``python -c``)."""
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=60, check=False, env=_clean_env(), cwd="/"
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@dataclass
class Installed:
    root: Path
    venv: Path
    user: str
    install_output: str

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    @property
    def exe(self) -> Path:
        return self.venv / "bin" / "realtimed"

    def unit(self) -> dict[str, list[str]]:
        """The [Service] and [Unit] settings of the installed unit, each with its values."""
        settings: dict[str, list[str]] = {}
        for line in self.path("/etc/systemd/system/realtimed.service").read_text().splitlines():
            if line and not line.startswith(("#", "[")):
                key, _, value = line.partition("=")
                settings.setdefault(key, []).append(value)
        return settings


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    if os.geteuid() != 0:
        pytest.skip("the install test sets owners and switches users: it needs root")
    for tool in ("setpriv", "useradd", "userdel"):
        if shutil.which(tool) is None:
            _need(f"{tool} is not installed")
    user = f"rtdt{secrets.token_hex(4)}"
    # Not under pytest's tmp_path: its folders are 0700, and the service user must
    # reach the venv and the configuration.
    root = Path(tempfile.mkdtemp(prefix="realtimed-install-"))
    try:
        root.chmod(0o755)
        _run("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", user)
        yield _install(root, user)
    finally:
        subprocess.run(["userdel", user], capture_output=True, timeout=30, check=False)
        shutil.rmtree(root, ignore_errors=True)


def _install(root: Path, user: str) -> Installed:
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "realtimed", src / "realtimed", ignore=shutil.ignore_patterns("__pycache__"))
    dist = root / "dist"
    _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "--disable-pip-version-check", "-q", "-w", dist, src
    )
    (wheel,) = dist.glob("realtimed-*.whl")
    venv = root / "opt" / "realtimed"
    _run(sys.executable, "-m", "venv", venv)
    (purelib,) = (venv / "lib").glob("python3*/site-packages")
    ours = [p for p in site.getsitepackages() if p.startswith(sys.prefix)]
    (purelib / "_test_dependencies.pth").write_text("\n".join(ours) + "\n")
    _run(venv / "bin" / "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", "-q", wheel)
    where = _run(venv / "bin" / "python", "-c", "import realtimed; print(realtimed.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(purelib), "the wheel's realtimed must be the one that runs"
    result = _run(venv / "bin" / "realtimed", "install-systemd", "--root", root, "--user", user)
    return Installed(root=root, venv=venv, user=user, install_output=result.stdout + result.stderr)


# -- what install-systemd wrote ---------------------------------------------------------------


@pytest.mark.slow
def test_files_owners_and_modes(installed: Installed) -> None:
    group = installed.user
    expected = {
        "/etc/systemd/system/realtimed.service": ("root", "root", 0o644),
        "/etc/sysusers.d/realtimed.conf": ("root", "root", 0o644),
        "/etc/realtimed": ("root", "root", 0o755),
        "/etc/realtimed/realtimed.toml": ("root", group, 0o640),
        "/etc/realtimed/credentials": ("root", "root", 0o700),
        "/etc/realtimed/credentials/api_keys": ("root", "root", 0o600),
        "/etc/realtimed/credentials/hs256_secret": ("root", "root", 0o600),
        "/usr/local/share/doc/realtimed/README.md": ("root", "root", 0o644),
    }
    import grp

    for path, (owner, group_name, mode) in expected.items():
        st = installed.path(path).stat()
        found = (pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode))
        assert found == (owner, group_name, mode), path
    assert installed.path("/etc/realtimed/realtimed.toml").read_text() == DEFAULT_CONFIG
    # Generated secrets are strong enough for a listener that is not loopback.
    secret = installed.path("/etc/realtimed/credentials/hs256_secret").read_text().strip()
    assert len(secret) >= 64
    name, _, key = installed.path("/etc/realtimed/credentials/api_keys").read_text().strip().partition(":")
    assert name == "backend" and len(key) >= 32
    unit = installed.unit()
    assert unit["ExecStart"] == [f"{installed.exe} run -c /etc/realtimed/realtimed.toml"]
    assert unit["User"] == unit["Group"] == [installed.user]
    assert "DynamicUser" not in unit
    assert sorted(unit["LoadCredential"]) == [
        "api_keys:/etc/realtimed/credentials/api_keys",
        "hs256_secret:/etc/realtimed/credentials/hs256_secret",
    ]
    (doc,) = unit["Documentation"]
    assert installed.path(doc.removeprefix("file://")).read_text().startswith("# realtimed")


@pytest.mark.slow
def test_install_again_keeps_the_configuration_and_secrets(installed: Installed) -> None:
    before = {
        name: installed.path(f"/etc/realtimed/{name}").read_text()
        for name in ("realtimed.toml", "credentials/api_keys", "credentials/hs256_secret")
    }
    config = installed.path("/etc/realtimed/realtimed.toml")
    config.chmod(0o600)  # an operator's slip: the service could not read it
    result = _run(installed.exe, "install-systemd", "--root", installed.root, "--user", installed.user)
    assert "kept" in result.stdout
    after = {
        name: installed.path(f"/etc/realtimed/{name}").read_text()
        for name in ("realtimed.toml", "credentials/api_keys", "credentials/hs256_secret")
    }
    assert after == before
    assert stat.S_IMODE(config.stat().st_mode) == 0o640


@pytest.mark.slow
def test_sysusers_file_creates_the_user(installed: Installed) -> None:
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        _need("systemd-sysusers is not installed (Debian package systemd)")
    target = installed.root / "sysusers-root"
    (target / "etc").mkdir(parents=True)
    _run(sysusers, f"--root={target}", installed.path("/etc/sysusers.d/realtimed.conf"))
    entry = next(
        line.split(":") for line in (target / "etc/passwd").read_text().splitlines() if line.startswith(installed.user + ":")
    )
    assert entry[5:] == ["/var/lib/realtimed", "/usr/sbin/nologin"]


@pytest.mark.slow
def test_unit_verifies_and_stays_sandboxed(installed: Installed) -> None:
    if ANALYZE is None:
        _need("systemd-analyze is not installed (Debian package systemd)")
    unit = installed.path("/etc/systemd/system/realtimed.service")
    verify = _run(ANALYZE, "verify", unit, check=False)
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr == "", verify.stderr
    security = _run(ANALYZE, "security", "--offline=true", unit, check=False)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert found is not None, security.stdout
    assert float(found.group(1)) <= 1.6


def test_repository_unit_is_what_install_writes() -> None:
    """systemd/realtimed.service is the unit of the documented install (/opt/realtimed)."""
    expected = render_unit(exec_path=DOCUMENTED_EXEC, credentials=credential_names(DEFAULT_CONFIG))
    assert (ROOT / "systemd" / "realtimed.service").read_text() == expected, (
        "run: realtimed install-systemd --print-unit --exec /opt/realtimed/bin/realtimed > systemd/realtimed.service"
    )


def test_readme_shows_the_commands_this_test_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    for command in (
        "pip wheel --no-deps -w dist .",
        "python3 -m venv /opt/realtimed",
        "/opt/realtimed/bin/pip install ./dist/realtimed-",
        "/opt/realtimed/bin/realtimed install-systemd",
        "/opt/realtimed/bin/realtimed check-config --as-user realtimed --credentials /etc/realtimed/credentials "
        "/etc/realtimed/realtimed.toml",
        "systemctl daemon-reload && sudo systemctl enable --now realtimed",
    ):
        assert command in readme, command


# -- the service, as systemd would start it ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_systemd_would(installed: Installed, port: int) -> tuple[list[str], dict[str, str], Path]:
    """The command, environment and working folder systemd would start the unit with."""
    unit = installed.unit()
    uid = pwd.getpwnam(unit["User"][0]).pw_uid
    import grp

    gid = grp.getgrnam(unit["Group"][0]).gr_gid

    def rooted(value: str) -> str:
        return str(installed.path(value)) if value.startswith(("/etc/", "/var/")) else value

    (state_name,) = unit["StateDirectory"]
    state = installed.path(f"/var/lib/{state_name}")
    state.mkdir(parents=True, exist_ok=True)
    os.chown(state, uid, gid)
    state.chmod(int(unit["StateDirectoryMode"][0], 8))
    credentials = installed.root / "run" / "credentials" / "realtimed.service"
    credentials.mkdir(parents=True, exist_ok=True)
    for line in unit["LoadCredential"]:
        name, _, source = line.partition(":")
        target = credentials / name
        shutil.copyfile(rooted(source), target)
        os.chown(target, uid, gid)
        target.chmod(0o400)
    os.chown(credentials, uid, gid)
    credentials.chmod(0o500)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "CREDENTIALS_DIRECTORY": str(credentials)}
    for assignment in unit.get("Environment", []):
        key, _, value = assignment.partition("=")
        env[key] = rooted(value)
    env["REALTIMED__HTTP__LISTEN"] = f"127.0.0.1:{port}"
    (exec_start,) = unit["ExecStart"]
    command = [
        "setpriv", f"--reuid={unit['User'][0]}", f"--regid={unit['Group'][0]}", "--clear-groups",
        *(rooted(arg) for arg in exec_start.split()),
    ]
    return command, env, Path(rooted(unit["WorkingDirectory"][0]))


@pytest.mark.slow
async def test_service_starts_as_its_user_with_credentials(installed: Installed) -> None:
    port = _free_port()
    command, env, cwd = _as_systemd_would(installed, port)
    api_key = installed.path("/etc/realtimed/credentials/api_keys").read_text().strip().partition(":")[2]
    secret = installed.path("/etc/realtimed/credentials/hs256_secret").read_text().strip()
    with trio.fail_after(40), tempfile.TemporaryFile() as log:
        proc = await trio.lowlevel.open_process(command, env=env, cwd=str(cwd), stdout=log, stderr=log)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                ready = None
                while ready is None or ready.status_code != 200:
                    assert proc.poll() is None, _read(log)
                    await trio.sleep(0.1)
                    try:
                        ready = await client.get("/readyz")
                    except httpx.TransportError:
                        continue
                assert ready.json()["backends"] == {"store": "ok", "broker": "ok"}
                # The API key came from its credential, and its name is logged.
                published = await client.post(
                    "/server/v1/publish",
                    json={"room": "job:1", "event": "job.progress", "data": {"pct": 1}},
                    headers={"Authorization": f"Bearer {api_key}"},
                )
                assert published.status_code == 200, published.text
                # So did the HS256 secret: a token it signs opens the client API.
                now = int(time.time())
                token = jwt.encode({"sub": "alice", "iat": now, "exp": now + 60}, secret, algorithm="HS256")
                inbox = await client.get("/api/v1/notifications", headers={"Authorization": f"Bearer {token}"})
                assert inbox.status_code == 200, inbox.text
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0, _read(log)
        finally:
            if proc.poll() is None:
                proc.kill()
                await proc.wait()
        output = _read(log)
    assert "server API POST /server/v1/publish -> 200 with API key backend" in output
    assert "Traceback" not in output
    state = installed.path("/var/lib/realtimed/realtimed.db")
    assert pwd.getpwuid(state.stat().st_uid).pw_name == installed.user


def _read(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")


# -- files the service user could not read -------------------------------------------------------


@pytest.mark.slow
async def test_check_config_as_the_service_user(installed: Installed) -> None:
    """The README's check passes on the install, and names every file the user could not read."""
    etc = installed.path("/etc/realtimed")
    credentials = str(etc / "credentials")
    with trio.fail_after(30):
        good = await trio.run_process(
            [installed.exe, "check-config", "--as-user", installed.user, "--credentials", credentials, etc / "realtimed.toml"],
            capture_stdout=True, capture_stderr=True, check=False, env=_clean_env(), cwd="/",
        )
        assert good.returncode == 0, good.stderr
        # What the issue saw: a configuration and secrets as root:root files.
        for name in ("keys", "tls.key", "tls.crt"):
            (etc / name).write_text("backend:" + "k" * 40 + "\n" if name == "keys" else "pem\n")
            (etc / name).chmod(0o600)
        broken = etc / "broken.toml"
        broken.write_text(
            '[http]\nlisten = "127.0.0.1:8700"\n'
            f'tls_cert_file = "{etc}/tls.crt"\ntls_key_file = "{etc}/tls.key"\n'
            f'[auth]\nhs256_secret_credential = "hs256_secret"\n[api]\nkeys_file = "{etc}/keys"\n'
        )
        broken.chmod(0o640)
        checked = await trio.run_process(
            [installed.exe, "check-config", "--as-user", installed.user, "--credentials", credentials, broken],
            capture_stdout=True, capture_stderr=True, check=False, env=_clean_env(), cwd="/",
        )
        assert checked.returncode == 2
        problems = checked.stderr.decode()
        for key, path in (("(file)", broken), ("api.keys_file", etc / "keys"), ("http.tls_key_file", etc / "tls.key"),
                          ("http.tls_cert_file", etc / "tls.crt")):
            assert f"  {key}: {installed.user} cannot read {path} (root:root 06" in problems, problems
        assert "hs256_secret" not in problems  # systemd hands credentials over
        # The daemon itself, as that user, says the same in one line (no traceback), exit 2.
        command, env, cwd = _as_systemd_would(installed, _free_port())
        command[command.index(str(etc / "realtimed.toml"))] = str(broken)
        refused = await trio.run_process(command, env=env, cwd=str(cwd), capture_stdout=True, capture_stderr=True, check=False)
        assert refused.returncode == 2
        assert f"cannot read {broken}: Permission denied (as user {installed.user})" in refused.stderr.decode()
        assert b"Traceback" not in refused.stderr
        unknown = await trio.run_process(
            [installed.exe, "check-config", "--as-user", "no-such-user-here", etc / "realtimed.toml"],
            capture_stdout=True, capture_stderr=True, check=False, env=_clean_env(), cwd="/",
        )
        assert unknown.returncode == 2 and b"no user 'no-such-user-here'" in unknown.stderr


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder every user may enter (pytest's tmp_path lies under a 0700 folder)."""
    folder = Path(tempfile.mkdtemp(prefix="realtimed-access-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# -- check-config --as-user: by owner, group and mode -----------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="sets file owners: needs root")


@needs_root
def test_why_unreadable_follows_owner_group_other_and_every_folder(open_tmp: Path) -> None:
    folder = open_tmp / "etc"
    folder.mkdir()
    secret = folder / "secret"
    secret.write_text("x")
    os.chown(secret, 0, 0)
    secret.chmod(0o640)
    stranger, group_member = 54321, {0}
    assert why_unreadable(secret, stranger, {54321}) == f"cannot read {secret} (root:root 0640)"
    assert why_unreadable(secret, stranger, group_member | {54321}) is None  # group may read
    secret.chmod(0o604)
    assert why_unreadable(secret, stranger, {54321}) is None  # others may read
    # ... but the owner class decides for the owner, even when others may read.
    os.chown(secret, stranger, 0)
    secret.chmod(0o044)
    assert why_unreadable(secret, stranger, {0}) is not None
    os.chown(secret, 0, 0)
    secret.chmod(0o644)
    folder.chmod(0o700)
    assert why_unreadable(secret, stranger, {54321}) == f"cannot enter {folder} (root:root 0700)"
    folder.chmod(0o755)
    assert why_unreadable(folder / "missing", stranger, {54321}) == f"{folder / 'missing'} does not exist"
    assert why_unreadable(secret, 0, {0}) is None
    # A folder (a static mount) needs r and x.
    folder.chmod(0o751)
    assert why_unreadable(folder, stranger, {54321}, folder=True) == f"cannot read {folder} (root:root 0751)"


@needs_root
def test_unreadable_files_leave_credentials_to_systemd(open_tmp: Path) -> None:
    tmp_path = open_tmp
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name in ("hs", "tls_key", "tls_cert"):
        (creds / name).write_text("x" * 40 + "\n")
    (tmp_path / "keys").write_text("backend:rtd_k\n")
    (tmp_path / "keys").chmod(0o600)
    config = tmp_path / "c.toml"
    config.write_text(
        '[api]\nkeys_file = "keys"\n[auth]\nhs256_secret_credential = "hs"\n[http]\ntls_key_credential = "tls_key"\n'
        'tls_cert_credential = "tls_cert"\n'
    )
    config.chmod(0o644)
    creds.chmod(0o700)
    cfg = load_config(config, env={"CREDENTIALS_DIRECTORY": str(creds)})
    found = dict(unreadable_files(cfg, "nobody", str(creds)))
    assert set(found) == {"api.keys_file"}
    assert found["api.keys_file"] == f"nobody cannot read {tmp_path / 'keys'} (root:root 0600)"


@needs_root
@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (["--user", "Bad User"], None, "not a system user name"),
        (["--user", "x" * 40], None, "not a system user name"),
        (["--exec", "/opt/real timed/bin/realtimed"], None, "cannot be written into the unit"),
        (["--exec", "/opt/%n/realtimed"], None, "cannot be written into the unit"),
        (["--exec", "relative/realtimed"], None, "cannot be written into the unit"),
        ([], "[auth\n", "not valid TOML"),
        ([], '[auth]\nhs256_secret_credential = "../../etc/shadow"\n', "auth.hs256_secret_credential: expected a credential name"),
        ([], "[api]\nkeys_credential = 5\n", "api.keys_credential: expected a credential name"),
        ([], '[[api.keys]]\nname = "a"\nkey_credential = "a b"\n', "api.keys[0].key_credential: expected a credential name"),
    ],
)
def test_install_refuses_bad_input_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], config: str | None, message: str
) -> None:
    from realtimed.cli import main

    root = tmp_path / "root"
    root.mkdir()
    if config is not None:
        (tmp_path / "c.toml").write_text(config)
        args = [*args, "--config", str(tmp_path / "c.toml")]
    if "--exec" not in args:
        args = [*args, "--exec", "/opt/realtimed/bin/realtimed"]
    assert main(["install-systemd", "--root", str(root), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert list(root.iterdir()) == []


def test_print_unit_names_the_credentials_of_a_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from realtimed.cli import main

    config = tmp_path / "production.toml"
    config.write_text((ROOT / "config" / "production.toml").read_text())
    assert main(["install-systemd", "--print-unit", "--exec", DOCUMENTED_EXEC, "--config", str(config)]) == 0
    unit = capsys.readouterr().out
    loaded = sorted(line.split("=", 1)[1].split(":")[0] for line in unit.splitlines() if line.startswith("LoadCredential="))
    assert loaded == ["api_keys", "postgres_dsn", "redis_url", "tls_cert", "tls_key"]


@needs_root
def test_install_under_a_root_needs_the_users_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from realtimed.cli import main

    root = tmp_path / "root"
    root.mkdir()
    args = ["install-systemd", "--root", str(root), "--user", "no-such-user-x", "--exec", DOCUMENTED_EXEC]
    assert main(args) == 2
    assert "there is no group no-such-user-x on this machine" in capsys.readouterr().err
    assert list(root.iterdir()) == []
