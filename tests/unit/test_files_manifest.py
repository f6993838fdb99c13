"""The files manifest: exact round trip of names, order and truncation checks."""

from __future__ import annotations

import io

import pytest

from vya_backupdb.engines.files_manifest import (
    ManifestEntry,
    ManifestReader,
    ManifestWriter,
    read_manifest,
)
from vya_backupdb.errors import IntegrityError

pytestmark = pytest.mark.unit


def _manifest(entries: list[ManifestEntry]) -> bytes:
    out = io.BytesIO()
    writer = ManifestWriter(out, backup_id="b1", strategy="full")
    for entry in entries:
        writer.add(entry)
    writer.close()
    return out.getvalue()


def test_manifest_round_trip_special_names_exact() -> None:
    entries = [
        ManifestEntry(path=b"/d", type="dir", mode=0o2755),
        ManifestEntry(path=b"/d/bad\xff\xfename", type="file", size=3, sha256="ab", backup="b1"),
        ManifestEntry(
            path=b"/d/new\nline", type="file", size=1, mtime_ns=1_700_000_000_123_456_789
        ),
        ManifestEntry(path="/d/ünï cödé".encode(), type="symlink", link=b"../t\xff"),
    ]
    data = _manifest(entries)
    assert data.count(b"\n") == len(entries) + 2  # header + entries + trailer, one per line
    reader = ManifestReader(io.BytesIO(data))
    assert list(reader) == entries
    assert reader.header is not None
    assert reader.header.backup_id == "b1"


def test_manifest_truncated_raises_integrity_error() -> None:
    data = _manifest([ManifestEntry(path=b"/a", type="dir"), ManifestEntry(path=b"/b", type="dir")])
    truncated = data[: data.rindex(b'{"end"')]
    with pytest.raises(IntegrityError, match="truncated"):
        list(read_manifest(io.BytesIO(truncated)))


def test_manifest_unsorted_raises_integrity_error() -> None:
    data = _manifest([ManifestEntry(path=b"/a", type="dir"), ManifestEntry(path=b"/b", type="dir")])
    lines = data.split(b"\n")
    lines[1], lines[2] = lines[2], lines[1]
    with pytest.raises(IntegrityError, match="not sorted"):
        list(read_manifest(io.BytesIO(b"\n".join(lines))))


def test_manifest_not_a_manifest_raises_integrity_error() -> None:
    with pytest.raises(IntegrityError, match="header"):
        list(read_manifest(io.BytesIO(b'{"hello": 1}\n')))


def test_manifest_writer_out_of_order_raises_value_error() -> None:
    writer = ManifestWriter(io.BytesIO(), backup_id="b", strategy="full")
    writer.add(ManifestEntry(path=b"/b", type="dir"))
    with pytest.raises(ValueError, match="out of order"):
        writer.add(ManifestEntry(path=b"/a", type="dir"))
