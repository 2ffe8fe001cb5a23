"""The throwaway PostgreSQL test server starts, serves two databases, and stops without a trace."""

import os

import pytest
from sqlalchemy import create_engine, text

try:
    from pgserver import PostgresServer, postgres_available
except ImportError:  # tests/ imported as a package
    from tests.pgserver import PostgresServer, postgres_available


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_postgres_server_two_databases_and_clean_stop():
    if not postgres_available():
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")

    server = PostgresServer()
    try:
        server.start()
        pid, tmpdir = server.pid, server.tmpdir
        assert pid is not None and _pid_exists(pid)
        assert tmpdir is not None and tmpdir.is_dir()

        for name in ("alpha", "beta-db"):
            url = server.create_database(name)
            engine = create_engine(url)
            try:
                with engine.begin() as conn:
                    conn.execute(text("CREATE TABLE t (id integer PRIMARY KEY, v text NOT NULL)"))
                    conn.execute(text("INSERT INTO t (id, v) VALUES (1, :v)"), {"v": name})
                with engine.connect() as conn:
                    assert conn.execute(text("SELECT current_database()")).scalar_one() == name
                    assert conn.execute(text("SELECT v FROM t WHERE id = 1")).scalar_one() == name
                    # unix socket only: no TCP listener
                    assert conn.execute(text("SHOW listen_addresses")).scalar_one() == ""
            finally:
                engine.dispose()

        # The databases are separate: each sees only its own row. This engine is deliberately not
        # disposed: stop() must also work with a client connection still open.
        with create_engine(server.url("alpha")).connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
    finally:
        server.stop()

    assert not _pid_exists(pid)
    assert not tmpdir.exists()
    server.stop()  # idempotent
