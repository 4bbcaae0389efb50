"""``realtimed install-systemd``: the files a systemd machine needs to run realtimed.

One command, run as root from the Python environment realtimed is installed in
(``/opt/realtimed/bin/realtimed install-systemd``), writes under ``--root``
(default ``/``):

- ``etc/systemd/system/realtimed.service``: the unit (``UNIT_TEMPLATE``), whose
  ``ExecStart=`` names the ``realtimed`` of that environment and which loads, with
  ``LoadCredential=``, every credential the configuration names;
- ``etc/sysusers.d/realtimed.conf``: the system user the unit runs as (created at
  once on ``/``; at boot by systemd-sysusers elsewhere);
- ``etc/realtimed/realtimed.toml``: the configuration (``DEFAULT_CONFIG``, or
  ``--config FILE``), ``root:realtimed 0640`` so that the service user reads it;
  an existing one is kept, its owner and mode fixed;
- ``etc/realtimed/credentials/``: ``root:root 0700``, where systemd (as root)
  reads each credential from; the ones realtimed can make (the HS256 secret, API
  keys) are generated when missing, the others are reported;
- ``usr/local/share/doc/realtimed/README.md``: the unit's ``Documentation=``.

The repository's ``systemd/realtimed.service`` is what this writes for the
documented install (``/opt/realtimed``); tests/test_install.py keeps it in sync.

``unreadable_files`` answers ``check-config --as-user``: which of the files a
configuration reads the service user could not read.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

from realtimed.config import CREDENTIAL_NAME, Config

DEFAULT_USER: Final = "realtimed"
CONFIG_PATH: Final = "/etc/realtimed/realtimed.toml"
CREDENTIALS_DIR: Final = "/etc/realtimed/credentials"
STATE_DIR: Final = "/var/lib/realtimed"
UNIT_PATH: Final = "/etc/systemd/system/realtimed.service"
SYSUSERS_PATH: Final = "/etc/sysusers.d/realtimed.conf"
DOC_PATH: Final = "/usr/local/share/doc/realtimed/README.md"
#: Where the documented install puts realtimed (README, "Install").
DOCUMENTED_EXEC: Final = "/opt/realtimed/bin/realtimed"

# A user name that useradd and systemd-sysusers both accept.
_USER_NAME: Final = re.compile(r"[a-z_][a-z0-9_-]{0,30}")
# What a path may hold to be written into the unit unquoted (systemd expands % and $).
_UNIT_SAFE_PATH: Final = re.compile(r"/[A-Za-z0-9_./+@:-]*")

UNIT_TEMPLATE: Final = """\
# realtimed as a systemd service, as `realtimed install-systemd` writes it (README, "Install").
# This file is generated: local changes belong in a drop-in (systemctl edit realtimed),
# and running install-systemd again rewrites it, with a LoadCredential= line for every
# <key>_credential the configuration names.
#
# Reload (log level, limits, JWT keys, API keys, templates): systemctl reload realtimed
# Drain and stop within shutdown.grace_s:                   systemctl stop realtimed
[Unit]
Description=realtimed realtime daemon (chat, presence, notifications, push, jobs)
Documentation=file://{doc}
Wants=network-online.target
After=network-online.target postgresql.service redis-server.service

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec} run -c {config}
ExecReload=/bin/kill -HUP $MAINPID
KillSignal=SIGTERM
KillMode=mixed
# A little more than shutdown.grace_s, so a drain finishes before systemd kills.
TimeoutStopSec=45
TimeoutStartSec=60
WatchdogSec=30
Restart=on-failure
RestartSec=2

# The system user of {sysusers}: it reads the configuration
# (root:{group} 0640) and owns the state directory.
User={user}
Group={group}
StateDirectory=realtimed
StateDirectoryMode=0750
ConfigurationDirectory=realtimed
WorkingDirectory={state}
Environment=REALTIMED__SERVER__STATE_DIR={state}
Environment=PYTHONUNBUFFERED=1
{credentials}
# A hundred thousand sockets and then some.
LimitNOFILE=262144

NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
RemoveIPC=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
CapabilityBoundingSet=
AmbientCapabilities=
UMask=0027

[Install]
WantedBy=multi-user.target
"""

_CREDENTIALS_COMMENT: Final = """\
# Secrets: systemd reads each as root from {dir}/ and hands it to
# the service in $CREDENTIALS_DIRECTORY, where <key>_credential = "NAME" finds it."""

SYSUSERS_TEMPLATE: Final = """\
# The system user realtimed runs as (written by realtimed install-systemd).
u {user} - "realtimed daemon" {state} /usr/sbin/nologin
"""

DEFAULT_CONFIG: Final = """\
# realtimed, as `realtimed install-systemd` installs it: one node on the embedded
# defaults (SQLite under the state directory, the in-process broker), listening on
# loopback behind a TLS proxy (README, "TLS"). Every key is in the README's
# "Configuration" (/usr/local/share/doc/realtimed/README.md); config/production.toml
# in the source shows PostgreSQL, Redis and TLS.
#
# Secrets are systemd credentials: <key>_credential = "NAME" reads
# /etc/realtimed/credentials/NAME, which only root reads and systemd hands to the
# service. After naming a new one, run install-systemd again (the unit then loads
# it), then: systemctl daemon-reload && systemctl restart realtimed
#
# Check this file as the service reads it:
#   sudo realtimed check-config --as-user realtimed --credentials /etc/realtimed/credentials /etc/realtimed/realtimed.toml

[server]
state_dir = "/var/lib/realtimed"

[http]
listen = "127.0.0.1:8700"

[auth]
# The application's backend signs user tokens with this secret (HS256); or verify
# your identity provider's tokens with algorithms and jwks_url instead.
hs256_secret_credential = "hs256_secret"

[api]
# The application's backend calls /server/v1 with one of these keys: one
# `name:key` per line; the name is logged with every call that changes state.
keys_credential = "api_keys"
"""


class InstallError(Exception):
    """A reason the install cannot go on, for the operator."""


# ---------------------------------------------------------------------------
# What the configuration names
# ---------------------------------------------------------------------------


def credential_references(table: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every ``<key>_credential`` of a parsed configuration, as (key path, value)."""
    for key, value in table.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            yield from credential_references(value, path)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    yield from credential_references(item, f"{path}[{i}]")
        elif key.endswith("_credential"):
            yield path, value


def credential_names(config_text: str) -> list[str]:
    """The credentials a configuration names, sorted; InstallError on a bad one."""
    try:
        table = tomllib.loads(config_text)
    except tomllib.TOMLDecodeError as exc:
        raise InstallError(f"the configuration is not valid TOML: {exc}") from exc
    names: set[str] = set()
    for key, value in credential_references(table):
        if not isinstance(value, str) or not CREDENTIAL_NAME.fullmatch(value):
            raise InstallError(
                f"{key}: expected a credential name (letters, digits, _ . -), got {value!r:.60}"
            )
        names.add(value)
    return sorted(names)


def _generator(key: str) -> Callable[[], str] | None:
    """How to make the credential a key names, when realtimed can: a secret of its own."""
    generic = re.sub(r"\[\d+\]", "[]", key)
    if generic == "auth.hs256_secret_credential":
        return lambda: secrets.token_urlsafe(48)  # 64 characters: enough for HS512 too
    if generic == "api.keys_credential":
        return lambda: f"backend:rtd_{secrets.token_urlsafe(32)}"
    if generic == "api.keys[].key_credential":
        return lambda: f"rtd_{secrets.token_urlsafe(32)}"
    return None


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def _unit_path(value: str, what: str) -> str:
    if not _UNIT_SAFE_PATH.fullmatch(value) or "//" in value:
        raise InstallError(
            f"{what} {value!r} cannot be written into the unit: an absolute path of letters, digits "
            "and _ . / + @ : - only"
        )
    return value


def render_unit(*, exec_path: str, user: str = DEFAULT_USER, credentials: Iterable[str] = ()) -> str:
    """The unit for realtimed at ``exec_path``, run as ``user``, loading ``credentials``."""
    if not _USER_NAME.fullmatch(user):
        raise InstallError(f"not a system user name: {user!r:.40}")
    lines = []
    names = sorted(set(credentials))
    if names:
        lines.append(_CREDENTIALS_COMMENT.format(dir=CREDENTIALS_DIR))
    for name in names:
        if not CREDENTIAL_NAME.fullmatch(name):
            raise InstallError(f"not a credential name: {name!r:.60}")
        lines.append(f"LoadCredential={name}:{CREDENTIALS_DIR}/{name}")
    return UNIT_TEMPLATE.format(
        exec=_unit_path(exec_path, "the executable"),
        config=CONFIG_PATH,
        user=user,
        group=user,
        state=STATE_DIR,
        sysusers=SYSUSERS_PATH,
        doc=DOC_PATH,
        credentials="\n".join(lines) + ("\n" if lines else ""),
    )


def render_sysusers(user: str = DEFAULT_USER) -> str:
    return SYSUSERS_TEMPLATE.format(user=user, state=STATE_DIR)


def default_exec_path() -> str:
    """The ``realtimed`` of the Python environment this runs in."""
    beside = Path(sys.executable).parent / "realtimed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside.absolute())
    found = shutil.which("realtimed")
    if found is None:
        raise InstallError("cannot find the realtimed executable: give it with --exec PATH")
    return str(Path(found).absolute())


# ---------------------------------------------------------------------------
# Installing
# ---------------------------------------------------------------------------


@dataclass
class _Writer:
    root: Path
    out: TextIO

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def say(self, text: str) -> None:
        print(text, file=self.out)

    def directory(self, absolute: str, *, mode: int, gid: int = 0) -> Path:
        target = self.path(absolute)
        target.mkdir(parents=True, exist_ok=True)
        os.chown(target, 0, gid)
        os.chmod(target, mode)
        return target

    def file(self, absolute: str, text: str, *, mode: int, gid: int = 0) -> Path:
        """Write ``text`` with its owner and mode in place before any byte lands."""
        target = self.path(absolute)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.fchown(fd, 0, gid)
            os.fchmod(fd, mode)
            os.write(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
        return target

    def own(self, absolute: str, *, mode: int, gid: int = 0) -> Path:
        target = self.path(absolute)
        os.chown(target, 0, gid, follow_symlinks=False)
        if not target.is_symlink():
            os.chmod(target, mode)
        return target


def _ensure_user(user: str, sysusers_file: Path, out: TextIO) -> None:
    """Create the system user on this machine (install into ``/`` only)."""
    try:
        pwd.getpwnam(user)
        return
    except KeyError:
        pass
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is not None:
        command = [sysusers, str(sysusers_file)]
    else:
        command = [
            "useradd", "--system", "--user-group", "--home-dir", STATE_DIR, "--no-create-home",
            "--shell", "/usr/sbin/nologin", "--comment", "realtimed daemon", user,
        ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise InstallError(f"cannot create the user {user}: {' '.join(command)}: {result.stderr.strip()}")
    print(f"created the system user {user}", file=out)


def _group_id(user: str) -> int:
    try:
        return grp.getgrnam(user).gr_gid
    except KeyError:
        raise InstallError(
            f"there is no group {user} on this machine, so the configuration cannot be given to it: "
            f"create the user first (systemd-sysusers {SYSUSERS_PATH}), then run install-systemd again"
        ) from None


def install(
    *,
    root: Path,
    user: str = DEFAULT_USER,
    exec_path: str | None = None,
    config_text: str | None = None,
    replace_config: bool = False,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> list[str]:
    """Install the unit, user, configuration and credentials under ``root``.

    Returns the credentials still missing (the unit would not start without them).

    Raises:
        InstallError: bad input, not run as root, or (under another root) no group
            of the user's name on this machine: nothing is written then.
    """
    if os.geteuid() != 0:
        raise InstallError("install-systemd sets owners and modes: run it as root (sudo)")
    if not _USER_NAME.fullmatch(user):
        raise InstallError(f"not a system user name: {user!r:.40}")
    exec_path = exec_path or default_exec_path()
    root = root.absolute()
    w = _Writer(root, out)
    config_file = w.path(CONFIG_PATH)
    keep_config = config_file.exists() and not replace_config
    if keep_config:
        try:
            config_text = config_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InstallError(f"cannot read {config_file}: {exc}") from exc
    elif config_text is None:
        config_text = DEFAULT_CONFIG
    names = credential_names(config_text)
    unit = render_unit(exec_path=exec_path, user=user, credentials=names)  # checks before any write

    on_this_machine = root == Path("/")
    if not on_this_machine:
        gid = _group_id(user)  # before anything is written
    sysusers = w.file(SYSUSERS_PATH, render_sysusers(user), mode=0o644)
    w.say(f"wrote {sysusers}")
    if on_this_machine:
        _ensure_user(user, sysusers, out)
        gid = _group_id(user)

    w.directory("/etc/realtimed", mode=0o755)
    if keep_config:
        w.own(CONFIG_PATH, mode=0o640, gid=gid)
        w.say(f"kept {config_file} (root:{user} 0640)")
    else:
        w.file(CONFIG_PATH, config_text, mode=0o640, gid=gid)
        w.say(f"wrote {config_file} (root:{user} 0640)")

    credentials = w.directory(CREDENTIALS_DIR, mode=0o700)
    generators: dict[str, Callable[[], str] | None] = {}
    table = tomllib.loads(config_text)
    for key, name in credential_references(table):
        generators.setdefault(name, _generator(key))
    missing: list[str] = []
    for name in names:
        target = credentials / name
        generate = generators.get(name)
        if target.is_file():
            w.own(f"{CREDENTIALS_DIR}/{name}", mode=0o600)
            w.say(f"kept the credential {target} (root 0600)")
        elif generate is not None:
            w.file(f"{CREDENTIALS_DIR}/{name}", generate() + "\n", mode=0o600)
            w.say(f"generated the credential {target} (root 0600)")
        else:
            missing.append(name)

    w.file(UNIT_PATH, unit, mode=0o644)
    w.say(f"wrote {w.path(UNIT_PATH)}")
    w.file(DOC_PATH, _readme(), mode=0o644)
    w.say(f"wrote {w.path(DOC_PATH)}")
    for name in missing:
        print(
            f"realtimed: the credential {name} is missing: put it in {credentials / name} "
            f"(install -m 0600 FILE {CREDENTIALS_DIR}/{name}, or a symbolic link to the file); "
            "systemd refuses to start the unit until it is there",
            file=err,
        )
    return missing


def _readme() -> str:
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        text = metadata("realtimed")["Description"]
    except PackageNotFoundError:
        text = None
    return text or "# realtimed\n\nSee `realtimed --help`.\n"


# ---------------------------------------------------------------------------
# check-config --as-user
# ---------------------------------------------------------------------------


def _may(st: os.stat_result, uid: int, gids: set[int], bits: int) -> bool:
    """Whether the mode bits of ``st`` grant ``bits`` (r=4, w=2, x=1) to the user."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return (st.st_mode >> 6) & bits == bits
    if st.st_gid in gids:
        return (st.st_mode >> 3) & bits == bits
    return st.st_mode & bits == bits


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group} {stat.S_IMODE(st.st_mode):04o}"


def why_unreadable(path: Path, uid: int, gids: set[int], *, folder: bool = False) -> str | None:
    """Why the user could not read ``path`` (by the owner, group and mode bits of it
    and of every folder above it; POSIX ACLs are not read), or None if they could."""
    path = Path(os.path.abspath(path))
    for parent in reversed(path.parents):
        try:
            st = os.stat(parent)
        except OSError as exc:
            return f"{parent}: {exc.strerror or exc}"
        if not _may(st, uid, gids, 1):
            return f"cannot enter {parent} ({_owner(st)})"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    need = 5 if folder or stat.S_ISDIR(st.st_mode) else 4
    if not _may(st, uid, gids, need):
        return f"cannot read {path} ({_owner(st)})"
    return None


def user_ids(name: str) -> tuple[int, set[int], str]:
    """(uid, every gid, name) of a user given by name or number; KeyError if none."""
    entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    return entry.pw_uid, set(os.getgrouplist(entry.pw_name, entry.pw_gid)), entry.pw_name


def files_to_read(cfg: Config, credentials_dir: str | None) -> list[tuple[str, str, bool]]:
    """(key, path, is a folder) for every file or folder the daemon reads by path.

    Credentials are left out: systemd reads them as root and hands them over.
    """
    items: list[tuple[str, str, bool]] = [(key, path, False) for key, path in cfg.files_read]
    named = [
        ("http.tls_cert_file", cfg.http.tls_cert_file),
        ("http.tls_key_file", cfg.http.tls_key_file),
        ("push.service_account_file", cfg.push.service_account_file),
        ("push.ca_file", cfg.push.ca_file),
        ("webhooks.ca_file", cfg.webhooks.ca_file),
        ("jobs.http.ca_file", cfg.jobs.http.ca_file),
    ]
    named += [(f"auth.public_key_files[{i}]", p) for i, p in enumerate(cfg.auth.public_key_files)]
    base = Path(cfg.source).parent if cfg.source else Path.cwd()
    for key, value in named:
        if value:
            items.append((key, str(base / value), False))
    items += [(f"http.static[{i}].dir", str(m.dir), True) for i, m in enumerate(cfg.http.static) if m.dir]
    if credentials_dir:
        inside = Path(os.path.abspath(credentials_dir))
        items = [item for item in items if inside not in Path(os.path.abspath(item[1])).parents]
    return items


def unreadable_files(cfg: Config, user: str, credentials_dir: str | None) -> list[tuple[str, str]]:
    """(key, reason) for each file of ``cfg`` that ``user`` could not read."""
    uid, gids, name = user_ids(user)
    problems = []
    for key, path, folder in files_to_read(cfg, credentials_dir):
        reason = why_unreadable(Path(path), uid, gids, folder=folder)
        if reason is not None:
            problems.append((key, f"{name} {reason}"))
    return problems
