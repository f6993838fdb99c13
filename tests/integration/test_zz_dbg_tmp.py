import os, subprocess, contextlib
import pytest
from test_mysql_engine import _execute_all, _tricky_statements, TRICKY_DB
pytestmark = [pytest.mark.integration]
def test_dbg(mariadb_server):
    s = mariadb_server
    from harness.mariadb import quote_identifier
    s.drop_db(TRICKY_DB)
    s.sql(f"CREATE DATABASE {quote_identifier(TRICKY_DB)} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci COMMENT 'tricky ü'")
    stm = _tricky_statements(TRICKY_DB)
    for i in range(len(stm)):
        _execute_all(s, TRICKY_DB, stm[i:i+1])
        r = subprocess.run(["mariadb-dump", "--no-defaults", "-S", s.socket, "-uroot", f"-p{s.password}", "--", TRICKY_DB], capture_output=True)
        if r.returncode:
            print(i, stm[i][0][:100], r.stderr[-300:]); break
    print(s.sql("SHOW DATABASES"))
