"""The physical replication slot that holds the target's WAL on the server until it is in S3, and its safety.

pg_receivewal streams without the slot (with --slot it would confirm each segment once fsynced *locally*, and the
server could recycle WAL that never reached S3 if the task died). The receiver's own SQL session (SlotKeeper)
advances the slot with pg_replication_slot_advance only after a segment is uploaded and locked, so the slot marks
where the *archive* ends: nothing is lost while the receiver restarts with an empty disk, but a receiver that stays
down (or cannot upload) makes the primary keep WAL until its disk fills. The same session holds an advisory lock
for the receiver's lifetime: one receiver per slot. `slot_problems` says when to alarm (pure); set
`max_slot_wal_keep_size` on the server so a forgotten slot is invalidated (a gap, which the receiver records)
rather than filling the disk. A slot is never created without a warning in the log.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chalicelib.adapters.postgres import Login, connect
from chalicelib.errors import DatabaseConnectionError
from chalicelib.observability import logger
from chalicelib.pitr.walnames import DEFAULT_SEGMENT_SIZE, format_lsn

if TYPE_CHECKING:
    import psycopg


@dataclass(frozen=True)
class ServerFacts:
    server_version_num: int
    segment_size: int
    in_recovery: bool

    @property
    def major(self) -> int:
        return self.server_version_num // 10000


@dataclass(frozen=True)
class SlotState:
    name: str
    active: bool  # a receiver holds it: streaming from it, or (wal-stream) holding its advisory lock
    active_pid: int | None
    wal_status: str | None  # reserved | extended | unreserved | lost (PostgreSQL 13+; None before)
    restart_lsn: str | None
    retained_bytes: int | None  # WAL the server keeps for this slot
    streaming: bool = False  # a walsender uses it (pg_replication_slots.active): not wal-stream, which advances it

    @property
    def invalidated(self) -> bool:
        """The server dropped the WAL this slot held (max_slot_wal_keep_size): it holds nothing any more."""
        return self.wal_status == "lost" or self.restart_lsn is None


def server_facts(login: Login) -> ServerFacts:
    with connect(login) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version_num')::int,"
            " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size' AND unit = 'B'),"
            " pg_is_in_recovery()"
        ).fetchone()
    assert row is not None
    return ServerFacts(int(row[0]), int(row[1] or DEFAULT_SEGMENT_SIZE), bool(row[2]))


_SLOT_QUERY = """
SELECT active, active_pid, {wal_status}, restart_lsn::text,
       pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END,
                       restart_lsn)::bigint,
       (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s AND objid = %s
        AND objsubid = 1 LIMIT 1)
FROM pg_replication_slots WHERE slot_name = %s AND slot_type = 'physical'
"""


def slot_state(login: Login, name: str, major: int) -> SlotState | None:
    """The slot as the server sees it; None when there is no such physical slot."""
    with connect(login) as conn:
        return _read_state(conn, name, major)


def _read_state(conn: psycopg.Connection[Any], name: str, major: int) -> SlotState | None:
    query = _SLOT_QUERY.format(wal_status="wal_status" if major >= 13 else "NULL::text")
    key = lock_key(name)
    row: Any = conn.execute(query, ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF, name)).fetchone()
    if row is None:
        return None
    streaming, holder = bool(row[0]), row[5]
    retained = None if row[4] is None else int(row[4])
    return SlotState(
        name, streaming or holder is not None, row[1] or holder, row[2], row[3], retained, streaming=streaming
    )


def lock_key(slot: str) -> int:
    """The advisory lock (a signed 64-bit key) wal-stream holds for `slot`: stable across processes. Pure."""
    return int.from_bytes(hashlib.sha256(f"lifeboat wal-stream {slot}".encode()).digest()[:8], "big", signed=True)


def create_slot(login: Login, name: str, target: str) -> None:
    """Create the physical slot, reserving WAL from now on; said loudly in the log (a slot whose receiver stays
    down fills the primary's disk)."""
    import psycopg  # heavy (~50 ms): only once a connection is made

    logger.warning(
        "creating physical replication slot: the server now keeps WAL until lifeboat wal-stream confirms it;"
        " if the receiver stays down, drop the slot or set max_slot_wal_keep_size",
        extra={"target": target, "slot": name, "host": login.host},
    )
    try:
        with connect(login) as conn:
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (name,))
    except psycopg.Error as exc:
        raise DatabaseConnectionError(
            f"cannot create replication slot {name!r} on {login.host} as {login.user}: {exc}".strip()
            + " (the login needs the REPLICATION attribute, and the server max_replication_slots > 0)"
        ) from None


def slot_problems(state: SlotState | None, max_retained_bytes: int) -> list[str]:
    """What an operator must hear about the slot (empty: healthy). Pure."""
    if state is None:
        return ["the replication slot does not exist: WAL is not held for the receiver (it is created on start)"]
    problems = []
    if state.wal_status not in (None, "reserved"):
        problems.append(
            f"slot {state.name} wal_status is {state.wal_status!r}, not 'reserved': the server"
            + (" removed WAL the receiver had not read (a gap)" if state.wal_status == "lost" else " keeps more WAL")
            + " than max_wal_size; restart the receiver or check max_slot_wal_keep_size"
        )
    if state.retained_bytes is not None and state.retained_bytes > max_retained_bytes:
        problems.append(
            f"slot {state.name} makes the server keep {state.retained_bytes // (1024 * 1024)} MiB of WAL (alarm above"
            f" {max_retained_bytes // (1024 * 1024)} MiB): is the receiver running?"
        )
    if not state.active:
        problems.append(f"slot {state.name} has no receiver: no wal-stream holds it (nor streams from it)")
    return problems


class SlotTaken(DatabaseConnectionError):
    """Another wal-stream holds the slot's advisory lock: this one must not start, or must stop."""


BACKWARDS = "minimum is"  # pg_replication_slot_advance to a position before the slot's: already past it
_KEEPALIVES = "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3"


class SlotKeeper:
    """wal-stream's own SQL session (the replication login, the target's database): holds the advisory lock that
    makes it the slot's one receiver, advances the slot after uploads, reads its state. Server-side TCP keepalives
    end the session (and free the lock) about a minute after its task vanished without closing the connection.
    A lost connection is opened again on the next call; losing the lock meanwhile is a DatabaseConnectionError."""

    def __init__(self, login: Login, slot: str, major: int, target: str) -> None:
        self.login, self.slot, self.major, self.target = login, slot, major, target
        self.conn: psycopg.Connection[Any] | None = None

    def acquire(self, wait_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        """Take the lock, retrying for `wait_seconds` (a killed receiver's session may linger until the server
        notices); DatabaseConnectionError naming the holder when another receiver keeps it."""
        deadline = clock() + wait_seconds
        while not self._lock():
            if clock() >= deadline:
                state = slot_state(self.login, self.slot, self.major)
                holder = f" (process {state.active_pid})" if state and state.active_pid else ""
                raise SlotTaken(
                    f"another lifeboat wal-stream holds replication slot {self.slot} on {self.login.host}{holder}:"
                    " stop it first (one receiver per target)"
                )
            time.sleep(1)

    def _lock(self) -> bool:
        import psycopg  # heavy (~50 ms): only once a connection is made

        conn = connect(self.login)
        try:
            conn.execute(_KEEPALIVES)
            row: Any = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(self.slot),)).fetchone()
        except psycopg.Error as exc:
            conn.close()
            raise DatabaseConnectionError(f"cannot take the wal-stream lock on {self.login.host}: {exc}") from None
        if not row[0]:
            conn.close()
            return False
        self.conn = conn
        return True

    def _session(self) -> psycopg.Connection[Any]:
        if (self.conn is None or self.conn.closed) and not self._lock():
            raise SlotTaken(
                f"the wal-stream session for slot {self.slot} was lost and another receiver holds it now:"
                " this receiver stops (one receiver per target)"
            )
        assert self.conn is not None
        return self.conn

    def state(self) -> SlotState | None:
        import psycopg  # heavy (~50 ms): only once a connection is made

        try:
            return _read_state(self._session(), self.slot, self.major)
        except psycopg.OperationalError as exc:
            raise self._broken(exc) from None

    def advance(self, lsn: int) -> bool:
        """Let the server recycle WAL before `lsn` (the end of the uploaded WAL). False when the slot cannot
        advance (gone or invalidated: state() says which); a position it is already past is fine."""
        import psycopg  # heavy (~50 ms): only once a connection is made

        try:
            self._session().execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot, format_lsn(lsn)))
        except psycopg.OperationalError as exc:
            raise self._broken(exc) from None
        except psycopg.Error as exc:
            if BACKWARDS in str(exc):
                return True
            logger.error("cannot advance the replication slot", extra={"target": self.target, "error": str(exc)})
            return False
        return True

    def _broken(self, exc: Exception) -> DatabaseConnectionError:
        """The session broke (server restart, network): opened again, and the lock taken again, on the next call."""
        self.close()
        return DatabaseConnectionError(f"the wal-stream session to {self.login.host} broke: {exc}".strip())

    def _query(self, sql: str, *params: object) -> Any:
        import psycopg  # heavy (~50 ms): only once a connection is made

        try:
            return self._session().execute(sql, params).fetchone()
        except psycopg.OperationalError as exc:
            raise self._broken(exc) from None

    def timeline(self) -> int | None:
        """The server's current timeline (None on a standby, which has no pg_current_wal_lsn)."""
        row = self._query(
            "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END"
        )
        return int(row[0][:8], 16) if row and row[0] else None

    def recreate(self) -> None:
        """Drop the slot (invalidated: it holds nothing) and create it again, reserving WAL from now on."""
        self._query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", self.slot
        )
        create_slot(self.login, self.slot, self.target)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
