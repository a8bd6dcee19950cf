"""Whether a PostgreSQL session kept open for reuse (postgres.held_session) is still alive, and the TCP keepalives
every session asks for.

A held session sits idle while pg_restore runs, possibly for hours; the server may end it meanwhile
(idle_session_timeout, RDS Proxy's idle timeout, pg_terminate_backend), and psycopg only learns that from a failed
statement: the step after the restore (the swap, the comment) would fail and the verified copy be dropped.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

# A held session idle longer than this is checked (SELECT 1) before it is handed out again; below it, the check
# would cost a round trip per maintenance step for nothing.
CHECK_AFTER_SECONDS = 5.0
# libpq TCP keepalives: an idle session is not dropped silently by NAT or a proxy, and a dead peer is noticed within
# about a minute (30 s idle, then 3 probes 10 s apart) instead of never.
TCP_KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def still_usable(conn: psycopg.Connection[Any], handed_out: float) -> bool:
    """Whether a held session can be handed out again (`handed_out`: time.monotonic() when it last was): not closed
    or broken and, once idle a while, still answering. A session the server ended is closed here."""
    import psycopg

    if conn.closed or conn.broken:
        return False
    if time.monotonic() - handed_out < CHECK_AFTER_SECONDS:
        return True
    try:
        conn.execute("SELECT 1")
    except psycopg.Error:  # OperationalError: the server ended the session (terminated, timed out, dropped)
        conn.close()
        return False
    return True
