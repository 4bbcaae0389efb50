"""realtimed terminating TLS itself: WebSocket deliveries take the flush path."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import httpx
import orjson
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.sync.client import connect

from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token


def make_cert(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_websocket_and_http_over_tls(start_daemon: DaemonFactory, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    with trio.fail_after(30):
        daemon = await start_daemon(
            {"http": {"tls_cert_file": str(cert), "tls_key_file": str(key)}, "namespaces": [{"prefix": "job:", "history_size": 10}]}
        )
        _, port = daemon.address()
        context = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(base_url=f"https://localhost:{port}", verify=context) as http:
            assert (await http.get("/healthz")).status_code == 200

            subscribed = trio.Event()

            def session() -> list[dict[str, object]]:
                frames = []
                with connect(f"wss://localhost:{port}/ws?token={token('alice', rooms=['job:*'])}", ssl=context) as ws:
                    frames.append(orjson.loads(ws.recv(timeout=5)))
                    ws.send(orjson.dumps({"id": 1, "op": "subscribe", "data": {"room": "job:1"}}).decode())
                    frames.append(orjson.loads(ws.recv(timeout=5)))
                    trio.from_thread.run_sync(subscribed.set)
                    for _ in range(200):
                        frames.append(orjson.loads(ws.recv(timeout=5)))
                return frames

            async def publish_many() -> None:
                await subscribed.wait()
                for i in range(200):
                    await http.post(
                        "/server/v1/publish",
                        json={"room": "job:1", "event": "job.progress", "data": {"pct": i}},
                        headers={"Authorization": f"Bearer {API_KEY}"},
                    )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish_many)
                frames = await trio.to_thread.run_sync(session)
        assert frames[0]["event"] == "session.ready"
        assert frames[1]["ok"] is True
        seqs = [f["seq"] for f in frames[2:]]
        assert seqs == list(range(1, 201))
