"""Pure parts of the MySQL/MariaDB engine: argv, option files, binlog parsing, users files."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.engines.base import ServerInfo
from vya_backupdb.engines.mysql import (
    AccountBlock,
    BinlogScanner,
    EventDefinition,
    IteratorReader,
    account_matches,
    binlog_dump_options,
    iter_lines,
    make_defaults_file,
    make_dump_command,
    make_restore_command,
    mask_sql_secrets,
    own_grant_lines,
    parse_account,
    parse_binlog_coordinates,
    parse_users_file,
    render_account_block,
    render_events_sql,
    render_users_header,
    select_blocks,
    version_number,
)
from vya_backupdb.errors import RestoreFailed, UsageError

pytestmark = pytest.mark.unit

PASSWORD = 'p@ss "w0rd" \\ #;x'
CNF = Path("/tmp/vya-test.cnf")


def _instance(**kwargs: object) -> InstanceConfig:
    base: dict[str, object] = {
        "id": "my01",
        "type": "mariadb",
        "host": "db.example",
        "port": 3307,
        "user": "backup",
    }
    base.update(kwargs)
    return InstanceConfig.model_validate(base)


def test_make_dump_command_defaults_file_first_and_no_password_in_argv() -> None:
    command = make_dump_command(
        "/usr/bin/mariadb-dump", CNF, _instance(), "shop", password=PASSWORD
    )
    argv = list(command.argv)
    assert argv[0] == "/usr/bin/mariadb-dump"
    assert argv[1] == f"--defaults-extra-file={CNF}"
    assert not any(PASSWORD in a or "password" in a.lower() for a in argv)
    assert PASSWORD not in command.display()
    for option in (
        "--single-transaction",
        "--routines",
        "--triggers",
        "--events",
        "--hex-blob",
        "--default-character-set=utf8mb4",
        "--tz-utc",
        "--quick",
    ):
        assert option in argv
    assert "--databases" not in argv
    assert "-B" not in argv
    assert argv[-2:] == ["--", "shop"]
    assert "--host=db.example" in argv
    assert "--port=3307" in argv
    assert "--protocol=TCP" in argv
    assert command.stdout_buffer == 1024 * 1024  # 1 MiB writes into the deep pipe


def test_make_dump_command_binlog_and_extra_options_come_before_the_database() -> None:
    command = make_dump_command(
        "mariadb-dump",
        CNF,
        _instance(dump_options=["--skip-comments"]),
        "-weird name",
        binlog_options=["--master-data=2", "--gtid"],
    )
    argv = list(command.argv)
    assert argv.index("--master-data=2") < argv.index("--")
    assert argv.index("--skip-comments") < argv.index("--")
    assert argv[-1] == "-weird name"


def test_make_restore_command_sets_binary_mode_and_explicit_charset() -> None:
    command = make_restore_command("mariadb", CNF, _instance(), "new db", password=PASSWORD)
    argv = list(command.argv)
    assert argv[1] == f"--defaults-extra-file={CNF}"
    assert "--binary-mode" in argv
    assert "--default-character-set=utf8mb4" in argv
    assert argv[-1] == "--database=new db"
    assert not any(PASSWORD in a for a in argv)


def test_make_connection_args_socket_instance_uses_socket_not_host() -> None:
    command = make_restore_command("mariadb", CNF, _instance(socket="/run/mysqld/mysqld.sock"), "d")
    assert "--socket=/run/mysqld/mysqld.sock" in command.argv
    assert not any(a.startswith("--host=") for a in command.argv)


def test_make_defaults_file_escapes_quotes_backslashes_and_comment_chars() -> None:
    content = make_defaults_file("backup", PASSWORD)
    assert content.splitlines()[0] == "[client]"
    assert 'password="p@ss \\"w0rd\\" \\\\ #;x"' in content
    assert make_defaults_file("u", None) == '[client]\nuser="u"\n'


@pytest.mark.parametrize(
    ("tool_version", "product", "expected"),
    [
        (
            "mariadb-dump  Ver 10.19 Distrib 10.11.19-MariaDB",
            "MariaDB",
            ["--master-data=2", "--gtid"],
        ),
        ("mariadb-dump  Ver 10.19 Distrib 10.11.19-MariaDB", "MySQL", ["--master-data=2"]),
        ("mysqldump  Ver 8.0.36 for Linux on x86_64", "MySQL", ["--source-data=2"]),
        ("mysqldump  Ver 8.0.20 for Linux on x86_64", "MySQL", ["--master-data=2"]),
    ],
)
def test_binlog_dump_options_depend_on_tool_and_server(
    tool_version: str, product: str, expected: list[str]
) -> None:
    assert binlog_dump_options(tool_version, product) == expected


def test_parse_binlog_coordinates_reads_position_and_trailing_gtid() -> None:
    head = "-- CHANGE MASTER TO MASTER_LOG_FILE='binlog.000002', MASTER_LOG_POS=1962;\n"
    tail = "-- SET GLOBAL gtid_slave_pos='0-1-12';\n/*!40103 SET TIME_ZONE=@OLD_TIME_ZONE */;"
    assert parse_binlog_coordinates(head, tail) == {
        "file": "binlog.000002",
        "position": 1962,
        "gtid": "0-1-12",
    }
    mysql = "-- CHANGE REPLICATION SOURCE TO SOURCE_LOG_FILE='b.000001', SOURCE_LOG_POS=4;"
    assert parse_binlog_coordinates(mysql) == {"file": "b.000001", "position": 4, "gtid": None}
    assert parse_binlog_coordinates("-- no coordinates here") is None


def test_binlog_scanner_passes_bytes_through_unchanged_and_finds_coordinates() -> None:
    payload = (
        b"-- CHANGE MASTER TO MASTER_LOG_FILE='x.000001', MASTER_LOG_POS=77;\n"
        + bytes(range(256)) * 2000
        + b"-- SET GLOBAL gtid_slave_pos='0-1-3';\n"
    )
    scanner = BinlogScanner(io.BytesIO(payload))
    out = b"".join(iter(lambda: scanner.read(4096), b""))
    assert out == payload
    assert scanner.coordinates() == {"file": "x.000001", "position": 77, "gtid": "0-1-3"}


def test_version_number_parses_mariadb_and_mysql_versions() -> None:
    assert version_number("10.11.19-MariaDB-0+deb12u1-log") == 101119
    assert version_number("8.0.36") == 80036
    assert version_number("garbage") == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alice", ("alice", None)),
        ("alice@localhost", ("alice", "localhost")),
        ("'alice'@'%'", ("alice", "%")),
        ("`o``k`@`10.0.0.%`", ("o`k", "10.0.0.%")),
        ("'it''s'@'h'", ("it's", "h")),
    ],
)
def test_parse_account_accepts_the_usual_spellings(
    text: str, expected: tuple[str, str | None]
) -> None:
    assert parse_account(text) == expected


def test_parse_account_garbage_raises_usage_error() -> None:
    with pytest.raises(UsageError):
        parse_account("a@b@c")


def _blocks() -> list[AccountBlock]:
    return [
        AccountBlock("r_base", None, ("CREATE ROLE IF NOT EXISTS `r_base`",)),
        AccountBlock(
            "r_app",
            None,
            ("CREATE ROLE IF NOT EXISTS `r_app`", "GRANT `r_base` TO `r_app`"),
            requires=("r_base",),
        ),
        AccountBlock("root", "localhost", ("ALTER USER `root`@`localhost` IDENTIFIED BY 'x'",)),
        AccountBlock("mariadb.sys", "localhost", ("CREATE USER IF NOT EXISTS `mariadb.sys`",)),
        AccountBlock(
            "alice",
            "localhost",
            (
                "CREATE USER IF NOT EXISTS `alice`@`localhost`",
                "GRANT `r_app` TO `alice`@`localhost`",
            ),
            requires=("r_app",),
        ),
        AccountBlock("alice", "%", ("CREATE USER IF NOT EXISTS `alice`@`%`",)),
        AccountBlock("bob", "%", ("CREATE USER IF NOT EXISTS `bob`@`%`; -- ;",)),
    ]


def _users_file(blocks: list[AccountBlock]) -> bytes:
    server = ServerInfo("MariaDB", "10.11.19", 101119)
    text = render_users_header(server, [b.name for b in blocks])
    text += "".join(render_account_block(b) for b in blocks) + "FLUSH PRIVILEGES;\n"
    return text.encode()


def test_users_file_render_then_parse_round_trips_blocks() -> None:
    data = _users_file(_blocks())
    parsed = list(parse_users_file(iter_lines(IteratorReader(iter([data[:7], data[7:]])), 5)))
    assert parsed == _blocks()


def test_users_file_header_lists_every_account() -> None:
    data = _users_file(_blocks()).decode()
    assert "--   'alice'@'localhost'" in data
    assert "--   r_app" in data


def test_parse_users_file_truncated_block_raises_restore_failed() -> None:
    data = _users_file(_blocks()).decode()
    truncated = data[: data.rindex("-- vya-end")]
    with pytest.raises(RestoreFailed, match="truncated"):
        list(parse_users_file(truncated.splitlines()))


def test_select_blocks_all_skips_builtins_and_keeps_roles_first() -> None:
    names = [b.name for b in select_blocks(_blocks(), "all", [])]
    assert names == ["r_base", "r_app", "'alice'@'localhost'", "'alice'@'%'", "'bob'@'%'"]


def test_select_blocks_named_user_brings_the_roles_it_needs() -> None:
    names = [b.name for b in select_blocks(_blocks(), ["alice@localhost"], [])]
    assert names == ["r_base", "r_app", "'alice'@'localhost'"]


def test_select_blocks_bare_name_selects_every_host_and_exclude_wins() -> None:
    assert [b.name for b in select_blocks(_blocks(), ["alice"], ["alice@%"])] == [
        "r_base",
        "r_app",
        "'alice'@'localhost'",
    ]
    assert [b.name for b in select_blocks(_blocks(), "all", ["bob", "r_app"])][-2:] == [
        "'alice'@'localhost'",
        "'alice'@'%'",
    ]


def test_select_blocks_named_builtin_is_applied_when_asked_for() -> None:
    assert [b.name for b in select_blocks(_blocks(), ["root"], [])] == ["'root'@'localhost'"]


def test_account_matches_distinguishes_hosts() -> None:
    block = AccountBlock("alice", "localhost", ())
    assert account_matches(block, "alice")
    assert account_matches(block, "'alice'@'localhost'")
    assert not account_matches(block, "alice@%")
    assert not account_matches(block, "bob")


def test_own_grant_lines_drops_grants_of_inherited_roles() -> None:
    grants = [
        "GRANT `r2` TO `r1`",
        "GRANT USAGE ON *.* TO `r1`",
        "GRANT SELECT ON `d1`.* TO `r1`",
        "GRANT USAGE ON *.* TO `r2`",
        "GRANT USAGE ON *.* TO `r1`@`localhost`",
    ]
    assert own_grant_lines(grants, "`r1`") == grants[:3]


def test_mask_sql_secrets_hides_hashes_and_auth_strings() -> None:
    text = "CREATE USER `a`@`h` IDENTIFIED BY PASSWORD '*D821809F' ; VIA ed25519 USING 'abc'"
    masked = mask_sql_secrets(text)
    assert "D821809F" not in masked
    assert "abc" not in masked
    assert masked.count("'****'") == 2


def test_iterator_reader_serves_requested_sizes() -> None:
    reader = IteratorReader(iter([b"abc", b"", b"defgh"]))
    assert reader.read(2) == b"ab"
    assert reader.read(4) == b"cdef"
    assert reader.read(10) == b"gh"
    assert reader.read(10) == b""


def test_render_account_block_builtin_statements_are_commented_out_but_parse_back() -> None:
    block = AccountBlock("root", "localhost", ("ALTER USER `root`@`localhost` IDENTIFIED BY 'x'",))
    text = render_account_block(block)
    statement_lines = [line for line in text.splitlines() if line and not line.startswith("-- ")]
    assert statement_lines == []
    assert list(parse_users_file(text.splitlines())) == [block]


def test_make_dump_command_without_events_skips_them() -> None:
    argv = list(make_dump_command("mariadb-dump", CNF, _instance(), "it's", events=False).argv)
    assert "--skip-events" in argv
    assert "--events" not in argv


def test_render_events_sql_wraps_each_event_in_its_modes_and_charset() -> None:
    event = EventDefinition(
        name="ev `1`",
        sql_mode="STRICT_TRANS_TABLES",
        time_zone="+05:30",
        create="CREATE DEFINER=`root`@`localhost` EVENT `ev ``1``` ON SCHEDULE EVERY 1 DAY"
        " DO SELECT 'é'",
        character_set_client="latin1",
        collation_connection="latin1_swedish_ci",
    )
    sql = render_events_sql([event])
    assert sql.startswith(b"\n--")
    assert b"DELIMITER ;;" in sql
    assert sql.endswith(b"DELIMITER ;\n")
    assert b"SET character_set_client = latin1 */ ;;" in sql
    assert b"SET time_zone = '+05:30' */ ;;" in sql
    assert b"DROP EVENT IF EXISTS `ev ``1``` */ ;;" in sql
    assert "SELECT 'é' ;;".encode("cp1252") in sql
    assert render_events_sql([]) == b""
