"""Pure parts of the MySQL/MariaDB parallel format: planning, argv, splitting, manifest, checks."""

from __future__ import annotations

import io
import queue
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.engines.mysql_parallel import (
    MANIFEST_KIND,
    MANIFEST_NAME,
    ArchiveStream,
    TableSplitter,
    _FileQueueReader,
    check_parallel_archive,
    choose_mysql_format,
    comment_name,
    ignored_tables,
    make_data_command,
    make_objects_command,
    make_schema_command,
    make_views_command,
    manifest_files,
    parse_comment_name,
    parse_manifest,
    plan_groups,
    read_manifest,
    render_manifest,
)
from vya_backupdb.errors import BackupFailed, IntegrityError, RestoreFailed

pytestmark = pytest.mark.unit

PASSWORD = "s3cret-pw"
CNF = Path("/tmp/vya-test.cnf")
WEIRD = "weird `name` 'q' ü"

HEADER = (
    b"/*M!999999\\- enable the sandbox mode */ \n-- MariaDB dump 10.19\n--\n"
    b"/*!40101 SET NAMES utf8mb4 */;\n/*!40014 SET FOREIGN_KEY_CHECKS=0 */;\n"
)


def _section(table: str, rows: str) -> bytes:
    quoted = comment_name(table).decode()
    return (
        f"\n--\n-- Dumping data for table {quoted}\n--\n\nLOCK TABLES {quoted} WRITE;\n"
        f"INSERT INTO {quoted} VALUES {rows};\nUNLOCK TABLES;\n"
    ).encode()


FOOTER = b"\n/*!40014 SET FOREIGN_KEY_CHECKS=@OLD_FOREIGN_KEY_CHECKS */;\n-- Dump completed on x\n"
OUTPUT = HEADER + _section("a", "(1)") + _section(WEIRD, "('--\\n-- x')") + FOOTER


def _instance(**overrides: Any) -> InstanceConfig:
    return InstanceConfig.model_validate(
        {"id": "my", "type": "mariadb", "host": "db", "port": 3307, **overrides}
    )


# -- decisions ---------------------------------------------------------------------------------


def test_choose_mysql_format_switches_only_above_a_known_size() -> None:
    assert choose_mysql_format("sql", 2000, 1000) == "parallel"
    assert choose_mysql_format("sql", 1000, 1000) == "sql"
    assert choose_mysql_format("sql", None, 1000) == "sql"
    assert choose_mysql_format("sql", 2000, None) == "sql"
    assert choose_mysql_format("parallel", 1, 1000) == "parallel"


def test_plan_groups_balances_sizes_largest_first() -> None:
    tables = [("a", 100), ("b", 60), ("c", 50), ("d", 10), ("e", 0)]
    assert plan_groups(tables, 2) == [["a", "d", "e"], ["b", "c"]]
    assert plan_groups(tables, 1) == [["a", "b", "c", "d", "e"]]


def test_plan_groups_never_makes_empty_groups() -> None:
    assert plan_groups([("a", 1), ("b", 1)], 8) == [["a"], ["b"]]
    assert plan_groups([], 4) == []


def test_ignored_tables_reads_only_this_database() -> None:
    options = ["--ignore-table=shop.logs", "--ignore-table=other.x", "--skip-extended-insert"]
    assert ignored_tables("shop", options) == {"logs"}


def test_parallel_config_is_refused_for_other_instance_types() -> None:
    with pytest.raises(ValidationError, match="mysql_format applies"):
        InstanceConfig.model_validate(
            {"id": "pg", "type": "postgresql", "mysql_format": "parallel"}
        )
    with pytest.raises(ValidationError, match="parallel_dump_above_bytes applies"):
        InstanceConfig.model_validate(
            {"id": "pg", "type": "postgresql", "parallel_dump_above_bytes": 10}
        )
    assert _instance(mysql_format="parallel", parallel_dump_above_bytes=10).jobs == 1


# -- argv --------------------------------------------------------------------------------------


def test_data_command_lists_tables_after_the_database_and_holds_no_password() -> None:
    instance = _instance(dump_options=["--skip-extended-insert"])
    command = make_data_command(
        "mariadb-dump", CNF, instance, "-db", ["t1", "-t2"],
        binlog_options=["--master-data=2"], password=PASSWORD,
    )  # fmt: skip
    argv = list(command.argv)
    assert argv[1] == f"--defaults-extra-file={CNF}"
    assert argv[-4:] == ["--", "-db", "t1", "-t2"]
    for option in ("--single-transaction", "--hex-blob", "--no-create-info", "--skip-triggers",
                   "--master-data=2", "--skip-extended-insert", "--protocol=TCP"):  # fmt: skip
        assert option in argv
    assert all(PASSWORD not in a for a in argv)
    assert PASSWORD not in command.display()
    assert command.stdout_buffer == 1024 * 1024  # the rows stream out: 1 MiB writes


def test_schema_objects_and_views_commands_split_the_code() -> None:
    instance = _instance()
    schema = list(make_schema_command("d", CNF, instance, "db", ["v1"]).argv)
    assert "--no-data" in schema
    assert "--skip-routines" in schema
    assert "--ignore-table=db.v1" in schema
    assert schema[-2:] == ["--", "db"]
    objects = list(make_objects_command("d", CNF, instance, "db", events=False).argv)
    assert {"--no-create-info", "--no-data", "--triggers", "--routines", "--skip-events"} <= set(
        objects
    )
    views = list(make_views_command("d", CNF, instance, "db", ["v1", "v 2"]).argv)
    assert views[-4:] == ["--", "db", "v1", "v 2"]
    assert "--skip-triggers" in views


# -- table names in comments --------------------------------------------------------------------


def test_parse_comment_name_reads_quoted_names() -> None:
    assert parse_comment_name(b"`a`\n--") == ("a", 3)
    assert parse_comment_name(comment_name(WEIRD) + b"\n") == (WEIRD, len(comment_name(WEIRD)))
    assert parse_comment_name(comment_name("two\nlines") + b"\n")[0] == "two\nlines"  # type: ignore[index]


def test_parse_comment_name_waits_for_the_end_of_the_name() -> None:
    assert parse_comment_name(b"") is None
    assert parse_comment_name(b"`abc") is None
    assert parse_comment_name(b"`a``") is None
    assert parse_comment_name(b"`abc`") is None  # a doubled backtick may follow
    with pytest.raises(ValueError, match="backticks"):
        parse_comment_name(b"abc")


# -- splitting --------------------------------------------------------------------------------


def _split(tmp_path: Path, data: bytes, chunk: int, tables: list[str]) -> TableSplitter:
    splitter = TableSplitter(tmp_path, 1, tables)
    for i in range(0, len(data), chunk):
        splitter.feed(data[i : i + chunk])
    splitter.close()
    return splitter


@pytest.mark.parametrize("chunk", [1, 2, 7, 33, 1 << 20])
def test_splitter_writes_one_self_contained_file_per_table(tmp_path: Path, chunk: int) -> None:
    out = tmp_path / str(chunk)
    splitter = _split(out, OUTPUT, chunk, ["a", WEIRD, "empty"])
    first, second, missing = splitter.files
    assert (first.table, first.file) == ("a", "data/w01-00001.sql")
    assert (second.table, second.file) == (WEIRD, "data/w01-00002.sql")
    assert missing.file is None
    assert missing.size == 0
    a = (out / "data/w01-00001.sql").read_bytes()
    weird = (out / "data/w01-00002.sql").read_bytes()
    assert a == HEADER + b"\n" + _section("a", "(1)")[1:] + b"\n"
    assert weird == HEADER + b"\n" + _section(WEIRD, "('--\\n-- x')")[1:] + FOOTER
    assert first.size == len(a)
    assert second.size == len(weird)
    assert splitter.header == HEADER + b"\n"


def test_splitter_refuses_data_of_a_table_it_was_not_given(tmp_path: Path) -> None:
    splitter = TableSplitter(tmp_path, 3, ["a"])
    with pytest.raises(BackupFailed, match="worker 3 wrote unexpected output"):
        splitter.feed(HEADER + _section("b", "(1)"))
    splitter.abort()


def test_splitter_refuses_a_mark_without_a_quoted_name(tmp_path: Path) -> None:
    splitter = TableSplitter(tmp_path, 1, ["a"])
    with pytest.raises(BackupFailed, match="without a table name"):
        splitter.feed(HEADER + b"\n--\n-- Dumping data for table a\n")


def test_splitter_refuses_the_same_table_twice(tmp_path: Path) -> None:
    splitter = TableSplitter(tmp_path, 1, ["a"])
    with pytest.raises(BackupFailed, match="not given"):
        splitter.feed(HEADER + _section("a", "(1)") + _section("a", "(2)"))
    splitter.abort()


# -- manifest and archive checks ----------------------------------------------------------------


def _dump_dir(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    directory = tmp_path / "dump"
    splitter = _split(directory, OUTPUT, 1 << 20, ["a", WEIRD])
    trailer = b"-- Dump completed on 2026-01-01\n"
    for name in ("schema.sql", "objects.sql", "views.sql"):
        (directory / name).write_bytes(b"SELECT 1;\n" + trailer)
    (directory / "events.sql").write_bytes(b"-- events by vya\n")

    def entry(name: str) -> dict[str, Any]:
        return {"file": name, "size": (directory / name).stat().st_size}

    manifest = {
        "format": MANIFEST_KIND,
        "version": 1,
        "schema": entry("schema.sql"),
        "objects": entry("objects.sql"),
        "events": entry("events.sql"),
        "views": entry("views.sql"),
        "tables": [{"name": f.table, "file": f.file, "size": f.size} for f in splitter.files]
        + [{"name": "no data", "file": None, "size": 0}],
        "complete": True,
    }
    (directory / MANIFEST_NAME).write_bytes(render_manifest(manifest))
    return directory, manifest


ORDER = [
    "schema.sql",
    "data/w01-00001.sql",
    "data/w01-00002.sql",
    "objects.sql",
    "events.sql",
    "views.sql",
    MANIFEST_NAME,
]


def _tar(directory: Path, names: list[str], change: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            data = (change or {}).get(name, (directory / name).read_bytes())
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_archive_check_accepts_a_complete_archive(tmp_path: Path) -> None:
    directory, manifest = _dump_dir(tmp_path)
    assert manifest_files(manifest)[0] == ("schema.sql", manifest["schema"]["size"])
    raw = _tar(directory, ORDER)
    assert check_parallel_archive(io.BytesIO(raw), "x.tar", {"a", WEIRD}) == 2
    assert read_manifest(directory)["tables"][0]["name"] == "a"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("cut", "has no vya-parallel.json"),
        ("missing", "data/w01-00002.sql is missing"),
        ("size", "has 3 bytes, the manifest says"),
        ("trailer", "objects.sql does not end with mariadb-dump's completion line"),
        ("table", "table(s) not in the archive: gone"),
        ("garbage", "is damaged"),
    ],
)
def test_archive_check_names_each_kind_of_damage(tmp_path: Path, damage: str, message: str) -> None:
    directory, manifest = _dump_dir(tmp_path)
    order = ORDER
    expected = {"a"}
    if damage == "cut":
        raw = _tar(directory, order[:-1])[:-1024]  # no end-of-archive blocks either
    elif damage == "missing":
        raw = _tar(directory, [n for n in order if n != "data/w01-00002.sql"])
    elif damage == "size":
        raw = _tar(directory, order, {"data/w01-00001.sql": b"abc"})
    elif damage == "trailer":
        raw = _tar(directory, order, {"objects.sql": b"x" * manifest["objects"]["size"]})
    elif damage == "table":
        raw, expected = _tar(directory, order), {"a", "gone"}
    else:
        raw = b"\x01" * 5000
    with pytest.raises(IntegrityError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_parallel_archive(io.BytesIO(raw), "x.tar", expected)


def test_manifest_parsing_refuses_what_it_cannot_trust() -> None:
    good = {"format": MANIFEST_KIND, "version": 1, "complete": True, "tables": []}
    assert parse_manifest(render_manifest(good), RestoreFailed)["version"] == 1
    cases = [
        (b"{not json", "not valid JSON"),
        (render_manifest({**good, "format": "other"}), "not a vya-backupdb"),
        (render_manifest({**good, "version": 99}), "format version 99"),
        (render_manifest({**good, "complete": False}), "as complete"),
    ]
    for data, message in cases:
        with pytest.raises(RestoreFailed, match=message):
            parse_manifest(data, RestoreFailed)


def test_read_manifest_refuses_missing_resized_or_escaping_files(tmp_path: Path) -> None:
    directory, manifest = _dump_dir(tmp_path)
    (directory / "views.sql").write_bytes(b"short")
    with pytest.raises(RestoreFailed, match=r"views\.sql is missing or has another size"):
        read_manifest(directory)
    manifest["views"] = {"file": "../views.sql", "size": 5}
    (tmp_path / "views.sql").write_bytes(b"short")
    (directory / MANIFEST_NAME).write_bytes(render_manifest(manifest))
    with pytest.raises(RestoreFailed, match="missing or has another size"):
        read_manifest(directory)
    (directory / MANIFEST_NAME).unlink()
    with pytest.raises(RestoreFailed, match=r"has no vya-parallel\.json"):
        read_manifest(directory)


# -- loading ------------------------------------------------------------------------------------


def test_file_queue_reader_chains_files_on_separate_lines(tmp_path: Path) -> None:
    files: queue.Queue[Path | None] = queue.Queue()
    for i, text in enumerate([b"SELECT 1;", b"SELECT 2;\n", b"", b"SELECT 3;"]):
        path = tmp_path / f"{i}.sql"
        path.write_bytes(text)
        files.put(path)
    files.put(None)
    reader = _FileQueueReader(files, threading.Event(), remove=True)
    out = b""
    while chunk := reader.read(4):
        out += chunk
    assert out == b"SELECT 1;\nSELECT 2;\nSELECT 3;"
    assert reader.read(4) == b""
    reader.close()
    assert list(tmp_path.glob("*.sql")) == []


def test_file_queue_reader_stops_when_cancelled(tmp_path: Path) -> None:
    files: queue.Queue[Path | None] = queue.Queue()
    path = tmp_path / "a.sql"
    path.write_bytes(b"x" * 100)
    files.put(path)
    cancel = threading.Event()
    reader = _FileQueueReader(files, cancel)
    assert reader.read(10) == b"x" * 10
    cancel.set()
    assert reader.read(10) == b""
    reader.close()


# -- streaming ---------------------------------------------------------------------------------


def test_archive_stream_passes_bytes_in_order_then_eof() -> None:
    stream = ArchiveStream(limit=2)
    data = bytes(range(256)) * 20000  # several chunks: the writer waits for the reader

    def write() -> None:
        stream.write(data)
        stream.end()

    writer = threading.Thread(target=write)
    writer.start()
    out = b""
    while chunk := stream.read(100_000):
        out += chunk
    writer.join()
    assert out == data
    assert stream.read() == b""


def test_archive_stream_hands_the_writers_error_to_the_reader() -> None:
    stream = ArchiveStream()
    stream.write(b"abc")
    stream.end(BackupFailed("worker 2 failed"))
    assert stream.read() == b"abc"
    with pytest.raises(BackupFailed, match="worker 2 failed"):
        stream.read()


def test_archive_stream_stops_the_writer_when_the_reader_leaves() -> None:
    stream = ArchiveStream(limit=1)
    failures: list[BaseException] = []

    def write() -> None:
        try:
            while True:
                stream.write(b"x" * 1000)
        except Exception as exc:
            failures.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    assert stream.read(10) == b"x" * 10
    stream.close()
    writer.join(timeout=10)
    assert not writer.is_alive()
    assert type(failures[0]).__name__ == "_Abandoned"
    stream.end()  # after close: no error, nothing waits
