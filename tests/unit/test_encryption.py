"""age v1 streaming encryption: round trips, tamper detection, interop with the age CLI."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from vya_backupdb.errors import CredentialError, IntegrityError, UsageError
from vya_backupdb.pipeline.encryption import (
    CHUNK_SIZE,
    Identity,
    PassphraseIdentity,
    PassphraseRecipient,
    Recipient,
    X25519Identity,
    decrypting_reader,
    encrypting_writer,
    generate_identity,
    identity_file_text,
    load_identities,
    parse_identity,
    parse_recipient,
    write_identity_file,
)

pytestmark = pytest.mark.unit

SECRET, PUBLIC = generate_identity()
IDENTITY = parse_identity(SECRET)
RECIPIENT = parse_recipient(PUBLIC)


class _ShortReads(io.BytesIO):
    """A source that returns fewer bytes than asked, like a pipe or a socket."""

    def read(self, size: int | None = -1, /) -> bytes:
        return super().read(min(size, 1000) if size and size > 0 else 1000)


def _encrypt(
    data: bytes, recipients: Sequence[Recipient] | None = None, write_size: int = 100_000
) -> bytes:
    sink = io.BytesIO()
    writer = encrypting_writer(sink, recipients or [RECIPIENT])
    for i in range(0, len(data), write_size):
        writer.write(data[i : i + write_size])
    writer.close()
    return sink.getvalue()


def _decrypt(
    blob: bytes, identities: Sequence[Identity] | None = None, read_size: int = 7777
) -> bytes:
    reader = decrypting_reader(_ShortReads(blob), identities or [IDENTITY])
    return b"".join(iter(lambda: reader.read(read_size), b""))


@pytest.mark.parametrize(
    "size",
    [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, 3 * CHUNK_SIZE + 12345],
)
def test_age_round_trip_sizes_on_chunk_boundaries_returns_same_bytes(size: int) -> None:
    data = os.urandom(size)
    blob = _encrypt(data)
    assert data not in blob or size < 16
    assert _decrypt(blob) == data


@pytest.mark.parametrize("write_size", [1, 4099, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1])
@pytest.mark.parametrize("size", [2 * CHUNK_SIZE, 2 * CHUNK_SIZE + 5])
def test_age_writer_any_write_size_gives_same_length_and_round_trips(
    write_size: int, size: int
) -> None:
    data = os.urandom(size)
    blob = _encrypt(data, write_size=write_size)
    assert len(blob) == len(_encrypt(data, write_size=10**6))
    assert _decrypt(blob) == data


def test_age_writer_small_writes_match_big_writes_in_size() -> None:
    data = os.urandom(CHUNK_SIZE * 2 + 5)
    assert len(_encrypt(data, write_size=7)) == len(_encrypt(data, write_size=10**6))
    assert _decrypt(_encrypt(data, write_size=7)) == data


def test_age_several_recipients_either_identity_decrypts() -> None:
    other_secret, other_public = generate_identity()
    blob = _encrypt(b"rotate me", [RECIPIENT, parse_recipient(other_public)])
    assert _decrypt(blob, [IDENTITY]) == b"rotate me"
    assert _decrypt(blob, [parse_identity(other_secret)]) == b"rotate me"


def test_age_wrong_identity_raises_credential_error_before_plaintext() -> None:
    blob = _encrypt(b"secret")
    wrong = parse_identity(generate_identity()[0])
    with pytest.raises(CredentialError, match="none of the 1 identity"):
        decrypting_reader(io.BytesIO(blob), [wrong])


def test_age_no_identity_raises_credential_error() -> None:
    with pytest.raises(CredentialError, match="no identity was given"):
        decrypting_reader(io.BytesIO(_encrypt(b"x")), [])


def test_age_passphrase_round_trip_and_wrong_passphrase_fails() -> None:
    blob = _encrypt(b"by passphrase", [PassphraseRecipient("correct horse", log_n=10)])
    assert _decrypt(blob, [PassphraseIdentity("correct horse")]) == b"by passphrase"
    with pytest.raises(CredentialError, match="passphrase is wrong"):
        decrypting_reader(io.BytesIO(blob), [PassphraseIdentity("wrong")])
    with pytest.raises(CredentialError, match="passphrase"):
        decrypting_reader(io.BytesIO(blob), [IDENTITY])


def test_age_passphrase_mixed_with_recipient_is_refused() -> None:
    with pytest.raises(UsageError, match="passphrase cannot be combined"):
        encrypting_writer(io.BytesIO(), [RECIPIENT, PassphraseRecipient("p", log_n=10)])


def test_age_header_byte_flipped_raises_integrity_error() -> None:
    blob = bytearray(_encrypt(b"payload"))
    # Flip a byte of the first line (covered by the MAC, not needed to unwrap the key).
    blob[5] ^= 0x01
    with pytest.raises(IntegrityError):
        decrypting_reader(io.BytesIO(bytes(blob)), [IDENTITY])


def test_age_header_mac_mismatch_raises_integrity_error() -> None:
    other = _encrypt(b"payload")
    blob = _encrypt(b"payload")
    # Swap the MAC line with another file's: same shape, wrong MAC.
    head, _, rest = blob.partition(b"\n--- ")
    _, _, other_rest = other.partition(b"\n--- ")
    forged = head + b"\n--- " + other_rest[:43] + rest[43:]
    with pytest.raises(IntegrityError, match="MAC"):
        decrypting_reader(io.BytesIO(forged), [IDENTITY])


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_age_payload_byte_flipped_raises_integrity_error(where: str) -> None:
    data = os.urandom(3 * CHUNK_SIZE + 100)
    blob = bytearray(_encrypt(data))
    offset = {"first": len(blob) - 3 * (CHUNK_SIZE + 16) - 110, "middle": len(blob) // 2 + 5}
    blob[offset.get(where, len(blob) - 3)] ^= 0x80
    reader = decrypting_reader(io.BytesIO(bytes(blob)), [IDENTITY])
    with pytest.raises(IntegrityError, match="fails authentication"):
        while reader.read(CHUNK_SIZE):
            pass


def test_age_damaged_chunk_is_reported_before_its_plaintext() -> None:
    data = b"A" * CHUNK_SIZE + b"B" * CHUNK_SIZE + b"C"
    blob = bytearray(_encrypt(data))
    blob[-(17 + 10)] ^= 1  # inside the second chunk (the last one is 17 bytes)
    reader = decrypting_reader(io.BytesIO(bytes(blob)), [IDENTITY])
    assert reader.read(CHUNK_SIZE) == b"A" * CHUNK_SIZE
    with pytest.raises(IntegrityError, match="chunk 1"):
        reader.read(CHUNK_SIZE)


@pytest.mark.parametrize("cut", [1, 17, 5000])
def test_age_truncated_payload_raises_integrity_error(cut: int) -> None:
    blob = _encrypt(os.urandom(2 * CHUNK_SIZE + 10))
    with pytest.raises(IntegrityError, match=r"truncated|fails authentication"):
        _decrypt(blob[:-cut])


def test_age_truncated_at_chunk_boundary_says_truncated() -> None:
    data = os.urandom(2 * CHUNK_SIZE + 10)
    blob = _encrypt(data)
    with pytest.raises(IntegrityError, match="truncated after chunk 1"):
        _decrypt(blob[: len(blob) - (10 + 16)])


def test_age_truncated_header_raises_integrity_error() -> None:
    blob = _encrypt(b"x")
    with pytest.raises(IntegrityError, match="header ends early"):
        decrypting_reader(io.BytesIO(blob[:30]), [IDENTITY])


def test_age_appended_data_raises_integrity_error() -> None:
    blob = _encrypt(b"x" * 10)
    with pytest.raises(IntegrityError):
        _decrypt(blob + b"\x00" * (CHUNK_SIZE + 40))


def test_age_not_an_age_file_raises_integrity_error() -> None:
    with pytest.raises(IntegrityError, match="not an age file"):
        decrypting_reader(io.BytesIO(b"\x28\xb5\x2f\xfd zstd frame\n"), [IDENTITY])


def test_parse_recipient_bad_checksum_raises_usage_error() -> None:
    bad = PUBLIC[:-1] + ("q" if PUBLIC[-1] != "q" else "p")
    with pytest.raises(UsageError, match="not an age public key"):
        parse_recipient(bad)
    with pytest.raises(UsageError):
        parse_recipient(SECRET)


def test_identity_round_trips_through_its_string_form() -> None:
    assert str(IDENTITY) == SECRET
    assert str(IDENTITY.recipient) == PUBLIC
    assert PUBLIC.startswith("age1") and len(PUBLIC) == 62
    assert SECRET.startswith("AGE-SECRET-KEY-1") and len(SECRET) == 74


def test_load_identities_skips_comments_and_reports_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "key.txt"
    path.write_text(identity_file_text(SECRET, PUBLIC) + "\n# another\n")
    assert load_identities(path) == [IDENTITY]
    path.write_text("# only comments\n")
    with pytest.raises(CredentialError, match="holds no age identity"):
        load_identities(path)
    path.write_text("AGE-SECRET-KEY-1NOTAKEY\n")
    with pytest.raises(CredentialError, match="line 1"):
        load_identities(path)
    with pytest.raises(CredentialError, match="cannot read"):
        load_identities(tmp_path / "missing")


def test_write_identity_file_is_private_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "k.txt"
    write_identity_file(path, SECRET, PUBLIC)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_identities(path) == [IDENTITY]
    with pytest.raises(UsageError, match="already exists"):
        write_identity_file(path, SECRET, PUBLIC)


def test_identity_repr_never_shows_the_key() -> None:
    assert SECRET not in repr(IDENTITY)
    assert "horse" not in repr(PassphraseIdentity("horse"))
    assert isinstance(IDENTITY, X25519Identity)


# -- interop with the independent implementation (Debian's `age` package) ----------------------
needs_age = pytest.mark.skipif(shutil.which("age") is None, reason="the age CLI is not installed")


@pytest.mark.integration
@needs_age
def test_age_cli_decrypts_our_multi_chunk_ciphertext(tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK_SIZE) + b"tail"
    key = tmp_path / "key.txt"
    write_identity_file(key, SECRET, PUBLIC)
    second = parse_recipient(generate_identity()[1])
    (tmp_path / "f.age").write_bytes(_encrypt(data, [second, RECIPIENT]))
    out = subprocess.run(
        ["age", "-d", "-i", str(key), str(tmp_path / "f.age")], capture_output=True, check=True
    )
    assert out.stdout == data


@pytest.mark.integration
@needs_age
@pytest.mark.parametrize("size", [0, CHUNK_SIZE, CHUNK_SIZE * 2 + 3])
def test_age_cli_ciphertext_decrypts_with_ours(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    out = subprocess.run(["age", "-r", PUBLIC], input=data, capture_output=True, check=True)
    assert _decrypt(out.stdout) == data


@pytest.mark.integration
@needs_age
def test_age_keygen_identity_loads_in_ours_and_ours_in_age(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs.txt"
    subprocess.run(["age-keygen", "-o", str(theirs)], capture_output=True, check=True)
    public = subprocess.run(
        ["age-keygen", "-y", str(theirs)], capture_output=True, check=True, text=True
    ).stdout.strip()
    assert str(load_identities(theirs)[0].recipient) == public
    ours = tmp_path / "ours.txt"
    write_identity_file(ours, SECRET, PUBLIC)
    derived = subprocess.run(
        ["age-keygen", "-y", str(ours)], capture_output=True, check=True, text=True
    ).stdout.strip()
    assert derived == PUBLIC


@pytest.mark.integration
@needs_age
def test_age_cli_rejects_our_tampered_ciphertext(tmp_path: Path) -> None:
    key = tmp_path / "key.txt"
    write_identity_file(key, SECRET, PUBLIC)
    blob = bytearray(_encrypt(os.urandom(1000)))
    blob[-50] ^= 1
    (tmp_path / "f.age").write_bytes(bytes(blob))
    out = subprocess.run(
        ["age", "-d", "-i", str(key), str(tmp_path / "f.age")], capture_output=True, check=False
    )
    assert out.returncode != 0
