"""Streaming encryption in the age v1 format (https://age-encryption.org/v1).

Why age: it is an open, small, fully specified format, and the standard ``age`` CLI (or
``rage``) decrypts our backups without this product: ``age -d -i key.txt file.zst.age``.
We implement it on ``cryptography`` because the Python bindings available (pyrage) only pull
from a reader into a writer, while our pipeline pushes through writers (compress → encrypt →
hash → storage) and pulls through readers on restore; both directions must stream.

Format, in short:

* header: ``age-encryption.org/v1`` then one stanza per recipient, then ``--- <MAC>``.
  An X25519 stanza wraps the random 16-byte file key for one public key; a scrypt stanza
  wraps it with a passphrase (and must be the only stanza). The MAC (HMAC-SHA256 keyed by
  HKDF(file key, "header")) authenticates the whole header.
* payload: a 16-byte nonce, then STREAM chunks of 64 KiB plaintext, each sealed with
  ChaCha20-Poly1305 under HKDF(file key, nonce, "payload"); the chunk nonce is an 11-byte
  counter plus a final-chunk flag, so reordering, truncation and appending are all detected.

Memory is bounded by one chunk. Errors: a missing or wrong key is a CredentialError; a damaged,
truncated or tampered file is an IntegrityError; both are raised before the chunk they concern
reaches the consumer (the header MAC is checked before any payload is read).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from vya_backupdb.errors import CredentialError, IntegrityError, UsageError
from vya_backupdb.pipeline.codecs import Readable, Writable

__all__ = [
    "CHUNK_SIZE",
    "SUFFIX",
    "Identity",
    "PassphraseIdentity",
    "PassphraseRecipient",
    "Recipient",
    "X25519Identity",
    "X25519Recipient",
    "decrypting_reader",
    "encrypting_writer",
    "generate_identity",
    "load_identities",
    "parse_identities",
    "parse_identity",
    "parse_recipient",
]

VERSION_LINE = b"age-encryption.org/v1"
CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
ENCRYPTED_CHUNK = CHUNK_SIZE + TAG_SIZE
#: File-name suffix added after the compression suffix (``.dump.zst.age``).
SUFFIX = ".age"
#: The record's ``file_info.encryption`` value.
NAME = "age"

_X25519_LABEL = b"age-encryption.org/v1/X25519"
_SCRYPT_LABEL = b"age-encryption.org/v1/scrypt"
_ZERO_NONCE = b"\x00" * 12
_FILE_KEY_SIZE = 16
_COLUMNS = 64
# Bounds on what we accept from a file before its MAC is verified (a hostile header must not
# make us allocate without limit or run scrypt with an absurd cost).
_MAX_HEADER = 1024 * 1024
_MAX_SCRYPT_LOG_N = 22
DEFAULT_SCRYPT_LOG_N = 18

_DAMAGED_HINT = (
    "The file was damaged or modified after it was written: do not restore it; pick another "
    "backup with: vya-backupdb list"
)
_KEY_HINT = (
    "Give the identity (secret key) matching one of the recipients the backup was encrypted "
    "to: storage.encryption.identity_file / identity_env, or decrypt --identity FILE."
)


# -- bech32 (BIP 173), used by age for its key strings ------------------------------------------
_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: Iterable[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= _GEN[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: Iterable[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    acc = bits = 0
    out: list[int] = []
    maxv = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & maxv)
    elif bits >= from_bits or ((acc << (to_bits - bits)) & maxv):
        raise ValueError("invalid bech32 padding")
    return out


def _bech32_encode(hrp: str, data: bytes) -> str:
    values = _convert_bits(data, 8, 5, pad=True)
    polymod = _polymod([*_hrp_expand(hrp), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[v] for v in values + checksum)


def _bech32_decode(text: str) -> tuple[str, bytes]:
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise ValueError("no separator or checksum")
    hrp, rest = text[:pos], text[pos + 1 :]
    if any(c not in _CHARSET for c in rest):
        raise ValueError("invalid character")
    values = [_CHARSET.index(c) for c in rest]
    if _polymod([*_hrp_expand(hrp), *values]) != 1:
        raise ValueError("bad checksum")
    return hrp, bytes(_convert_bits(values[:-6], 5, 8, pad=False))


# -- base64 as age writes it: standard alphabet, no padding, canonical --------------------------
def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    if "=" in text or "\r" in text or "\n" in text:
        raise ValueError("padding or line break in base64")
    data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    if _b64encode(data) != text:
        raise ValueError("non-canonical base64")
    return data


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


# -- recipients and identities ---------------------------------------------------------------
@dataclass(frozen=True)
class _Stanza:
    type: str
    args: tuple[str, ...]
    body: bytes

    def encode(self) -> bytes:
        lines = ["-> " + " ".join((self.type, *self.args))]
        encoded = _b64encode(self.body)
        lines += [encoded[i : i + _COLUMNS] for i in range(0, len(encoded), _COLUMNS)]
        if len(encoded) % _COLUMNS == 0:
            lines.append("")  # the body ends with a line shorter than 64 columns
        return ("\n".join(lines) + "\n").encode("ascii")


@dataclass(frozen=True)
class X25519Recipient:
    """A public key ``age1…``: anyone may encrypt to it."""

    public_key: bytes

    def __str__(self) -> str:
        return _bech32_encode("age", self.public_key)

    def _wrap(self, file_key: bytes) -> _Stanza:
        ephemeral = X25519PrivateKey.generate()
        share = ephemeral.public_key().public_bytes_raw()
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(self.public_key))
        wrap_key = _hkdf(shared, share + self.public_key, _X25519_LABEL)
        body = ChaCha20Poly1305(wrap_key).encrypt(_ZERO_NONCE, file_key, None)
        return _Stanza("X25519", (_b64encode(share),), body)


@dataclass(frozen=True)
class PassphraseRecipient:
    """Encrypt with a passphrase (scrypt); must be the only recipient of a file."""

    passphrase: str = field(repr=False)
    log_n: int = DEFAULT_SCRYPT_LOG_N

    def __str__(self) -> str:
        return "scrypt (passphrase)"

    def _wrap(self, file_key: bytes) -> _Stanza:
        salt = secrets.token_bytes(16)
        key = _scrypt(self.passphrase, salt, self.log_n)
        body = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, file_key, None)
        return _Stanza("scrypt", (_b64encode(salt), str(self.log_n)), body)


Recipient = X25519Recipient | PassphraseRecipient


@dataclass(frozen=True)
class X25519Identity:
    """A secret key ``AGE-SECRET-KEY-1…``; it decrypts what was encrypted to its recipient."""

    secret_key: bytes = field(repr=False)

    def __str__(self) -> str:
        return _bech32_encode("age-secret-key-", self.secret_key).upper()

    @property
    def recipient(self) -> X25519Recipient:
        private = X25519PrivateKey.from_private_bytes(self.secret_key)
        return X25519Recipient(private.public_key().public_bytes_raw())

    def _unwrap(self, stanza: _Stanza) -> bytes | None:
        if stanza.type != "X25519":
            return None
        if len(stanza.args) != 1:
            raise _damaged("an X25519 stanza has the wrong number of arguments")
        share = _decode_or_damaged(stanza.args[0], "an X25519 stanza")
        if len(share) != 32 or len(stanza.body) != _FILE_KEY_SIZE + TAG_SIZE:
            raise _damaged("an X25519 stanza has the wrong size")
        private = X25519PrivateKey.from_private_bytes(self.secret_key)
        try:
            shared = private.exchange(X25519PublicKey.from_public_bytes(share))
        except ValueError:  # all-zero shared secret: a malicious share
            raise _damaged("an X25519 stanza has an invalid ephemeral share") from None
        salt = share + self.recipient.public_key
        try:
            return ChaCha20Poly1305(_hkdf(shared, salt, _X25519_LABEL)).decrypt(
                _ZERO_NONCE, stanza.body, None
            )
        except InvalidTag:
            return None  # encrypted to another recipient


@dataclass(frozen=True)
class PassphraseIdentity:
    passphrase: str = field(repr=False)

    def _unwrap(self, stanza: _Stanza) -> bytes | None:
        if stanza.type != "scrypt":
            return None
        if len(stanza.args) != 2 or not stanza.args[1].isdigit() or stanza.args[1][0] == "0":
            raise _damaged("the scrypt stanza has malformed arguments")
        salt = _decode_or_damaged(stanza.args[0], "the scrypt stanza")
        log_n = int(stanza.args[1])
        if len(salt) != 16 or len(stanza.body) != _FILE_KEY_SIZE + TAG_SIZE:
            raise _damaged("the scrypt stanza has the wrong size")
        if log_n > _MAX_SCRYPT_LOG_N:
            raise CredentialError(
                f"the file's passphrase work factor 2^{log_n} exceeds the limit "
                f"2^{_MAX_SCRYPT_LOG_N}",
                hint="Decrypt it with the age CLI, which lets you confirm the cost.",
            )
        try:
            return ChaCha20Poly1305(_scrypt(self.passphrase, salt, log_n)).decrypt(
                _ZERO_NONCE, stanza.body, None
            )
        except InvalidTag:
            raise CredentialError(
                "the passphrase is wrong: it does not decrypt this file",
                hint="Check the variable named by storage.encryption.passphrase_env.",
            ) from None


Identity = X25519Identity | PassphraseIdentity


def _scrypt(passphrase: str, salt: bytes, log_n: int) -> bytes:
    n = 1 << log_n
    kdf = Scrypt(salt=_SCRYPT_LABEL + salt, length=32, n=n, r=8, p=1)
    return kdf.derive(passphrase.encode("utf-8"))


def _damaged(what: str) -> IntegrityError:
    return IntegrityError(f"encrypted stream is damaged: {what}", hint=_DAMAGED_HINT)


def _decode_or_damaged(text: str, where: str) -> bytes:
    try:
        return _b64decode(text)
    except ValueError:
        raise _damaged(f"{where} is not valid base64") from None


def parse_recipient(text: str) -> X25519Recipient:
    """Return the recipient of an ``age1…`` public key; raise UsageError when malformed."""
    try:
        hrp, data = _bech32_decode(text.strip())
    except ValueError as exc:
        raise UsageError(
            f"{text.strip()[:20]!r}… is not an age public key ({exc})",
            hint="A recipient looks like age1… (62 characters); make one with: "
            "vya-backupdb keys generate",
        ) from None
    if hrp != "age" or len(data) != 32:
        raise UsageError(
            f"{text.strip()[:20]!r}… is not an X25519 age public key",
            hint="Only age1… recipients are supported (not SSH keys or plugins).",
        )
    return X25519Recipient(data)


def parse_identity(text: str) -> X25519Identity:
    """Return the identity of an ``AGE-SECRET-KEY-1…`` string; raise CredentialError."""
    try:
        hrp, data = _bech32_decode(text.strip())
    except ValueError:
        raise CredentialError(
            "an identity is not a valid age secret key (AGE-SECRET-KEY-1…)",
            hint="Check the identity file; make a new key pair with: vya-backupdb keys generate",
        ) from None
    if hrp != "age-secret-key-" or len(data) != 32:
        raise CredentialError(
            "an identity is not an X25519 age secret key",
            hint="Only AGE-SECRET-KEY-1… identities are supported (not SSH keys or plugins).",
        )
    return X25519Identity(data)


def parse_identities(text: str, origin: str) -> list[X25519Identity]:
    """Return the identities of an age identity file's text (``#`` comments and blank lines
    skipped); raise CredentialError naming ``origin`` when it holds none or a bad line."""
    identities: list[X25519Identity] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(parse_identity(line))
        except CredentialError as exc:
            raise CredentialError(
                f"{origin}, line {number}: {exc.message}", hint=exc.hint
            ) from None
    if not identities:
        raise CredentialError(
            f"{origin} holds no age identity (AGE-SECRET-KEY-1… line)",
            hint="Point it at the file written by 'vya-backupdb keys generate' or age-keygen.",
        )
    return identities


def load_identities(path: Path) -> list[X25519Identity]:
    """Return the identities in an age identity file; raise CredentialError when unreadable."""
    path = path.expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise CredentialError(
            f"cannot read the identity file {path}: {reason}",
            hint=f"Check that it exists and is readable: ls -l {path}",
        ) from None
    return parse_identities(text, f"identity file {path}")


def generate_identity() -> tuple[str, str]:
    """Return a new key pair: (secret ``AGE-SECRET-KEY-1…``, public ``age1…``)."""
    identity = X25519Identity(X25519PrivateKey.generate().private_bytes_raw())
    return str(identity), str(identity.recipient)


def identity_file_text(secret: str, public: str, now: datetime | None = None) -> str:
    """Return an identity file in age-keygen's layout (comments, then the secret key)."""
    moment = (now or datetime.now(UTC)).replace(microsecond=0)
    return f"# created: {moment.isoformat()}\n# public key: {public}\n{secret}\n"


def write_identity_file(path: Path, secret: str, public: str) -> None:
    """Create ``path`` (mode 0600, never overwriting); raise UsageError when it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(
            f"{path} already exists; refusing to overwrite a key",
            hint="Choose another --output, or move the old key away first (keep it: old "
            "backups need it).",
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), stat.S_IRUSR | stat.S_IWUSR)
        handle.write(identity_file_text(secret, public))


# -- writing ---------------------------------------------------------------------------------
def _chunk_nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _header(file_key: bytes, recipients: Sequence[Recipient]) -> bytes:
    if not recipients:
        raise UsageError(
            "encryption needs at least one recipient",
            hint="Set storage.encryption.recipients (age1… public keys) or passphrase_env.",
        )
    if any(isinstance(r, PassphraseRecipient) for r in recipients) and len(recipients) > 1:
        raise UsageError(
            "a passphrase cannot be combined with other recipients (age allows one scrypt "
            "stanza alone)",
            hint="Use either recipients or passphrase_env in storage.encryption.",
        )
    head = VERSION_LINE + b"\n" + b"".join(r._wrap(file_key).encode() for r in recipients)
    head += b"---"
    mac = hmac.new(_hkdf(file_key, b"", b"header"), head, hashlib.sha256).digest()
    return head + b" " + _b64encode(mac).encode("ascii") + b"\n"


class AgeWriter:
    """Encrypt everything written into ``sink``; ``close()`` seals the final chunk.

    Closing never closes ``sink``. Memory: one 64 KiB chunk (plus the caller's write).
    """

    def __init__(self, sink: Writable, recipients: Sequence[Recipient]):
        self._sink = sink
        file_key = secrets.token_bytes(_FILE_KEY_SIZE)
        header = _header(file_key, recipients)
        nonce = secrets.token_bytes(16)
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._buffer = bytearray()
        self._counter = 0
        self._closed = False
        sink.write(header + nonce)

    def write(self, data: bytes, /) -> int:
        if self._closed:
            raise ValueError("write to a closed encrypting writer")
        # A chunk is sealed only once more data follows it: only close() knows which chunk
        # is the last one. Full chunks are sealed straight from the caller's buffer (no copy).
        view = memoryview(data)
        pos = 0
        if self._buffer:
            pos = min(CHUNK_SIZE - len(self._buffer), len(view))
            self._buffer += view[:pos]
            if len(self._buffer) < CHUNK_SIZE or pos == len(view):
                return len(data)
            self._seal(self._buffer, last=False)
            self._buffer.clear()
        while len(view) - pos > CHUNK_SIZE:
            self._seal(view[pos : pos + CHUNK_SIZE], last=False)
            pos += CHUNK_SIZE
        self._buffer += view[pos:]
        return len(data)

    def _seal(self, chunk: bytes | bytearray | memoryview, last: bool) -> None:
        self._sink.write(self._aead.encrypt(_chunk_nonce(self._counter, last), chunk, None))
        self._counter += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._seal(bytes(self._buffer), last=True)
        self._buffer.clear()


def encrypting_writer(sink: Writable, recipients: Sequence[Recipient]) -> AgeWriter:
    """Return a writer that encrypts into ``sink`` for ``recipients`` (any one decrypts);
    raise UsageError when there is no recipient or a passphrase is mixed with others."""
    return AgeWriter(sink, recipients)


# -- reading ---------------------------------------------------------------------------------
class _Source:
    """Exact-size reads over a Readable, with a pushback buffer for the header parser."""

    def __init__(self, source: Readable):
        self._source = source
        self._buffer = bytearray()
        self._eof = False

    def _more(self, size: int) -> bool:
        if self._eof:
            return False
        data = self._source.read(size)
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True

    def readline(self, limit: int) -> bytes:
        """Return one line with its newline, or what is left at EOF (at most ``limit``)."""
        while True:
            end = self._buffer.find(b"\n", 0, limit)
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) >= limit or not self._more(4096):
                line = bytes(self._buffer[:limit])
                del self._buffer[:limit]
                return line

    def read_exact(self, size: int) -> bytes:
        """Return ``size`` bytes, or fewer only at EOF."""
        while len(self._buffer) < size and self._more(max(size - len(self._buffer), 4096)):
            pass
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


def _read_header(src: _Source) -> tuple[list[_Stanza], bytes, bytes]:
    """Return (stanzas, header bytes covered by the MAC, MAC); raise IntegrityError."""
    raw = bytearray()

    def line() -> str:
        data = src.readline(_MAX_HEADER)
        if not raw and not data.startswith(VERSION_LINE):
            if data.startswith(b"-----BEGIN AGE ENCRYPTED FILE"):
                raise UsageError(
                    "ASCII-armored age files are not supported",
                    hint="Decrypt it with: age -d -i KEY FILE",
                )
            raise _damaged("it does not start with the age v1 header (not an age file?)")
        raw.extend(data)
        if len(raw) > _MAX_HEADER:
            raise _damaged("the header is larger than 1 MiB")
        if not data.endswith(b"\n"):
            raise _damaged("the header ends early (truncated file?)")
        try:
            return data[:-1].decode("ascii")
        except UnicodeDecodeError:
            raise _damaged("the header contains non-ASCII bytes") from None

    if line() != VERSION_LINE.decode():
        raise _damaged("the first line is not exactly the age v1 version line")
    stanzas: list[_Stanza] = []
    while True:
        text = line()
        if text.startswith("--- "):
            mac_text = text[4:]
            covered = bytes(raw[: len(raw) - len(text) - 1]) + b"---"
            return stanzas, covered, _decode_or_damaged(mac_text, "the header MAC")
        if not text.startswith("-> "):
            raise _damaged("a header line is neither a stanza nor the MAC line")
        args = text[3:].split(" ")
        if not args or any(not a for a in args):
            raise _damaged("a stanza has an empty argument")
        body = ""
        while True:
            part = line()
            if len(part) > _COLUMNS:
                raise _damaged("a stanza body line is longer than 64 columns")
            body += part
            if len(part) < _COLUMNS:
                break
        stanzas.append(_Stanza(args[0], tuple(args[1:]), _decode_or_damaged(body, "a stanza")))


class AgeReader:
    """Decrypt an age stream; every chunk is authenticated before it is returned."""

    def __init__(self, source: Readable, identities: Sequence[Identity], name: str = ""):
        self._name = name or "encrypted stream"
        self._src = _Source(source)
        stanzas, covered, mac = _read_header(self._src)
        file_key = self._unwrap(stanzas, identities)
        expected = hmac.new(_hkdf(file_key, b"", b"header"), covered, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, mac):
            raise IntegrityError(
                f"{self._name}: the age header was modified (its MAC does not match)",
                hint=_DAMAGED_HINT,
            )
        nonce = self._src.read_exact(16)
        if len(nonce) != 16:
            raise IntegrityError(f"{self._name} is truncated: the payload nonce is missing")
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._counter = 0
        self._plain = b""
        self._offset = 0
        self._done = False

    def _unwrap(self, stanzas: list[_Stanza], identities: Sequence[Identity]) -> bytes:
        if not identities:
            raise CredentialError(
                f"{self._name} is encrypted and no identity was given", hint=_KEY_HINT
            )
        if any(s.type == "scrypt" for s in stanzas) and len(stanzas) != 1:
            raise _damaged("a scrypt stanza is not alone in the header")
        for stanza in stanzas:
            for identity in identities:
                file_key = identity._unwrap(stanza)
                if file_key is not None:
                    if len(file_key) != _FILE_KEY_SIZE:
                        raise _damaged("the wrapped file key has the wrong size")
                    return file_key
        kinds = sorted({s.type for s in stanzas})
        if kinds == ["scrypt"]:
            raise CredentialError(
                f"{self._name} is encrypted with a passphrase and no passphrase was given",
                hint="Set the variable named by storage.encryption.passphrase_env.",
            )
        raise CredentialError(
            f"none of the {len(identities)} identity(ies) given can decrypt {self._name} "
            f"(it has {len(stanzas)} recipient stanza(s): {', '.join(kinds) or 'none'})",
            hint=_KEY_HINT,
        )

    def _next_chunk(self) -> None:
        # Read one byte beyond a full chunk: only the presence of more data tells whether this
        # chunk must carry the "last" flag.
        data = self._src.read_exact(ENCRYPTED_CHUNK + 1)
        more = len(data) > ENCRYPTED_CHUNK
        if more:
            self._src._buffer[:0] = data[ENCRYPTED_CHUNK:]
            data = data[:ENCRYPTED_CHUNK]
        if len(data) < TAG_SIZE:
            raise IntegrityError(
                f"{self._name} is truncated: chunk {self._counter} is incomplete",
                hint=_DAMAGED_HINT,
            )
        try:
            plain = self._aead.decrypt(_chunk_nonce(self._counter, not more), data, None)
        except InvalidTag:
            raise self._chunk_error(data, more) from None
        if not more and not plain and self._counter > 0:
            raise _damaged("the last chunk is empty (not allowed after data)")
        self._counter += 1
        self._done = not more
        self._plain, self._offset = plain, 0

    def _chunk_error(self, data: bytes, more: bool) -> IntegrityError:
        if not more:
            # A chunk that opens as a middle chunk at EOF: the file was cut at a chunk boundary.
            try:
                self._aead.decrypt(_chunk_nonce(self._counter, False), data, None)
            except InvalidTag:
                pass
            else:
                return IntegrityError(
                    f"{self._name} is truncated after chunk {self._counter} "
                    f"({self._counter + 1} × 64 KiB)",
                    hint=_DAMAGED_HINT,
                )
        return IntegrityError(
            f"{self._name} is damaged: chunk {self._counter} (at plaintext offset "
            f"{self._counter * CHUNK_SIZE}) fails authentication"
            + ("" if not more else " or data follows the final chunk"),
            hint=_DAMAGED_HINT,
        )

    def read(self, size: int = -1, /) -> bytes:
        want = size if size and size > 0 else CHUNK_SIZE
        while self._offset >= len(self._plain):
            if self._done:
                return b""
            self._next_chunk()
        out = self._plain[self._offset : self._offset + want]
        self._offset += len(out)
        return out


def decrypting_reader(
    source: Readable, identities: Sequence[Identity], name: str = ""
) -> AgeReader:
    """Return a reader of the plaintext of an age stream.

    The header is parsed and its MAC verified here, before any plaintext is available; raise
    CredentialError when no identity matches (or none is given), IntegrityError when the
    header is damaged. Reads raise IntegrityError on a tampered or truncated chunk.
    """
    return AgeReader(source, identities, name)


@dataclass(frozen=True)
class EncryptionPlan:
    """How new backups are encrypted: the recipients, the suffix and what the record says."""

    recipients: tuple[Recipient, ...]
    name: str = NAME
    suffix: str = SUFFIX

    def writer(self, sink: Writable) -> AgeWriter:
        """Return an encrypting writer into ``sink``."""
        return encrypting_writer(sink, self.recipients)

    def metadata(self) -> dict[str, object]:
        """Return what the backup record keeps: public keys only, never a secret."""
        return {
            "format": VERSION_LINE.decode(),
            "recipients": [str(r) for r in self.recipients if isinstance(r, X25519Recipient)],
            "passphrase": any(isinstance(r, PassphraseRecipient) for r in self.recipients),
        }
