"""Mask secrets in anything that may be shown: log lines, error details, command lines.

Two nets: exact values registered at runtime (every password this process resolved), and
patterns that look like a secret whatever its value (``password=...``, ``PGPASSWORD=...``,
``scheme://user:pass@host``).
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "****"

_lock = threading.Lock()
_registered: set[str] = set()
#: Registered values, longest first, so a secret containing another is masked whole.
_ordered: tuple[str, ...] = ()

# key=value / key: value where the key names a secret; the value may be quoted.
_KEY_VALUE = re.compile(
    r"""(?ix)
    (?P<key>\b[\w.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|master[_-]?key)[\w.-]*)
    (?P<sep>["']?[ \t]*[=:][ \t]*)
    (?P<value>"[^"]*"|'[^']*'|[^\s,;&'"})\]]+)
    """
)
# password_env / password_file / master_key_file name where a secret is, not the secret.
_NAME_NOT_SECRET = ("_env", "_file", "_path", "_dir", "_directory")
# Placeholders, not secrets: MySQL says "(using password: YES)", YAML dumps say "null".
_NOT_A_VALUE = frozenset({"", MASK, "null", "none", "~", "yes", "no"})
# scheme://user:password@host
_URL_CREDENTIALS = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@")
# 'enc:' ciphertexts from `credentials encrypt` are not secrets per se, but masking them keeps
# logs free of material an attacker could try offline.
_ENC_TOKEN = re.compile(r"\benc:[A-Za-z0-9_=-]{20,}")


def register_secret(value: str | None) -> None:
    """Remember ``value`` so that it is masked everywhere from now on (empty is ignored)."""
    global _ordered
    if not value:
        return
    with _lock:
        if value in _registered:
            return
        _registered.add(value)
        stripped = value.strip()
        if stripped and stripped != value:
            _registered.add(stripped)
        _ordered = tuple(sorted(_registered, key=len, reverse=True))


def clear_registered_secrets() -> None:
    """Forget every registered value (tests only)."""
    global _ordered
    with _lock:
        _registered.clear()
        _ordered = ()


def _mask_key_value(match: re.Match[str]) -> str:
    value = match.group("value")
    if match.group("key").lower().endswith(_NAME_NOT_SECRET):
        return match.group(0)
    if value.strip("\"'").lower() in _NOT_A_VALUE:
        return match.group(0)
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group('key')}{match.group('sep')}{quote}{MASK}{quote}"


def redact(text: str) -> str:
    """Return ``text`` with registered secrets and secret-looking patterns replaced by ``****``."""
    if not text:
        return text
    for secret in _ordered:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _URL_CREDENTIALS.sub(lambda m: f"{m.group('head')}{MASK}@", text)
    text = _KEY_VALUE.sub(_mask_key_value, text)
    return _ENC_TOKEN.sub("enc:" + MASK, text)


#: Attributes every LogRecord has; anything else came through ``extra=``.
STANDARD_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in the message, the traceback and ``extra`` fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string must not lose the line
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in STANDARD_RECORD_ATTRS and isinstance(value, str):
                setattr(record, name, redact(value))
        return True
