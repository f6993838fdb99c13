"""Notifications after a run: email, Slack, a generic JSON webhook, and Apprise URLs.

:meth:`Notifier.send` classifies the run (failure / warning / success), builds one payload
(``docs/notifications.md`` documents it) and hands it to every channel whose ``on`` list has
that event. A channel that fails is logged with a warning and never raises: a broken mail
server must not fail, or hide, the backup result.
"""

from __future__ import annotations

import gzip
import html
import io
import json
import logging
import os
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from vya_backupdb import __version__
from vya_backupdb.config.ops import (
    AppriseNotification,
    EmailNotification,
    NotificationConfig,
    SlackNotification,
    WebhookNotification,
    _NotificationBase,
)
from vya_backupdb.errors import CredentialError, UsageError, VyaError
from vya_backupdb.secrets.redaction import redact, register_secret

if TYPE_CHECKING:
    from vya_backupdb.config.models import Settings
    from vya_backupdb.jobs.backup import RunResult

log = logging.getLogger("vya_backupdb.observability.notify")

PAYLOAD_VERSION = 1
STDERR_TAIL_CHARS = 4000


def classify(run: RunResult) -> str:
    """Return the run's event: failure (a database failed), warning (warnings, or stopped
    early without failures), else success."""
    if run.failed:
        return "failure"
    if run.interrupted or any(r.warnings for r in run.results):
        return "warning"
    return "success"


def build_payload(
    run: RunResult, hostname: str, event: str, notes: Sequence[str] = ()
) -> dict[str, Any]:
    """Return the JSON payload of a run (format documented in docs/notifications.md)."""
    results = [r.as_dict() for r in run.results]
    for item in results:
        if item.get("stderr_tail"):
            item["stderr_tail"] = redact(str(item["stderr_tail"]))[-STDERR_TAIL_CHARS:]
    succeeded = sum(1 for r in run.results if r.status == "success")
    return {
        "version": PAYLOAD_VERSION,
        "source": "vya-backupdb",
        "vya_version": __version__,
        "event": event,
        "hostname": hostname,
        "run_id": run.run_id,
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "status": run.as_dict()["status"],
        "summary": {
            "total": len(run.results),
            "succeeded": succeeded,
            "failed": len(run.failed),
            "size_bytes": sum(r.size_bytes for r in run.results),
            "duration_seconds": round(sum(r.duration_seconds for r in run.results), 3),
        },
        "instances": sorted({r.instance for r in run.results}),
        "results": results,
        "notes": list(notes),
        "run_log": run.run_log,
    }


def headline(payload: Mapping[str, Any]) -> str:
    """Return a one-line summary, e.g. 'FAILURE on db01: 1 failed, 3 succeeded'."""
    summary = payload["summary"]
    text = (
        f"{str(payload['event']).upper()} on {payload['hostname']}: "
        f"{summary['failed']} failed, {summary['succeeded']} succeeded"
    )
    if payload["instances"]:
        text += f" ({', '.join(payload['instances'])})"
    return text


def plain_text(payload: Mapping[str, Any]) -> str:
    """Return the plain-text body: one block per database, errors with their stderr tail."""
    lines = [
        headline(payload),
        f"Run {payload['run_id']}  started {payload['started_at']}",
        "",
    ]
    lines += [f"Note: {note}" for note in payload["notes"]]
    for r in payload["results"]:
        lines.append(
            f"- {r['instance']}/{r['database']}: {r['status']}, {_size(r['size_bytes'])}, "
            f"{r['duration_seconds']:.1f}s" + (f", {r['file']}" if r["file"] else "")
        )
        if r["error"]:
            lines.append(f"    error ({r['error_type']}): {r['error']}")
        if r["stderr_tail"]:
            lines += ["    stderr tail:"] + [f"      {x}" for x in r["stderr_tail"].splitlines()]
        lines += [f"    warning: {w}" for w in r["warnings"]]
    if payload["run_log"]:
        lines += ["", f"Run log: {payload['run_log']}"]
    return "\n".join(lines) + "\n"


def html_body(payload: Mapping[str, Any]) -> str:
    """Return the HTML body: a summary line and a table of databases, errors in full."""
    esc = html.escape
    color = {"failure": "#c0392b", "warning": "#d68910", "success": "#1e8449"}.get(
        str(payload["event"]), "#333"
    )
    rows = []
    for r in payload["results"]:
        detail = ""
        if r["error"]:
            detail = f"<b>{esc(str(r['error_type']))}</b>: {esc(r['error'])}"
        if r["stderr_tail"]:
            detail += f"<pre>{esc(r['stderr_tail'])}</pre>"
        if r["warnings"]:
            detail += "<br>".join(esc(w) for w in r["warnings"])
        rows.append(
            f"<tr><td>{esc(r['instance'])}</td><td>{esc(r['database'])}</td>"
            f"<td>{esc(r['status'])}</td><td>{esc(_size(r['size_bytes']))}</td>"
            f"<td>{r['duration_seconds']:.1f}s</td><td>{detail}</td></tr>"
        )
    notes = "".join(f"<p>{esc(n)}</p>" for n in payload["notes"])
    return (
        "<html><body>"
        f'<h2 style="color:{color}">{esc(headline(payload))}</h2>'
        f"<p>Run {esc(payload['run_id'])}, started {esc(payload['started_at'])}</p>{notes}"
        '<table border="1" cellpadding="4" cellspacing="0">'
        "<tr><th>instance</th><th>database</th><th>status</th><th>size</th>"
        "<th>duration</th><th>details</th></tr>" + "".join(rows) + "</table>"
        f"<p>Run log: {esc(str(payload['run_log'] or '-'))}</p></body></html>"
    )


def _size(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def compressed_log_tail(path: Path, limit: int) -> tuple[bytes, bool] | None:
    """Return (gzip bytes of the log, truncated?) fitting in ``limit`` bytes, or None when the
    file cannot be read. A longer log keeps its end (where the failure is); memory stays
    bounded by the limit, never the log's size."""
    try:
        size = path.stat().st_size
    except OSError:
        return None
    # Logs compress ~10:1; start from a tail that should fit, halve until it does.
    window = min(size, limit * 10)
    while True:
        try:
            with path.open("rb") as handle:
                handle.seek(size - window)
                buffer = io.BytesIO()
                with gzip.GzipFile(fileobj=buffer, mode="wb", filename=path.name) as gz:
                    remaining = window
                    while remaining and (chunk := handle.read(min(remaining, 1 << 20))):
                        gz.write(chunk)
                        remaining -= len(chunk)
                        if buffer.tell() > limit:
                            break
        except OSError:
            return None
        data = buffer.getvalue()
        if len(data) <= limit:
            return data, window < size
        if window <= 1024:
            return None
        window //= 2


@dataclass(frozen=True)
class Delivery:
    """The outcome of one channel for one event."""

    channel: str
    event: str
    ok: bool
    skipped: bool = False
    error: str | None = None


class Channel(Protocol):
    @property
    def label(self) -> str: ...

    @property
    def on(self) -> Sequence[str]: ...

    def deliver(self, payload: Mapping[str, Any]) -> None: ...


@dataclass
class _Env:
    environ: Mapping[str, str]
    config_dir: Path | None
    log_file: Path | None

    def variable(self, label: str, name: str) -> str:
        value = self.environ.get(name)
        if not value:
            raise CredentialError(
                f"notification channel {label}: variable {name} is not set",
                hint=f"Export {name} in the environment of the scheduled run "
                "(systemd: Environment= or EnvironmentFile= in a drop-in).",
            )
        register_secret(value)
        return value

    def file(self, label: str, path: Path) -> str:
        path = path.expanduser()
        if not path.is_absolute() and self.config_dir is not None:
            path = self.config_dir / path
        try:
            with path.open(encoding="utf-8") as handle:
                value = handle.readline().rstrip("\r\n")
        except OSError as exc:
            raise CredentialError(
                f"notification channel {label}: cannot read {path}: {exc.strerror}"
            ) from None
        register_secret(value)
        return value


def _post_json(
    url: str, body: Mapping[str, Any], headers: Mapping[str, str], timeout: float
) -> None:
    if not url.lower().startswith(("http://", "https://")):
        raise UsageError("webhook URLs must start with http:// or https://")
    data = json.dumps(body, default=str).encode("utf-8")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        url, data=data, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            response.read(4096)
    except urllib.error.HTTPError as exc:
        raise VyaError(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise VyaError(f"cannot reach the endpoint: {reason}") from None


C = TypeVar("C", bound=_NotificationBase)


class _ChannelBase(Generic[C]):
    """What every channel keeps: its label, its config, the environment, its events."""

    def __init__(self, label: str, config: C, env: _Env):
        self.label = label
        self.config = config
        self.env = env
        self.on: Sequence[str] = config.on


class EmailChannel(_ChannelBase[EmailNotification]):
    def message(self, payload: Mapping[str, Any]) -> EmailMessage:
        """Return the email (plain + HTML, log attached on failure) for ``payload``."""
        cfg = self.config
        msg = EmailMessage()
        msg["Subject"] = f"{cfg.subject_prefix} {headline(payload)}".strip()
        msg["From"] = cfg.sender
        msg["To"] = ", ".join(cfg.to)
        msg["X-VYA-Event"] = str(payload["event"])
        msg.set_content(plain_text(payload))
        msg.add_alternative(html_body(payload), subtype="html")
        if payload["event"] == "failure" and cfg.attach_log and self.env.log_file is not None:
            attached = compressed_log_tail(self.env.log_file, cfg.attach_max_bytes)
            if attached is not None:
                data, truncated = attached
                name = self.env.log_file.name + (".tail.gz" if truncated else ".gz")
                msg.add_attachment(data, maintype="application", subtype="gzip", filename=name)
        return msg

    def deliver(self, payload: Mapping[str, Any]) -> None:
        cfg = self.config
        password = None
        if cfg.password_env:
            password = self.env.variable(self.label, cfg.password_env)
        elif cfg.password_file:
            password = self.env.file(self.label, cfg.password_file)
        context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        msg = self.message(payload)
        client: smtplib.SMTP
        if cfg.ssl:
            client = smtplib.SMTP_SSL(
                cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout_seconds, context=context
            )
        else:
            client = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout_seconds)
        with client:
            if not cfg.ssl and cfg.starttls:
                client.starttls(context=context)
            if cfg.user:
                client.login(cfg.user, password or "")
            client.send_message(msg)


class SlackChannel(_ChannelBase[SlackNotification]):
    @staticmethod
    def body(payload: Mapping[str, Any]) -> dict[str, Any]:
        """Return the Slack message: a headline and one line per database."""
        icon = {"failure": ":x:", "warning": ":warning:", "success": ":white_check_mark:"}
        lines = []
        for r in payload["results"]:
            line = f"• `{r['instance']}/{r['database']}` {r['status']} {_size(r['size_bytes'])}"
            if r["error"]:
                line += f" — {r['error']}"
            lines.append(line)
        text = f"{icon.get(str(payload['event']), '')} {headline(payload)}".strip()
        detail = "\n".join(lines + [f"_{n}_" for n in payload["notes"]]) or "(no databases)"
        return {
            "text": text,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": f"*{text}*"}},
                {"type": "section", "text": {"type": "mrkdwn", "text": detail[:2900]}},
            ],
        }

    def deliver(self, payload: Mapping[str, Any]) -> None:
        cfg = self.config
        if cfg.webhook_url is not None:
            url = cfg.webhook_url.get_secret_value()
            register_secret(url)
        else:
            assert cfg.webhook_url_env is not None
            url = self.env.variable(self.label, cfg.webhook_url_env)
        _post_json(url, self.body(payload), {}, cfg.timeout_seconds)


class WebhookChannel(_ChannelBase[WebhookNotification]):
    def deliver(self, payload: Mapping[str, Any]) -> None:
        cfg = self.config
        url = cfg.url if cfg.url is not None else self.env.variable(self.label, str(cfg.url_env))
        headers = dict(cfg.headers)
        for header, variable in cfg.headers_env.items():
            headers[header] = self.env.variable(self.label, variable)
        _post_json(url, payload, headers, cfg.timeout_seconds)


class AppriseChannel(_ChannelBase[AppriseNotification]):
    def deliver(self, payload: Mapping[str, Any]) -> None:
        cfg = self.config
        url = cfg.url if cfg.url is not None else self.env.variable(self.label, str(cfg.url_env))
        register_secret(url)
        import apprise  # lazy: a large library only this channel needs

        notifier = apprise.Apprise()
        if not notifier.add(url):
            raise UsageError("the Apprise URL is not recognised (see the Apprise URL list)")
        notify_type = {
            "failure": apprise.NotifyType.FAILURE,
            "warning": apprise.NotifyType.WARNING,
            "success": apprise.NotifyType.SUCCESS,
        }.get(str(payload["event"]), apprise.NotifyType.INFO)
        if not notifier.notify(
            title=headline(payload), body=plain_text(payload), notify_type=notify_type
        ):
            raise VyaError("Apprise reported that the notification was not delivered")


def channel_label(index: int, config: NotificationConfig) -> str:
    return f"{config.name or config.type}#{index}"


class Notifier:
    """Send run results to the configured channels. ``send`` never raises."""

    def __init__(
        self,
        settings: Settings,
        *,
        log_file: Path | None = None,
        config_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ):
        self.settings = settings
        env = _Env(
            environ if environ is not None else os.environ,
            config_dir,
            log_file if log_file is not None else settings.logging.file,
        )
        self.channels: list[Channel] = []
        for index, cfg in enumerate(settings.notifications):
            label = channel_label(index, cfg)
            if isinstance(cfg, EmailNotification):
                self.channels.append(EmailChannel(label, cfg, env))
            elif isinstance(cfg, SlackNotification):
                self.channels.append(SlackChannel(label, cfg, env))
            elif isinstance(cfg, WebhookNotification):
                self.channels.append(WebhookChannel(label, cfg, env))
            else:
                self.channels.append(AppriseChannel(label, cfg, env))

    def send(
        self, run: RunResult, *, event: str | None = None, notes: Sequence[str] = ()
    ) -> list[Delivery]:
        """Deliver ``run`` to every channel subscribed to its event; return each outcome.

        A failing channel is logged (warning) and reported in its Delivery; nothing raises.
        """
        event = event or classify(run)
        payload = build_payload(run, self.settings.hostname, event, notes)
        outcomes = []
        for channel in self.channels:
            if event not in channel.on:
                outcomes.append(Delivery(channel.label, event, ok=True, skipped=True))
                continue
            outcomes.append(self._deliver(channel, payload, event))
        return outcomes

    def test(self, channel: int | None = None) -> list[Delivery]:
        """Send a test message to one channel (by index) or all, whatever their ``on`` list;
        raise UsageError when the index does not exist."""
        from vya_backupdb.jobs.backup import RunResult

        if channel is not None and not 0 <= channel < len(self.channels):
            raise UsageError(
                f"there is no notification channel {channel}",
                hint=f"Channels are numbered 0..{len(self.channels) - 1} in the order of "
                "'notifications:' in the config.",
            )
        now = datetime.now(UTC)
        run = RunResult(run_id="notify-test", started_at=now, finished_at=now)
        payload = build_payload(
            run, self.settings.hostname, "test", ["This is a test message from vya-backupdb."]
        )
        chosen = self.channels if channel is None else [self.channels[channel]]
        return [self._deliver(c, payload, "test") for c in chosen]

    @staticmethod
    def _deliver(channel: Channel, payload: Mapping[str, Any], event: str) -> Delivery:
        try:
            channel.deliver(payload)
        except Exception as exc:
            message = (
                redact(exc.message if isinstance(exc, VyaError) else f"{exc}") or type(exc).__name__
            )
            log.warning(
                "notification channel %s failed (%s): %s",
                channel.label,
                event,
                message,
                extra={"operation": "notify", "status": "failed", "channel": channel.label},
            )
            return Delivery(channel.label, event, ok=False, error=message)
        log.info(
            "notification sent to %s (%s)",
            channel.label,
            event,
            extra={"operation": "notify", "status": "success", "channel": channel.label},
        )
        return Delivery(channel.label, event, ok=True)
