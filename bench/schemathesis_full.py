"""schemathesis with every check against both of realtimed's API documents.

``tests/test_fuzz_http.py`` runs a bounded, deterministic part of this in the
suite; this script runs the schemathesis command line with ``--checks all``
against a daemon it starts on the embedded defaults (SQLite, in-process broker),
with push configured against the fake FCM of ``tests/fake_fcm.py`` (run as its
own process), so that the push routes answer as they do in production:

- the server API, ``GET /server/v1/openapi.json``, with an API key;
- the client API, ``GET /api/v1/openapi.json``, with a user token.

Each run fails on a server error (5xx), a response that does not match its
schema, a status the document does not list, a request that hangs past
``--request-timeout``, and the other checks of ``schemathesis run --checks all``.
It prints each run's summary and the daemon's 5xx count from its log, then one
line per document. Run from the repository root:

    .venv/bin/python bench/schemathesis_full.py                  # 100 examples per operation
    .venv/bin/python bench/schemathesis_full.py --max-examples 500
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import jwt

ROOT = Path(__file__).resolve().parent.parent
SECRET = "schemathesis-secret-" + "x" * 32
API_KEY = "schemathesis-api-key-" + "y" * 24


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=100)
    parser.add_argument("--request-timeout", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    st = Path(sys.executable).parent / "schemathesis"
    with tempfile.TemporaryDirectory(prefix="rt-st-") as tmp:
        folder = Path(tmp)
        (folder / "fcm").mkdir()
        fake = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_fcm", "--dir", str(folder / "fcm")], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        try:
            run_against(folder, fake, args, st)
        finally:
            fake.terminate()
            try:
                fake.wait(timeout=10)
            except subprocess.TimeoutExpired:
                fake.kill()


def run_against(folder: Path, fake: subprocess.Popen[str], args: argparse.Namespace, st: Path) -> None:
    """Start the daemon with push on the fake FCM, run schemathesis on both documents, print the summary."""
    assert fake.stdout is not None
    line = fake.stdout.readline()
    if not line:
        raise SystemExit("the fake FCM did not start")
    fcm = json.loads(line)
    port = free_port()
    config = folder / "realtimed.toml"
    config.write_text(f"""
[server]
node = "st"
state_dir = "{folder / 'state'}"
[http]
listen = "127.0.0.1:{port}"
[log]
level = "warning"
[auth]
algorithms = ["HS256"]
hs256_secret = "{SECRET}"
[api]
keys = ["{API_KEY}"]
[push]
service_account_file = "{fcm['key_file']}"
fcm_url = "{fcm['url']}"
iid_url = "{fcm['url']}/iid-base"
ca_file = "{fcm['ca_file']}"
""")
    log_path = folder / "daemon.log"
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "realtimed", "run", "-c", str(config)], stderr=log, stdout=subprocess.DEVNULL, cwd=ROOT
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.time() + 60
            while time.time() < deadline:
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            else:
                raise SystemExit("the daemon did not start:\n" + log_path.read_text())
            now = int(time.time())
            user = jwt.encode({"sub": "st-user", "iat": now, "exp": now + 86400}, SECRET, algorithm="HS256")
            results: list[tuple[str, int, float]] = []
            for name, path, credential in (
                ("server API", "/server/v1/openapi.json", API_KEY),
                ("client API", "/api/v1/openapi.json", user),
            ):
                print(f"\n== {name}: {url}{path}", flush=True)
                started = time.monotonic()
                code = subprocess.run(
                    [
                        str(st), "run", f"{url}{path}", "--checks", "all",
                        "--max-examples", str(args.max_examples), "--request-timeout", str(args.request_timeout),
                        "--workers", str(args.workers), "-H", f"Authorization: Bearer {credential}",
                        "--report-dir", str(folder / "report"),
                    ],
                    cwd=folder,
                ).returncode
                results.append((name, code, time.monotonic() - started))
        finally:
            daemon.terminate()
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
    text = log_path.read_text()
    server_errors = text.count(" 500 ") + text.count("Traceback")
    print("\n== summary")
    for name, code, took in results:
        print(f"  {name}: schemathesis exit {code} ({'no failure' if code == 0 else 'failures, see above'}), {took:.0f} s")
    print(f"  daemon log: {server_errors} lines with a 500 or a traceback; the daemon exited {daemon.returncode}")
    sys.exit(max(code for _, code, _ in results))


if __name__ == "__main__":
    main()
