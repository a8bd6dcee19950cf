"""Backup mode for app-consistent EBS snapshots: pg_backup_start before the snapshots, pg_backup_stop after,
in one session, and the backup label the stop call returns (needed to start a server from the snapshots)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from chalicelib.adapters.pgtools import scrub
from chalicelib.adapters.postgres import Login, connect
from chalicelib.errors import SnapshotError


@dataclass
class BackupLabel:
    """What pg_backup_stop returns: to be written as backup_label (and tablespace_map) before starting a
    server from the snapshot. Recovery must replay WAL up to `stop_lsn`, so WAL archiving is required."""

    label: str
    server_version_num: int = 0
    start_lsn: str = ""
    stop_lsn: str = ""
    labelfile: str = ""
    spcmapfile: str = ""
    function: str = ""

    def document(self, **extra: Any) -> dict[str, Any]:
        return {
            "label": self.label,
            "server_version_num": self.server_version_num,
            "function": self.function,
            "start_lsn": self.start_lsn,
            "stop_lsn": self.stop_lsn,
            "labelfile": self.labelfile,
            "spcmapfile": self.spcmapfile,
            **extra,
        }


def backup_mode_sql(server_version_num: int) -> tuple[str, str, str]:
    """(start, stop, name) statements of a non-exclusive backup for a server version."""
    if server_version_num >= 150000:
        return (
            "SELECT pg_backup_start(%s, fast => true)::text",
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(wait_for_archive => false)",
            "pg_backup_start",
        )
    return (
        "SELECT pg_start_backup(%s, true, false)::text",
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)",
        "pg_start_backup",
    )


def _backup_mode_error(exc: Exception, login: Login, step: str) -> SnapshotError:
    text = scrub(str(exc).strip(), login.secrets)
    first = text.splitlines()[0] if text else type(exc).__name__
    advice = ""
    if "permission denied" in text:
        advice = (
            f": grant it to {login.user} (PostgreSQL 15+: GRANT EXECUTE ON FUNCTION pg_backup_start(text,"
            " boolean), pg_backup_stop(boolean) TO ...; before 15: pg_start_backup/pg_stop_backup)"
        )
    elif "wal_level" in text or "WAL level" in text:
        advice = ": set wal_level to replica (or logical) and restart the server"
    elif "recovery" in text:
        advice = ": point the connection at the primary, not a standby"
    return SnapshotError(f"{step} failed on {login.host}:{login.port} ({first}){advice}")


@contextmanager
def backup_mode(login: Login, label: str) -> Iterator[BackupLabel]:
    """Hold PostgreSQL in non-exclusive backup mode for the block, in one session.

    On leaving the block normally, the stop call's labelfile and spcmapfile are filled in. If the block
    raises, the session is closed without a stop call, which ends the backup on the server's side.
    """
    import psycopg  # lazily: libpq is heavy, and only app-consistent EBS snapshots talk to PostgreSQL

    result = BackupLabel(label)
    conn = connect(login, autocommit=True)
    try:
        try:
            row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
            result.server_version_num = int(row[0]) if row else 0
            start, stop, result.function = backup_mode_sql(result.server_version_num)
            row = conn.execute(start, (label,)).fetchone()
            result.start_lsn = str(row[0]) if row else ""
        except psycopg.Error as exc:
            raise _backup_mode_error(exc, login, "starting backup mode") from None
        yield result
        try:
            row = conn.execute(stop).fetchone()
        except psycopg.Error as exc:
            raise _backup_mode_error(exc, login, "stopping backup mode") from None
        if row is None:
            raise SnapshotError(f"stopping backup mode on {login.host} returned nothing")
        result.stop_lsn, result.labelfile, result.spcmapfile = str(row[0]), str(row[1] or ""), str(row[2] or "")
    finally:
        conn.close()
