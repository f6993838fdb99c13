"""The mariadb-dump script scanner: sections, tail and row counts, whatever the chunking."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vya_backupdb.engines.mysql_stream import (
    SqlDumpScanner,
    parse_comment_name,
    plan_sections,
    sections_record,
)

HEAD = (
    "/*M!999999\\- enable the sandbox mode */ \n"
    "-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB\n--\n-- Host: h    Database: d\n"
    "/*!40014 SET @OLD_UNIQUE_CHECKS=@@UNIQUE_CHECKS, UNIQUE_CHECKS=0 */;\n\n"
)


def table(name: str, rows: list[str], *, per_statement: int = 2, trigger: str = "") -> str:
    quoted = "`" + name.replace("`", "``") + "`"
    text = (
        f"--\n-- Table structure for table {quoted}\n--\n\n"
        f"DROP TABLE IF EXISTS {quoted};\nCREATE TABLE {quoted} (\n  `id` int(11)\n);\n\n"
        f"--\n-- Dumping data for table {quoted}\n--\n\n"
        f"LOCK TABLES {quoted} WRITE;\n/*!40000 ALTER TABLE {quoted} DISABLE KEYS */;\n"
    )
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        text += f"INSERT INTO {quoted} VALUES\n" + ",\n".join(chunk) + ";\n"
    text += f"/*!40000 ALTER TABLE {quoted} ENABLE KEYS */;\nUNLOCK TABLES;\n"
    if trigger:
        text += f"DELIMITER ;;\n/*!50003 CREATE*/ /*!50003 TRIGGER x {trigger} */;;\nDELIMITER ;\n"
    return text + "\n"


TAIL = (
    "--\n-- Dumping events for database 'd'\n--\n\n--\n-- Dumping routines for database 'd'\n"
    "--\nDELIMITER ;;\nCREATE PROCEDURE p()\n--\n-- Table structure for table `no`\n"
    "SELECT 1\n;;\nDELIMITER ;\n/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;\n\n-- Dump completed\n"
)

ROWS = [f"({i},'a\\n-- Table structure for table `x`\\n',0x00FF)" for i in range(7)]
SCRIPT = (
    HEAD
    + table("a", ROWS, per_statement=3, trigger="BEFORE INSERT ON a FOR EACH ROW\n"
            "--\n-- Table structure for table `fake`\n--\nSET NEW.id = NEW.id")
    + table("empty", [])
    + "--\n-- Sequence structure for `s`\n--\n\nDROP SEQUENCE IF EXISTS `s`;\n\n"
    + table("we`ird ü", ROWS[:1])
    + "--\n-- Temporary table structure for view `v`\n--\n\n/*!50001 CREATE VIEW `v` AS SELECT\n"
    " 1 AS `id` */;\n\n"
    + TAIL
).encode()  # fmt: skip


def scan(data: bytes, cuts: list[int]) -> SqlDumpScanner:
    scanner = SqlDumpScanner()
    previous = 0
    for cut in [*sorted(cuts), len(data)]:
        scanner.scan(data[previous:cut])
        previous = cut
    return scanner


def summary(scanner: SqlDumpScanner) -> tuple[object, ...]:
    units = [(u.id, u.kind, u.name, u.offset) for u in scanner.units]
    return (units, scanner.counts, scanner.complete, scanner.counts_valid, scanner.feed(b""))


def test_sections_tail_and_counts_of_a_whole_script() -> None:
    scanner = scan(SCRIPT, [])
    assert scanner.complete and scanner.counts_valid
    assert scanner.counts == {"a": 7, "empty": 0, "we`ird ü": 1}
    assert [(u.kind, u.name) for u in scanner.units] == [
        ("table", "a"),
        ("table", "empty"),
        ("sequence", "s"),
        ("table", "we`ird ü"),
        ("view", "v"),
        ("tail", None),
    ]
    # Every unit starts at the beginning of its comment line; the tail must start a frame.
    for unit in scanner.units:
        assert SCRIPT[unit.offset - 1 : unit.offset + 3] == b"\n-- "
    assert scanner.must_cut(scanner.units[-1].id) and not scanner.must_cut(1)
    assert scanner.tail_unit == 6
    assert scanner.feed(b"") == [(u.offset, u.id) for u in scanner.units]
    assert scanner.feed(b"") == []  # reported once


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(SCRIPT)), max_size=40))
def test_any_chunking_gives_the_same_result(cuts: list[int]) -> None:
    assert summary(scan(SCRIPT, cuts)) == summary(scan(SCRIPT, []))


@pytest.mark.parametrize("size", [1, 2, 3, 13, 40, 41, 64])
def test_tiny_chunks_give_the_same_result(size: int) -> None:
    cuts = list(range(size, len(SCRIPT), size))
    assert summary(scan(SCRIPT, cuts)) == summary(scan(SCRIPT, []))


@pytest.mark.parametrize(
    "insert",
    [
        "INSERT INTO `t` VALUES (1),(2);\n",  # MySQL's mysqldump: a statement per line
        "INSERT INTO `t` VALUES (1);\nINSERT INTO `t` VALUES (2);\n",  # --skip-extended-insert
        "INSERT INTO `t` (`id`) VALUES\n(1),\n(2);\n",  # --complete-insert
        "INSERT IGNORE INTO `t` VALUES\n(1),\n(2);\n",  # --insert-ignore
        "set autocommit=0;\nINSERT INTO `t` VALUES\n(1),\n(2);\ncommit;\n",  # --no-autocommit
    ],
)
def test_other_dump_shapes_are_not_counted(insert: str) -> None:
    data = (
        HEAD + "--\n-- Table structure for table `t`\n--\n\n"
        "--\n-- Dumping data for table `t`\n--\n\nLOCK TABLES `t` WRITE;\n"
        "/*!40000 ALTER TABLE `t` DISABLE KEYS */;\n"
        + insert
        + "/*!40000 ALTER TABLE `t` ENABLE KEYS */;\nUNLOCK TABLES;\n\n"
        + TAIL
    ).encode()
    scanner = scan(data, [])
    assert scanner.complete  # the sections are still found
    assert not scanner.counts_valid


def test_a_script_without_its_tail_is_incomplete() -> None:
    cut = SCRIPT.index(b"-- Dumping events")
    scanner = scan(SCRIPT[:cut], [])
    assert not scanner.complete and not scanner.counts_valid and scanner.tail_unit is None


def test_comment_names() -> None:
    assert parse_comment_name(b"a``b`") == "a`b"
    assert parse_comment_name(b"no end") is None
    assert parse_comment_name(b"a`b`") is None
    assert parse_comment_name(b"\xff`") is None


def _frames(*units: tuple[int, ...]) -> list[tuple[int, int, tuple[int, ...]]]:
    return [(100 * n, 1000 * n, ids) for n, ids in enumerate(units)]


def _sections(links: object = None, kinds: dict[int, str] | None = None) -> dict[str, object]:
    kinds = kinds or {}
    units = [[i, kinds.get(i, "table"), f"t{i}"] for i in range(1, 6)] + [[6, "tail", None]]
    return {"version": 1, "tail": 6, "units": units, "links": links if links is not None else []}


def test_plan_shares_frames_by_size_keeping_linked_tables_together() -> None:
    frames = _frames((), (1, 2), (3,), (4,), (5,), (6,))
    plan = plan_sections(frames, _sections(), 2)
    assert plan is not None and plan.tail == 6
    assert sorted(map(sorted, plan.workers)) == [[1, 2, 4], [3, 5]]
    linked = plan_sections(frames, _sections([["t1", "t5"], ["t3", "t4"]]), 2)
    assert linked is not None
    assert sorted(map(sorted, linked.workers)) == [[1, 2, 5], [3, 4]]
    assert sorted(map(sorted, linked.tables)) == [["t1", "t2", "t5"], ["t3", "t4"]]


@pytest.mark.parametrize(
    ("frames", "sections", "jobs"),
    [
        (_frames((), (1, 2), (3,), (4,), (5,), (6,)), _sections(), 1),  # one job
        (_frames((), (1, 2, 3, 4, 5), (6,)), _sections(), 4),  # one frame of tables
        (_frames((1,), (2, 3), (4,), (5, 6)), _sections(), 2),  # head and tail not alone
        (_frames((), (1, 2), (3,), (4,), (5,), (6,)), _sections(kinds={3: "sequence"}), 2),
        (_frames((), (1, 2), (3,), (4,), (6,)), _sections(), 2),  # a unit in no frame
        (_frames((), (1, 2), (3,), (4,), (5,), (6,)), {**_sections(), "links": None}, 2),
        (_frames((), (1, 2), (3,), (4,), (5,), (6,)), _sections([["t1", "nope"]]), 2),
        (_frames((), (1, 2), (3,), (4,), (5,), (6,)), {"version": 2}, 2),
        (
            _frames((), (1, 2), (3,), (4,), (5,), (6,)),
            _sections([["t1", "t3"], ["t3", "t5"], ["t5", "t4"]]),
            2,
        ),
    ],
)
def test_no_plan_when_nothing_can_be_shared_safely(
    frames: list[tuple[int, int, tuple[int, ...]]], sections: dict[str, object], jobs: int
) -> None:
    assert plan_sections(frames, sections, jobs) is None


def test_sections_record_keeps_units_tail_and_links() -> None:
    record = sections_record(scan(SCRIPT, []), [["a", "empty"]])
    assert record["tail"] == 6 and record["links"] == [["a", "empty"]]
    assert record["units"][0] == [1, "table", "a"]
