"""held_session against a real PostgreSQL: a held session the server ended while it sat idle (pg_terminate_backend
here; idle_session_timeout or RDS Proxy's idle timeout in the field, during a long pg_restore) is not handed out
again: the next maintenance step reconnects and works."""

from __future__ import annotations

import psycopg
import pytest

from chalicelib.adapters import session_liveness
from chalicelib.adapters.postgres import Login, connect, database_exists, held_session
from devstack.postgres import SUPERUSER, SUPERUSER_PASSWORD, PostgresServer


def login_to(pg: PostgresServer) -> Login:
    return Login("127.0.0.1", pg.port, "postgres", SUPERUSER, "disable", None, password=SUPERUSER_PASSWORD)


def terminate(pg: PostgresServer, pid: int) -> None:
    with psycopg.connect(pg.conninfo(), autocommit=True) as other:
        assert other.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)


def test_a_held_session_ended_by_the_server_is_replaced(pg: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_liveness, "CHECK_AFTER_SECONDS", 0.0)  # as if pg_restore had run for hours
    login = login_to(pg)
    with held_session(login):
        assert database_exists(login, "postgres")
        first = connect(login)
        terminate(pg, first.info.backend_pid)
        with connect(login) as conn:  # the step after the restore: before, "terminating connection" here
            assert conn.execute("SELECT current_database()").fetchone() == ("postgres",)
        assert conn is not first and conn.info.backend_pid != first.info.backend_pid
        assert connect(login) is conn  # the new session is held in turn


def test_a_session_in_use_moments_ago_is_handed_out_without_a_round_trip(
    pg: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within session_liveness.CHECK_AFTER_SECONDS the held session is handed out as it is, unchecked: proven by a
    session ended just before, which comes back as it is (the check would have replaced it)."""
    monkeypatch.setattr(session_liveness, "CHECK_AFTER_SECONDS", 3600.0)
    login = login_to(pg)
    with held_session(login):
        first = connect(login)
        terminate(pg, first.info.backend_pid)
        assert connect(login) is first


def test_sessions_ask_for_tcp_keepalives(pg: PostgresServer) -> None:
    login = login_to(pg)
    with connect(login) as conn:
        params = conn.info.get_parameters()
    assert params.get("keepalives") == "1" and params.get("keepalives_idle") == "30"
