"""Notifications delivered to real receivers on loopback: SMTP (plain, STARTTLS, SMTPS) and
an HTTP server for the webhook, Slack and Apprise (json://) payloads."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import gzip
import ipaddress
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ops_fixtures import free_port, load, sqlite_config

from vya_backupdb.errors import BackupFailed
from vya_backupdb.jobs.backup import BackupJob, BackupRequest, DatabaseResult, RunResult
from vya_backupdb.observability.notify import Notifier, classify

pytestmark = pytest.mark.integration

SMTP_PW = "s3cret-smtp-pw"


# -- receivers ----------------------------------------------------------------------------------


@dataclass
class Inbox:
    messages: list[email.message.EmailMessage] = field(default_factory=list)
    envelopes: list[Any] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)  # type: ignore[arg-type]
        )
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any):  # type: ignore[no-untyped-def]
        if isinstance(data, LoginPassword):
            self.logins.append((data.login.decode(), data.password.decode()))
            return AuthResult(success=data.password.decode() == SMTP_PW)
        return AuthResult(success=False)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (also the CA the client trusts)."""
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _server_context(tls_files: tuple[Path, Path]):  # type: ignore[no-untyped-def]
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tls_files[0]), str(tls_files[1]))
    return context


@pytest.fixture
def smtp_plain() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


@pytest.fixture
def smtp_starttls(tls_files: tuple[Path, Path]) -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=_server_context(tls_files),
        require_starttls=True,
        authenticator=inbox.authenticate,
        auth_require_tls=True,
    )
    controller.start()
    yield inbox, port
    controller.stop()


@pytest.fixture
def smtp_ssl(tls_files: tuple[Path, Path]) -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, ssl_context=_server_context(tls_files)
    )
    controller.start()
    yield inbox, port
    controller.stop()


@dataclass
class HttpInbox:
    port: int
    posts: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def http_inbox() -> Iterator[HttpInbox]:
    inbox = HttpInbox(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            inbox.posts.append((self.path, dict(self.headers), json.loads(body)))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    inbox.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield inbox
    server.shutdown()
    server.server_close()


# -- a real run with one failure ----------------------------------------------------------------


@pytest.fixture
def failed_run(tmp_path: Path) -> tuple[Path, RunResult]:
    config = sqlite_config(tmp_path)
    (tmp_path / "data" / "broken.db").write_bytes(b"not a database " * 400)
    run = BackupJob(load(config)).run(BackupRequest())
    assert [r.status for r in run.results] == ["failed", "success"]
    # A server tool's failure carries its stderr tail; SQLite has none, so add one such result.
    run.results.append(
        DatabaseResult(
            "pg01",
            "app",
            "failed",
            error=BackupFailed("pg_dump exited with 1", details="pg_dump: error: lock timeout"),
            duration_seconds=1.5,
        )
    )
    return config, run


def _notifier(tmp_path: Path, channels: list[dict[str, Any]], **kw: Any) -> Notifier:
    config = sqlite_config(tmp_path / "n", {"notifications": channels})
    return Notifier(load(config).settings, **kw)


def test_email_starttls_failure_has_bodies_and_compressed_log(
    tmp_path: Path,
    smtp_starttls: tuple[Inbox, int],
    tls_files: tuple[Path, Path],
    failed_run: tuple[Path, RunResult],
) -> None:
    inbox, port = smtp_starttls
    _, run = failed_run
    log_file = tmp_path / "vya.log"
    log_file.write_text("".join(f"line {i} of the log\n" for i in range(200)) + "LAST LINE\n")
    notifier = _notifier(
        tmp_path,
        [
            {
                "type": "email",
                "smtp_host": "127.0.0.1",
                "smtp_port": port,
                "starttls": True,
                "ca_file": str(tls_files[0]),
                "user": "vya",
                "password_env": "SMTP_PW",
                "from": "vya@example.com",
                "to": ["ops@example.com", "dba@example.com"],
                "on": ["failure"],
            }
        ],
        log_file=log_file,
        environ={"SMTP_PW": SMTP_PW},
    )
    [delivery] = notifier.send(run)
    assert delivery.ok, delivery.error
    assert inbox.logins == [("vya", SMTP_PW)]
    [msg] = inbox.messages
    assert inbox.envelopes[0].rcpt_tos == ["ops@example.com", "dba@example.com"]
    assert (
        msg["Subject"]
        .strip()
        .startswith("[vya-backupdb] FAILURE on testhost: 2 failed, 1 succeeded")
    )
    plain = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    for text in (plain, html):
        assert "broken.db" in text and "shop0.db" in text and "pg01" in text
        assert "pg_dump: error: lock timeout" in text
        assert "BackupFailed" in text
    assert "<table" in html
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename() == "vya.log.gz"
    log_text = gzip.decompress(attachment.get_content()).decode()
    assert log_text == log_file.read_text()


def test_email_plain_long_log_attachment_keeps_the_end_within_limit(
    tmp_path: Path, smtp_plain: tuple[Inbox, int], failed_run: tuple[Path, RunResult]
) -> None:
    inbox, port = smtp_plain
    log_file = tmp_path / "big.log"
    import os

    with log_file.open("w") as handle:
        for i in range(20000):
            handle.write(f"{i} {os.urandom(24).hex()}\n")  # hardly compressible
        handle.write("THE FAILURE IS HERE\n")
    notifier = _notifier(
        tmp_path,
        [
            {
                "type": "email",
                "smtp_host": "127.0.0.1",
                "smtp_port": port,
                "starttls": False,
                "from": "vya@example.com",
                "to": ["ops@example.com"],
                "attach_max_bytes": 4096,
            }
        ],
        log_file=log_file,
    )
    [delivery] = notifier.send(failed_run[1])
    assert delivery.ok, delivery.error
    [attachment] = list(inbox.messages[0].iter_attachments())
    data = attachment.get_content()
    assert attachment.get_filename() == "big.log.tail.gz"
    assert len(data) <= 4096
    assert gzip.decompress(data).decode().endswith("THE FAILURE IS HERE\n")


def test_email_ssl_success_event_has_no_attachment(
    tmp_path: Path, smtp_ssl: tuple[Inbox, int], tls_files: tuple[Path, Path]
) -> None:
    inbox, port = smtp_ssl
    config = sqlite_config(tmp_path)
    run = BackupJob(load(config)).run(BackupRequest())
    assert classify(run) == "success"
    log_file = tmp_path / "vya.log"
    log_file.write_text("all good\n")
    notifier = _notifier(
        tmp_path,
        [
            {
                "type": "email",
                "smtp_host": "127.0.0.1",
                "smtp_port": port,
                "ssl": True,
                "ca_file": str(tls_files[0]),
                "from": "vya@example.com",
                "to": ["ops@example.com"],
                "on": ["success", "failure"],
            }
        ],
        log_file=log_file,
    )
    [delivery] = notifier.send(run)
    assert delivery.ok, delivery.error
    [msg] = inbox.messages
    assert "SUCCESS on testhost: 0 failed, 1 succeeded" in msg["Subject"]
    assert list(msg.iter_attachments()) == []


def test_webhook_slack_apprise_payloads_reach_http_server(
    tmp_path: Path, http_inbox: HttpInbox, failed_run: tuple[Path, RunResult]
) -> None:
    notifier = _notifier(
        tmp_path,
        [
            {
                "type": "webhook",
                "url": http_inbox.url("/hook"),
                "headers_env": {"Authorization": "HOOK_TOKEN"},
                "on": ["failure", "success"],
            },
            {"type": "slack", "webhook_url_env": "SLACK_URL", "on": ["failure"]},
            {"type": "apprise", "url": f"json://127.0.0.1:{http_inbox.port}/apprise"},
            {
                "type": "webhook",
                "name": "succ-only",
                "url": http_inbox.url("/x"),
                "on": ["success"],
            },
        ],
        environ={"SLACK_URL": http_inbox.url("/slack"), "HOOK_TOKEN": "Bearer t0k"},
    )
    deliveries = notifier.send(failed_run[1])
    assert [(d.channel, d.ok, d.skipped) for d in deliveries] == [
        ("webhook#0", True, False),
        ("slack#1", True, False),
        ("apprise#2", True, False),
        ("succ-only#3", True, True),
    ]
    posts = {path: (headers, body) for path, headers, body in http_inbox.posts}
    assert set(posts) == {"/hook", "/slack", "/apprise"}
    headers, hook = posts["/hook"]
    assert headers["Authorization"] == "Bearer t0k"
    assert hook["version"] == 1 and hook["event"] == "failure" and hook["status"] == "failed"
    assert hook["hostname"] == "testhost"
    assert hook["summary"]["failed"] == 2 and hook["summary"]["succeeded"] == 1
    by_db = {(r["instance"], r["database"]): r for r in hook["results"]}
    assert by_db[("lite", "broken.db")]["error_type"] == "BackupFailed"
    assert by_db[("pg01", "app")]["stderr_tail"] == "pg_dump: error: lock timeout"
    assert by_db[("lite", "shop0.db")]["size_bytes"] > 0
    _, slack = posts["/slack"]
    assert slack["text"].startswith(":x: FAILURE on testhost")
    assert "broken.db" in slack["blocks"][1]["text"]["text"]
    _, apprise_body = posts["/apprise"]
    assert apprise_body["type"] == "failure"
    assert "FAILURE on testhost" in apprise_body["title"]
    assert "pg_dump: error: lock timeout" in apprise_body["message"]


def test_notifier_closed_port_logs_warning_and_leaves_run_unchanged(
    tmp_path: Path, failed_run: tuple[Path, RunResult], caplog: pytest.LogCaptureFixture
) -> None:
    run = failed_run[1]
    before = run.as_dict()
    port = free_port()  # nothing listens there
    notifier = _notifier(
        tmp_path,
        [
            {"type": "webhook", "url": f"http://127.0.0.1:{port}/x", "timeout_seconds": 3},
            {
                "type": "email",
                "smtp_host": "127.0.0.1",
                "smtp_port": port,
                "from": "a@example.com",
                "to": ["b@example.com"],
                "timeout_seconds": 3,
            },
            {"type": "slack", "webhook_url_env": "UNSET_VARIABLE_XYZ"},
        ],
        environ={},
    )
    with caplog.at_level(logging.WARNING, logger="vya_backupdb.observability.notify"):
        deliveries = notifier.send(run)
    assert [d.ok for d in deliveries] == [False, False, False]
    assert "cannot reach" in (deliveries[0].error or "")
    assert "UNSET_VARIABLE_XYZ" in (deliveries[2].error or "")
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 3
    assert run.as_dict() == before


def test_notify_test_cli_sends_test_event(tmp_path: Path, http_inbox: HttpInbox) -> None:
    from typer.testing import CliRunner

    from vya_backupdb.cli.app import app

    config = sqlite_config(
        tmp_path,
        {
            "notifications": [
                {"type": "webhook", "url": http_inbox.url("/a"), "on": ["failure"]},
                {"type": "webhook", "url": http_inbox.url("/b"), "on": ["failure"]},
            ]
        },
    )
    result = CliRunner().invoke(app, ["--config", str(config), "notify", "test", "--channel", "1"])
    assert result.exit_code == 0, result.output
    [(path, _, body)] = http_inbox.posts
    assert path == "/b" and body["event"] == "test"
    bad = CliRunner().invoke(app, ["--config", str(config), "notify", "test", "--channel", "5"])
    assert bad.exit_code == 2
