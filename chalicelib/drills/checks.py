"""The checks a drill runs on a restored copy: the manifest's row counts (from the restore's own verification), that
PostgreSQL accepts connections and has the expected databases (snapshots), and the configured SQL assertions.

Each assertion runs in its own read-only transaction under a statement timeout, so a check can neither change the
copy nor hang the drill, and one failing check does not hide the others' results.
"""

from __future__ import annotations

import time
from typing import Any

from chalicelib.adapters.postgres import Login, connect, connection_error
from chalicelib.drills.model import CheckResult
from chalicelib.drills.settings import DrillCheck
from chalicelib.errors import DatabaseConnectionError

ROW_COUNTS = "row counts match the manifest"
ACCEPTS_CONNECTIONS = "accepts connections"


def row_count_check(verification: dict[str, Any]) -> CheckResult:
    """The restore's own comparison with the manifest (chalicelib.logical.restore.verify_counts)."""
    match = verification.get("match")
    if match is True:
        detail = f"{verification.get('tables_checked', 0)} tables, {verification.get('rows_checked', 0)} rows"
    else:
        detail = str(verification.get("reason") or verification.get("mismatches") or "no comparison")
    return CheckResult(name=ROW_COUNTS, passed=match is True, detail=detail)


def judge(rows: list[tuple[Any, ...]]) -> tuple[bool, str]:
    """A check passes when it returned exactly one row of one column, and that value is true."""
    if len(rows) != 1 or len(rows[0]) != 1:
        shape = f"{len(rows)} rows" if len(rows) != 1 else f"one row of {len(rows[0])} columns"
        return False, f"returned {shape}; a check must return one row with one boolean column"
    value = rows[0][0]
    if value is True:
        return True, "returned true"
    return False, f"returned {value!r}, not true"


def run_checks(login: Login, checks: list[DrillCheck], timeout_seconds: int) -> list[CheckResult]:
    """Run every check on the database `login` names. Raises DatabaseConnectionError when it cannot connect."""
    import psycopg

    results = []
    with connect(login) as conn:
        conn.read_only = True  # every transaction below: BEGIN READ ONLY
        for check in checks:
            t0 = time.monotonic()
            try:
                with conn.transaction():
                    conn.execute(f"SET LOCAL statement_timeout = {int(timeout_seconds) * 1000}")
                    # binary results: the extended protocol, one statement only (the simple protocol would run
                    # "COMMIT; <a write>" past the read-only transaction)
                    rows = conn.execute(check.sql, binary=True).fetchall()
                passed, detail = judge(rows)
            except psycopg.Error as exc:
                passed, detail = False, f"failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
            results.append(CheckResult(name=check.name, passed=passed, detail=detail, seconds=time.monotonic() - t0))
    return results


def probe_databases(login: Login, databases: list[str]) -> list[CheckResult]:
    """A restored instance accepts connections and has every expected database."""
    import psycopg

    t0 = time.monotonic()
    try:
        with connect(login) as conn:
            found = {
                str(r[0]) for r in conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (databases,))
            }
    except DatabaseConnectionError as exc:
        return [CheckResult(name=ACCEPTS_CONNECTIONS, passed=False, detail=str(exc), seconds=time.monotonic() - t0)]
    except psycopg.Error as exc:
        error = connection_error(exc, login)
        return [CheckResult(name=ACCEPTS_CONNECTIONS, passed=False, detail=str(error), seconds=time.monotonic() - t0)]
    results = [CheckResult(name=ACCEPTS_CONNECTIONS, passed=True, detail=f"{login.host}:{login.port}")]
    for name in databases:
        ok = name in found
        results.append(CheckResult(name=f"database {name} exists", passed=ok, detail="" if ok else "not found"))
    return results
