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
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalicelib.adapters.pgtools import ChildProcess, Deadline, Toolbox, conninfo_dbname, minimal_env, watchdog
from chalicelib.adapters.postgres import Login, connect, count_rows, database_exists, server_version
from chalicelib.adapters.s3 import BackupStore
from chalicelib.errors import (
    BadRequestError,
    ConflictError,
    DeadlineError,
    IntegrityError,
    PgToolError,
    RestoreError,
)
from chalicelib.logical.catalog import BackupId, Catalog, Manifest, ManifestObject
from chalicelib.observability import logger, record

CHUNK = 1024 * 1024
MAX_IDENTIFIER = 63


@dataclass(frozen=True)
class RestoreOptions:
    schemas: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    no_owner: bool = False
    no_acl: bool = False
    jobs: int = 1
    replace: bool = False  # swap the verified copy in place of an existing database (kept, renamed)


@dataclass
class RestoreResult:
    backup_id: str
    database: str
    bytes_restored: int
    seconds: float
    pg_restore_version: int
    verification: dict[str, Any] = field(default_factory=dict)
    replaced_database_kept_as: str | None = None
    recovered: bool = False

    @property
    def verified(self) -> bool:
        return bool(self.verification.get("match"))


def validate_database_name(name: str) -> str:
    if not name or len(name.encode()) > MAX_IDENTIFIER or any(ord(c) < 32 for c in name):
        raise BadRequestError(f"database name {name!r} must be 1-63 bytes without control characters")
    return name





def pg_restore_args(database: str, opts: RestoreOptions, single_transaction: bool = True) -> list[str]:
    args = [f"--dbname={conninfo_dbname(database)}", "--exit-on-error", "--no-password"]
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

    if database_exists(login, name):
        raise ConflictError(f"database {name!r} already exists on {login.host}: restore into a new name"
                            " (replacing a database needs clean=true and confirm=<name>)")
    with connect(login) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))


def _drop_database(login: Login, name: str) -> None:
    from psycopg import sql

    with connect(login) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def verify_counts(expected: dict[str, int] | None, actual: dict[str, int], opts: RestoreOptions) -> dict[str, Any]:
    """Compare restored row counts with the manifest's; a selective restore compares what it restored."""
    if expected is None:
        return {"match": None, "reason": "the backup recorded no row counts"}
    selective = bool(opts.schemas or opts.tables)
    wanted = {t: n for t, n in expected.items() if not selective or t in actual}
    mismatched = {t: {"expected": n, "restored": actual.get(t)} for t, n in wanted.items() if actual.get(t) != n}
    return {"match": not mismatched and bool(wanted or not expected), "tables_checked": len(wanted),
            "rows_checked": sum(wanted.values()), "mismatches": mismatched}


def _marker(state: str, restore_id: str, backup_id: str) -> str:
    return f"pg-lifeboat {state} {restore_id} from {backup_id}"


def _database_comment(login: Login, name: str) -> str | None:
    """None when the database does not exist, else its comment ('' without one)."""
    with connect(login) as conn:
        row = conn.execute("SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database"
                           " WHERE datname = %s", (name,)).fetchone()
    return None if row is None else str(row[0])


def _comment(login: Login, name: str, text: str) -> None:
    from psycopg import sql

    with connect(login) as conn:
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(text)))


def _swap(login: Login, database: str, work: str, stamp: str) -> str:
    """Put the verified copy in place of `database`; the old one is kept under a new name, not dropped."""
    import psycopg
    from psycopg import sql

    kept = f"{database[:40]}_replaced_{stamp}"[:MAX_IDENTIFIER]
    with connect(login) as conn:
        try:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(database),
                                                                         sql.Identifier(kept)))
        except psycopg.Error as exc:
            raise RestoreError(f"cannot set database {database!r} aside ({str(exc).strip()}): the restoring user"
                               f" {login.user} must own it; it is unchanged") from None
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(work), sql.Identifier(database)))
    return kept


def _create_schemas(login: Login, database: str, schemas: tuple[str, ...]) -> None:
    """pg_restore --schema restores the schema's objects but not the schema itself: create it first."""
    from psycopg import sql

    plain = [s for s in schemas if not any(c in s for c in "*?\"") and s != "public"]
    if plain:
        with connect(login.with_database(database)) as conn:
            for schema in plain:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))


def restore_logical(
    store: BackupStore,
    catalog: Catalog,
    toolbox: Toolbox,
    backup_id: str,
    login: Login,
    database: str,
    opts: RestoreOptions | None = None,
    on_progress: Callable[[int], None] | None = None,
    restore_id: str | None = None,
    workdir: Path | None = None,
    deadline: Deadline | None = None,
) -> RestoreResult:
    """Restore a logical backup into `database` on the server `login` points at.

    Without `replace` the database must not exist. With `replace` the backup is restored into a new
    database, verified, and then swapped in; the previous database is renamed, never dropped. A rerun
    of the same `restore_id` (a worker that died after pg_restore finished) recognises its own work by
    the database comment and verifies it again instead of restoring twice.
    """
    opts = opts or RestoreOptions()
    validate_database_name(database)
    restore_id = restore_id or f"cli-{secrets.token_hex(6)}"
    manifest: Manifest = catalog.manifest(BackupId.parse(backup_id))
    # The objects to restore from: one archive, or the files of a directory-format dump.
    parts = manifest.files() if manifest.format == "directory" else [manifest.object("dump")]
    t0 = time.monotonic()
    existing = _database_comment(login, database)
    if existing is not None and existing == _marker("restored", restore_id, backup_id):
        return _finish(login, database, manifest, opts, backup_id, 0, t0, 0, recovered=True)
    if existing is not None and not opts.replace:
        raise ConflictError(f"database {database!r} already exists on {login.host}: restore into a new name"
                            " (replacing a database needs clean=true and confirm=<name>)")
    work = f"{database[:40]}_lifeboat_{restore_id[-8:]}" if existing is not None else database
    leftover = _database_comment(login, work) if work != database else None
    if leftover is not None:
        if not leftover.startswith(f"pg-lifeboat restoring {restore_id} "):
            raise ConflictError(f"database {work!r} exists and is not this restore's: remove it or retry later")
        _drop_database(login, work)  # our own interrupted attempt
    for part in parts:
        head = store.head(part.key)
        if head is None or head.size != part.size:
            raise IntegrityError(f"{part.key} is {head.size if head else 'missing'} bytes but the manifest says"
                                 f" {part.size}: the object was changed or truncated; refusing to restore it")
    server_major = server_version(login)[0] // 10000
    pg_restore = toolbox.pick("pg_restore", max(server_major, manifest.pg_dump_version),
                              purpose=f"restoring an archive written by pg_dump {manifest.pg_dump_version}"
                                      f" into PostgreSQL {server_major}")
    _create_database(login, work)
    _comment(login, work, _marker("restoring", restore_id, backup_id))
    kept: str | None = None
    try:
        _create_schemas(login, work, opts.schemas)
        if opts.jobs > 1 or manifest.format == "directory":
            restored = _parallel_restore(store, parts, manifest.format, pg_restore, login, work, opts, on_progress,
                                         workdir, deadline)
        else:
            restored = _stream_into_pg_restore(store, parts[0].key, parts[0].sha256, pg_restore, login, work, opts,
                                               on_progress, deadline)
        result = _finish(login, work, manifest, opts, backup_id, restored, t0, pg_restore.major)
        if work != database:
            kept = _swap(login, database, work, time.strftime("%Y%m%d%H%M%S"))
    except BaseException as failure:
        record("RestoreFailed", 1, "Count", manifest.target)
        failure.lifeboat_recorded = True  # type: ignore[attr-defined]  # run_restore_job must not count it twice
        try:
            _drop_database(login, work)
        except Exception as exc:
            logger.warning("could not drop the partly restored database", extra={"database": work,
                                                                                  "error": str(exc)})
        raise
    _comment(login, database, _marker("restored", restore_id, backup_id))
    result.database = database
    result.replaced_database_kept_as = kept
    record("RestoreSucceeded", 1, "Count", manifest.target)
    record("RestoreBytes", restored, "Bytes", manifest.target)
    return result


def _finish(login: Login, database: str, manifest: Manifest, opts: RestoreOptions, backup_id: str, restored: int,
            t0: float, pg_restore_major: int, recovered: bool = False) -> RestoreResult:
    with connect(login.with_database(database)) as conn:
        actual = count_rows(conn)
    verification = verify_counts(manifest.row_counts, actual, opts)
    if verification["match"] is False:
        raise IntegrityError(f"restored row counts differ from the backup's: {verification['mismatches']}")
    return RestoreResult(backup_id, database, restored, time.monotonic() - t0, pg_restore_major, verification,
                         recovered=recovered)


def _deadline_error(deadline: Deadline | None) -> DeadlineError:
    margin = deadline.margin_seconds if deadline else 0
    return DeadlineError(f"stopped {margin:.0f} s before the time limit with the restore unfinished; the new"
                         " database was dropped: restore large archives on the long-running worker")


def _parallel_restore(store: BackupStore, parts: list[ManifestObject], fmt: str, tool: Any, login: Login,
                      database: str, opts: RestoreOptions, on_progress: Callable[[int], None] | None,
                      workdir: Path | None, deadline: Deadline | None = None) -> int:
    """pg_restore -j needs a seekable archive (or a directory): download to ephemeral storage, verify every
    object's SHA-256, restore, delete."""
    total = 0
    with tempfile.TemporaryDirectory(dir=workdir, prefix="lifeboat-restore-") as tmp:
        need, free = sum(p.size for p in parts), shutil.disk_usage(tmp).free
        if need > free:
            raise RestoreError(f"the archive needs {need} bytes of ephemeral storage but {free} are free:"
                               " give the function more /tmp, restore with jobs=1 (custom format streams),"
                               " or restore on the long-running worker")
        root = Path(tmp) / "dump"
        root.mkdir()
        for part in parts:
            path = root / part.key.rsplit("/", 1)[-1] if fmt == "directory" else Path(tmp) / "archive.dump"
            body, _ = store.open_stream(part.key)
            sha = hashlib.sha256()
            with body, path.open("wb") as f:
                while chunk := body.read(CHUNK):
                    if deadline and deadline.seconds_left() <= 0:
                        raise _deadline_error(deadline)
                    sha.update(chunk)
                    f.write(chunk)
                    total += len(chunk)
                    if on_progress:
                        on_progress(total)
            if sha.hexdigest() != part.sha256:
                raise IntegrityError(f"{part.key} does not match its manifest's SHA-256: the object was tampered"
                                     " with or corrupted; nothing was restored")
        source = root if fmt == "directory" else Path(tmp) / "archive.dump"
        jobs = max(opts.jobs, 1)
        args = [*pg_restore_args(database, opts, single_transaction=jobs == 1), f"--jobs={jobs}", str(source)]
        child = ChildProcess(tool, args, minimal_env(login.with_database(database).env()), login.secrets,
                             login.context, capture_stdout=False)
        with child, watchdog(child, deadline) as fired:
            try:
                child.check()
            except PgToolError as exc:
                if fired.is_set():
                    raise _deadline_error(deadline) from None
                raise RestoreError(str(exc)) from None
    return total


def _stream_into_pg_restore(store: BackupStore, key: str, sha256: str, tool: Any, login: Login, database: str,
                            opts: RestoreOptions, on_progress: Callable[[int], None] | None,
                            deadline: Deadline | None = None) -> int:
    body, _size = store.open_stream(key)
    sha = hashlib.sha256()
    total = 0
    child = ChildProcess(tool, pg_restore_args(database, opts), minimal_env(login.with_database(database).env()),
                         login.secrets, login.context, stdin=subprocess.PIPE, capture_stdout=False)
    with child, body, watchdog(child, deadline) as fired:
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
            if fired.is_set():
                raise _deadline_error(deadline) from None
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
