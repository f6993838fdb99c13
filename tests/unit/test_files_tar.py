"""The fast tar header path gives the same bytes as tarfile's PAX encoder."""

from __future__ import annotations

import io
import tarfile

import pytest

from vya_backupdb.engines.files_tar import TarWriter, fast_header

pytestmark = pytest.mark.unit


def _info(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


@pytest.mark.parametrize(
    "info",
    [
        _info("srv/app/a.conf", size=1234, mode=0o640, uid=33, gid=33, uname="www", mtime=17),
        _info("srv/app", tarfile.DIRTYPE, mode=0o2775, mtime=1_700_000_000),
        _info("srv/l", tarfile.SYMTYPE, linkname="../x y", uname="root", gname="root"),
        _info("srv/h", tarfile.LNKTYPE, linkname="srv/app/a.conf"),
        _info("srv/ns", size=5, mtime=1_700_000_000, pax_headers={"mtime": "1700000000.1"}),
        _info("a", pax_headers={"mtime": "1700000000.000000009"}, size=8**11 - 1),
    ],
    ids=["file", "dir", "symlink", "hardlink", "pax-mtime", "max-size"],
)
def test_fast_header_simple_entries_identical_to_tarfile(info: tarfile.TarInfo) -> None:
    expected = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    assert fast_header(info) == expected


@pytest.mark.parametrize(
    "info",
    [
        _info("ünï"),
        _info("x" * 101),
        _info("bad\udcff"),
        _info("l", tarfile.SYMTYPE, linkname="y" * 101),
        _info("big", size=8**11),
        _info("fifo", tarfile.FIFOTYPE),
        _info("u", uid=8**7),
    ],
    ids=["unicode", "long", "invalid-utf8", "long-link", "huge", "fifo", "big-uid"],
)
def test_fast_header_special_entries_fall_back_to_none(info: tarfile.TarInfo) -> None:
    assert fast_header(info) is None


def test_tar_writer_output_reads_back_with_tarfile() -> None:
    out = io.BytesIO()
    writer = TarWriter(out)
    writer.add(_info("d", tarfile.DIRTYPE, mode=0o755))
    writer.add(_info("d/ünï\nname", size=3, mode=0o600), io.BytesIO(b"abc"))
    writer.add(_info("d/f", size=700, pax_headers={"mtime": "5.123456789"}), io.BytesIO(b"z" * 700))
    writer.close()
    assert len(out.getvalue()) % tarfile.RECORDSIZE == 0
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r:", encoding="utf-8") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["d", "d/ünï\nname", "d/f"]
        extracted = tar.extractfile(members[2])
        assert extracted is not None
        assert extracted.read() == b"z" * 700
        assert members[2].pax_headers["mtime"] == "5.123456789"
