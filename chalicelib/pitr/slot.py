"""The physical replication slot the WAL receiver streams from, and its safety.

A slot makes the primary keep every WAL segment the receiver has not confirmed: nothing is lost while the receiver
restarts, but a receiver that stays down makes the primary keep WAL until its disk fills. `slot_problems` says
when to alarm (pure); set `max_slot_wal_keep_size` on the server so a forgotten slot is invalidated (a gap, which
the receiver records) rather than filling the disk. A slot is never created without a warning in the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chalicelib.adapters.postgres import Login, connect
from chalicelib.errors import DatabaseConnectionError
from chalicelib.observability import logger
from chalicelib.pitr.walnames import DEFAULT_SEGMENT_SIZE


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
    active: bool
    active_pid: int | None
    wal_status: str | None  # reserved | extended | unreserved | lost (PostgreSQL 13+; None before)
    restart_lsn: str | None
    retained_bytes: int | None  # WAL the server keeps for this slot


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
                       restart_lsn)::bigint
FROM pg_replication_slots WHERE slot_name = %s AND slot_type = 'physical'
"""


def slot_state(login: Login, name: str, major: int) -> SlotState | None:
    """The slot as the server sees it; None when there is no such physical slot."""
    query = _SLOT_QUERY.format(wal_status="wal_status" if major >= 13 else "NULL::text")
    with connect(login) as conn:
        row: Any = conn.execute(query, (name,)).fetchone()
    if row is None:
        return None
    return SlotState(name, bool(row[0]), row[1], row[2], row[3], None if row[4] is None else int(row[4]))


def create_slot(login: Login, name: str, target: str) -> None:
    """Create the physical slot, reserving WAL from now on; said loudly in the log (a slot whose receiver stays
    down fills the primary's disk)."""
    import psycopg

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
        problems.append(f"slot {state.name} has no receiver streaming from it")
    return problems
