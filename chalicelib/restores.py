"""Logical restores: a complete backup streamed from the store into pg_restore, verified twice.

Safety rules: a restore goes into a database that does not exist yet (ConflictError otherwise) and
that this run creates; the object's size is checked before and its SHA-256 while streaming; if
anything fails, including a checksum mismatch found at the end, the new database is dropped, so a
failed restore leaves nothing behind. After success the restored row counts are compared with the
counts recorded at backup time.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chalicelib.catalog import BackupId, Catalog, Manifest
from chalicelib.database import Login, connect, count_rows
from chalicelib.errors import ConflictError, IntegrityError, LifeboatError, PgToolError, RestoreError
from chalicelib.observability import logger, record
from chalicelib.pgtools import ChildProcess, Toolbox, minimal_env
from chalicelib.storage import BackupStore

CHUNK = 1024 * 1024
MAX_IDENTIFIER = 63


@dataclass(frozen=True)
class RestoreOptions:
    schemas: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    no_owner: bool = False
    no_acl: bool = False


@dataclass
class RestoreResult:
    backup_id: str
    database: str
    bytes_restored: int
    seconds: float
    pg_restore_version: int
    verification: dict[str, Any] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return bool(self.verification.get("match"))


def validate_database_name(name: str) -> str:
    if not name or len(name.encode()) > MAX_IDENTIFIER or "\x00" in name:
        raise LifeboatError(f"database name {name!r} must be 1-63 bytes")
    return name


def pg_restore_args(database: str, opts: RestoreOptions, single_transaction: bool = True) -> list[str]:
    args = [f"--dbname={database}", "--exit-on-error", "--no-password"]
    if single_transaction:
        args.append("--single-transaction")
    if opts.no_owner:
        args.append("--no-owner")
    if opts.no_acl:
        args.append("--no-acl")
    args.extend(f"--schema={s}" for s in opts.schemas)
    args.extend(f"--table={t}" for t in opts.tables)
    return args


def _create_database(login: Login, name: str) -> None:
    from psycopg import sql

    with connect(login) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            raise ConflictError(f"database {name!r} already exists on {login.host}: restore into a new name"
                                " (replacing a database needs clean=true and confirm=<name>)")
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))


def _drop_database(login: Login, name: str) -> None:
    from psycopg import sql

    with connect(login) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _server_major(login: Login) -> int:
    with connect(login) as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    return int(row[0]) // 10000 if row else 0


def verify_counts(expected: dict[str, int] | None, actual: dict[str, int], opts: RestoreOptions) -> dict[str, Any]:
    """Compare restored row counts with the manifest's; a selective restore compares what it restored."""
    if expected is None:
        return {"match": None, "reason": "the backup recorded no row counts"}
    selective = bool(opts.schemas or opts.tables)
    wanted = {t: n for t, n in expected.items() if not selective or t in actual}
    mismatched = {t: {"expected": n, "restored": actual.get(t)} for t, n in wanted.items() if actual.get(t) != n}
    return {"match": not mismatched and bool(wanted or not expected), "tables_checked": len(wanted),
            "rows_checked": sum(wanted.values()), "mismatches": mismatched}


def restore_logical(
    store: BackupStore,
    catalog: Catalog,
    toolbox: Toolbox,
    backup_id: str,
    login: Login,
    database: str,
    opts: RestoreOptions | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> RestoreResult:
    """Restore a logical backup into a new database `database` on the server `login` points at."""
    opts = opts or RestoreOptions()
    validate_database_name(database)
    manifest: Manifest = catalog.manifest(BackupId.parse(backup_id))
    dump = manifest.object("dump")
    head = store.head(dump.key)
    if head is None or head.size != dump.size:
        raise IntegrityError(f"{dump.key} is {head.size if head else 'missing'} bytes but the manifest says"
                             f" {dump.size}: the object was changed or truncated; refusing to restore it")
    server_major = _server_major(login)
    pg_restore = toolbox.pick("pg_restore", max(server_major, manifest.pg_dump_version),
                              purpose=f"restoring an archive written by pg_dump {manifest.pg_dump_version}"
                                      f" into PostgreSQL {server_major}")
    t0 = time.monotonic()
    _create_database(login, database)
    try:
        restored = _stream_into_pg_restore(store, dump.key, dump.sha256, pg_restore, login, database, opts,
                                           on_progress)
        with connect(login.with_database(database)) as conn:
            actual = count_rows(conn)
        verification = verify_counts(manifest.row_counts, actual, opts)
        if verification["match"] is False:
            raise IntegrityError(f"restored row counts differ from the backup's: {verification['mismatches']}")
    except BaseException:
        try:
            _drop_database(login, database)
        except Exception as exc:
            logger.warning("could not drop the partly restored database", extra={"database": database,
                                                                                  "error": str(exc)})
        raise
    seconds = time.monotonic() - t0
    record("RestoreSucceeded", 1, "Count", manifest.target)
    record("RestoreBytes", restored, "Bytes", manifest.target)
    return RestoreResult(backup_id, database, restored, seconds, pg_restore.major, verification)


def _stream_into_pg_restore(store: BackupStore, key: str, sha256: str, tool: Any, login: Login, database: str,
                            opts: RestoreOptions, on_progress: Callable[[int], None] | None) -> int:
    body, _size = store.open_stream(key)
    sha = hashlib.sha256()
    total = 0
    child = ChildProcess(tool, pg_restore_args(database, opts), minimal_env(login.with_database(database).env()),
                         login.secrets, login.context, stdin=subprocess.PIPE, capture_stdout=False)
    with child, body:
        stdin = child.stdin_pipe
        try:
            while chunk := body.read(CHUNK):
                sha.update(chunk)
                stdin.write(chunk)
                total += len(chunk)
                if on_progress:
                    on_progress(total)
        except BrokenPipeError:
            pass  # pg_restore stopped reading: its exit status and stderr say why
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()
        try:
            child.check()
        except PgToolError as exc:
            # Finish hashing: a corrupted object is the more useful diagnosis than pg_restore's complaint.
            while chunk := body.read(CHUNK):
                sha.update(chunk)
            if sha.hexdigest() != sha256:
                raise IntegrityError(f"{key} does not match its manifest's SHA-256: the object was tampered"
                                     " with or corrupted; nothing was restored") from None
            raise RestoreError(str(exc)) from None
    if sha.hexdigest() != sha256:
        raise IntegrityError(f"{key} has SHA-256 {sha.hexdigest()[:16]}... but the manifest says {sha256[:16]}...:"
                             " the object was tampered with or corrupted; the restore was rolled back")
    return total
