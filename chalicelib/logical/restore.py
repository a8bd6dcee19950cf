"""Logical restores: a complete backup streamed from the store into pg_restore, verified twice.

Safety rules: a restore goes into a database that does not exist yet (ConflictError otherwise) and
that this run creates; everything that can be refused is refused before it is created (a manifest whose signature
does not verify, an unsigned one when signing is on (chalicelib.logical.signing), a missing or
resized object, an archive newer than the server, a selection that names nothing); the object's
SHA-256 is checked while streaming, to the last byte even when pg_restore stopped reading early; every
object is read by the S3 version its manifest recorded (the locked one: a later overwrite is not what is restored;
a manifest without versions, from before they were recorded or of an unversioned bucket, reads the current one); if
anything fails, including a checksum mismatch found at the end, the new database is dropped, so a
failed restore leaves nothing behind. After success the restored row counts are compared with the
counts recorded at backup time.

How: one job streams into pg_restore; parallel jobs (pg_restore -j reads only files) download first by concurrent
ranged GETs, part by part verified (chalicelib.logical.download), when restore_strategy says they pay. Every step
outside the restored database shares one maintenance session (postgres.held_session). The fixed costs around
pg_restore are kept to as few round trips as each step needs (chalicelib.logical.restore_steps: measured on a small
restore against moto and a local PostgreSQL; chalicelib.logical.restored_counts), and
tests/integration/test_restore_round_trips.py holds them there.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from chalicelib.adapters.pgtools import (
    ChildProcess,
    Deadline,
    PgTool,
    Toolbox,
    conninfo_dbname,
    minimal_env,
    watchdog,
)
from chalicelib.adapters.postgres import Login, connect, held_session
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
from chalicelib.logical.databases import (
    MAX_IDENTIFIER,
    SwapError,
    create_schemas,
    database_comment,
    drop_database,
    maintenance_login,
    marker,
    set_comment,
    swap,
)
from chalicelib.logical.digests import PartVerifier
from chalicelib.logical.download import download_objects, restore_strategy
from chalicelib.logical.restore_steps import (
    check_objects,
    create_database,
    manifest_and_comment,
    opened_checked,
    server_major_of,
)
from chalicelib.logical.restored_counts import count_restored_rows, verify_counts
from chalicelib.logical.roles import apply_globals
from chalicelib.logical.selection import Selection
from chalicelib.logical.toc import resolve_selection
from chalicelib.observability import logger, record

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class RestoreOptions:
    schemas: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    no_owner: bool = False
    no_acl: bool = False
    jobs: int = 1
    replace: bool = False  # swap the verified copy in place of an existing database (kept, renamed)
    globals: bool = False  # create the backup's roles that the server lacks, before the restore

    @property
    def selection(self) -> Selection:
        return Selection.of(self.schemas, self.tables)


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
    roles: dict[str, list[str]] | None = None  # with globals: the roles created and the statements skipped

    @property
    def verified(self) -> bool:
        return bool(self.verification.get("match"))


def validate_database_name(name: str) -> str:
    if not name or len(name.encode()) > MAX_IDENTIFIER or any(ord(c) < 32 for c in name):
        raise BadRequestError(f"database name {name!r} must be 1-63 bytes without control characters")
    return name


def pg_restore_args(
    database: str, opts: RestoreOptions, single_transaction: bool = True, list_file: Path | None = None
) -> list[str]:
    args = [f"--dbname={conninfo_dbname(database)}", "--exit-on-error", "--no-password"]
    if single_transaction:
        args.append("--single-transaction")
    if opts.no_owner:
        args.append("--no-owner")
    if opts.no_acl:
        args.append("--no-acl")
    if list_file is not None:  # a selective restore: the entries chosen by selection.restore_list
        args.append(f"--use-list={list_file}")
    return args


def _check_compatible(manifest: Manifest, server_major: int, selection: Selection) -> None:
    """Refusals that need no database: a downgrade, a table the backup does not have."""
    if manifest.pg_dump_version > server_major:
        raise BadRequestError(
            f"{manifest.backup_id} was written by pg_dump {manifest.pg_dump_version} (PostgreSQL"
            f" {manifest.server_version}); PostgreSQL {server_major} cannot load it: restore into"
            f" PostgreSQL {manifest.pg_dump_version} or newer"
        )
    if selection and manifest.row_counts is not None:
        unknown = selection.unknown_tables(manifest.row_counts)
        if unknown:
            raise BadRequestError(
                f"{manifest.backup_id} has no table {', '.join(unknown)} (names are exact and"
                " case-sensitive: table or schema.table)"
            )


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
    # long because it is the order of a restore, refusals first: each step is a call, and the order is the point.
    opts = opts or RestoreOptions()
    validate_database_name(database)
    selection = opts.selection
    if opts.replace and selection:
        raise BadRequestError(
            "replacing a database restores all of it: a selection (schemas, tables) goes into a new database instead"
        )
    restore_id = restore_id or f"cli-{secrets.token_hex(6)}"
    # One maintenance session for every step outside the restored database (exists, create, comment, drop, swap):
    # `login`, moved off the databases this run renames or drops, and held open until the end.
    login = maintenance_login(login, database, _side_database(database, restore_id))
    with held_session(login), contextlib.ExitStack() as held_open:
        bid = BackupId.parse(backup_id)
        # A forged or unsigned manifest is refused before anything is created.
        manifest, existing = manifest_and_comment(catalog, bid, login, database)
        # The objects to restore from: one archive, or the files of a directory-format dump.
        parts = manifest.files() if manifest.format == "directory" else [manifest.object("dump")]
        t0 = time.monotonic()
        if existing is not None and existing == marker("restored", restore_id, backup_id):
            return _finish(login, database, manifest, selection, backup_id, 0, t0, 0, recovered=True)
        work = _work_database(login, database, existing, opts, restore_id)
        server_major = server_major_of(login)
        _check_compatible(manifest, server_major, selection)
        pg_restore = toolbox.pick(
            "pg_restore",
            max(server_major, manifest.pg_dump_version),
            purpose=f"restoring an archive written by pg_dump {manifest.pg_dump_version}"
            f" into PostgreSQL {server_major}",
        )
        mode, jobs = (
            ("download", opts.jobs)  # a directory-format dump is files: downloaded whatever the jobs
            if manifest.format == "directory"
            else restore_strategy(parts[0].size, opts.jobs, len(os.sched_getaffinity(0)))
        )
        # Streamed: the GET is opened now and its length is the size check (no HEAD of the same version before it).
        body = held_open.enter_context(opened_checked(store, parts[0])) if mode == "stream" else None
        if body is None:
            check_objects(store, parts)
        with tempfile.TemporaryDirectory(dir=workdir, prefix="lifeboat-restore-") as scratch:
            tmp = Path(scratch)
            local: Path | None = None
            if mode == "download":  # pg_restore -j needs a seekable archive
                local = _download(store, parts, manifest.format, tmp, on_progress, deadline)
            list_file: Path | None = None
            missing_schemas: list[str] = []
            if selection:
                list_file, missing_schemas = resolve_selection(
                    store,
                    parts[0].key,
                    local,
                    pg_restore,
                    selection,
                    selection.schemas_needed(manifest.row_counts),
                    tmp,
                    version_id=parts[0].version_id,
                )
            roles = apply_globals(login, _globals_sql(store, catalog, bid, manifest)) if opts.globals else None
            create_database(login, work)
            set_comment(login, work, marker("restoring", restore_id, backup_id))
            with _dropped_on_failure(login, work, manifest.target):
                create_schemas(login, work, missing_schemas)
                if body is None:
                    assert local is not None
                    restored = sum(p.size for p in parts)
                    _restore_local(pg_restore, local, login, work, opts, jobs, list_file, deadline)
                else:
                    restored = _stream_into_pg_restore(
                        body,
                        parts[0],
                        pg_restore,
                        login,
                        work,
                        opts,
                        on_progress,
                        deadline,
                        list_file,
                    )
                result = _finish(login, work, manifest, selection, backup_id, restored, t0, pg_restore.major)
                kept = swap(login, database, work, time.strftime("%Y%m%d%H%M%S")) if work != database else None
        set_comment(login, database, marker("restored", restore_id, backup_id))
        result.database = database
        result.replaced_database_kept_as = kept
        result.roles = roles
        record("RestoreSucceeded", 1, "Count", manifest.target)
        record("RestoreBytes", restored, "Bytes", manifest.target)
        return result


def _work_database(login: Login, database: str, existing: str | None, opts: RestoreOptions, restore_id: str) -> str:
    """The database this run creates: `database` itself, or (replacing one) a side database swapped in later."""
    if existing is not None and not opts.replace:
        raise ConflictError(
            f"database {database!r} already exists on {login.host}: restore into a new name"
            " (replacing a database needs clean=true and confirm=<name>)"
        )
    work = _side_database(database, restore_id) if existing is not None else database
    leftover = database_comment(login, work) if work != database else None
    if leftover is not None:
        if not leftover.startswith(f"pg-lifeboat restoring {restore_id} "):
            raise ConflictError(f"database {work!r} exists and is not this restore's: remove it or retry later")
        drop_database(login, work)  # our own interrupted attempt
    return work


def _side_database(database: str, restore_id: str) -> str:
    """Where a restore that replaces `database` goes first (swapped in once verified)."""
    return f"{database[:40]}_lifeboat_{restore_id[-8:]}"


@contextmanager
def _dropped_on_failure(login: Login, work: str, target: str) -> Iterator[None]:
    """A failed restore leaves nothing behind: the database it created is dropped."""
    try:
        yield
    except BaseException as failure:  # whatever ends the attempt drops what it created; re-raised
        record("RestoreFailed", 1, "Count", target)
        failure.lifeboat_recorded = True  # type: ignore[attr-defined]  # run_restore_job must not count it twice
        if isinstance(failure, SwapError) and not failure.original_in_place:
            raise  # the verified copy may be the only database left under any name: keep it
        try:
            drop_database(login, work)
        except Exception as exc:  # any cleanup failure: the original failure is the one to report
            logger.warning("could not drop the partly restored database", extra={"database": work, "error": str(exc)})
        raise


def _finish(
    login: Login,
    database: str,
    manifest: Manifest,
    selection: Selection,
    backup_id: str,
    restored: int,
    t0: float,
    pg_restore_major: int,
    recovered: bool = False,
) -> RestoreResult:
    with connect(login.with_database(database)) as conn:
        actual = count_restored_rows(conn)  # two statements, not one per table
    verification = verify_counts(manifest.row_counts, actual, selection)
    if verification["match"] is False:
        raise IntegrityError(f"restored row counts differ from the backup's: {verification['mismatches']}")
    return RestoreResult(
        backup_id, database, restored, time.monotonic() - t0, pg_restore_major, verification, recovered=recovered
    )


def _deadline_error(deadline: Deadline | None) -> DeadlineError:
    margin = deadline.margin_seconds if deadline else 0
    return DeadlineError(
        f"stopped {margin:.0f} s before the time limit with the restore unfinished; the new"
        " database was dropped: restore large archives on the long-running worker"
    )


def _read_verified(store: BackupStore, part: ManifestObject, deadline: Deadline | None) -> Iterator[bytes]:
    """The object's chunks, verified as they pass (logical.digests.PartVerifier): IntegrityError at the end of the
    first recorded part that differs (before its last chunk is yielded), or after the last chunk for an object
    recorded with one whole-object SHA-256 (older manifests, objects sent in one PUT)."""
    verifier = PartVerifier(part)
    body, _ = store.open_stream(part.key, part.version_id)
    with body:
        while chunk := body.read(CHUNK):
            if deadline and deadline.seconds_left() <= 0:
                raise _deadline_error(deadline)
            verifier.update(chunk)
            yield chunk
    verifier.finish()


def _download(
    store: BackupStore,
    parts: list[ManifestObject],
    fmt: str,
    tmp: Path,
    on_progress: Callable[[int], None] | None,
    deadline: Deadline | None,
) -> Path:
    """pg_restore -j needs a seekable archive (or a directory): download to ephemeral storage by concurrent ranged
    GETs (chalicelib.logical.download), every part verified, before anything is created."""
    need, free = sum(p.size for p in parts), shutil.disk_usage(tmp).free
    if need > free:
        raise RestoreError(
            f"the archive needs {need} bytes of ephemeral storage but {free} are free:"
            " give the function more /tmp, restore with jobs=1 (custom format streams),"
            " or restore on the long-running worker"
        )
    root = tmp / "dump"
    root.mkdir()
    archive = tmp / "archive.dump"
    targets = [(part, root / part.key.rsplit("/", 1)[-1] if fmt == "directory" else archive) for part in parts]

    def check_time() -> None:
        if deadline and deadline.seconds_left() <= 0:
            raise _deadline_error(deadline)

    download_objects(store, targets, on_progress=on_progress, check_time=check_time)
    return root if fmt == "directory" else archive


def _restore_local(
    tool: PgTool,
    source: Path,
    login: Login,
    database: str,
    opts: RestoreOptions,
    jobs: int,
    list_file: Path | None,
    deadline: Deadline | None,
) -> None:
    jobs = max(jobs, 1)
    args = [
        *pg_restore_args(database, opts, single_transaction=jobs == 1, list_file=list_file),
        f"--jobs={jobs}",
        str(source),
    ]
    child = ChildProcess(
        tool, args, minimal_env(login.with_database(database).env()), login.secrets, login.context, capture_stdout=False
    )
    with child, watchdog(child, deadline) as fired:
        try:
            child.check()
        except PgToolError as exc:
            if fired.is_set():
                raise _deadline_error(deadline) from None
            raise RestoreError(str(exc)) from None


def _globals_sql(store: BackupStore, catalog: Catalog, bid: BackupId, manifest: Manifest) -> str:
    """The globals.sql in the backup's own manifest (one database of a whole-server run has a copy of the run's),
    else, for one database of a run made before those copies, the run's."""
    for obj in manifest.objects:
        if obj.role == "globals":
            return b"".join(_read_verified(store, obj, None)).decode()
    if bid.database and manifest.databases is None:
        run = catalog.manifest(BackupId(bid.target, bid.stamp, bid.kind))
        catalog.check_signature(run)
        for obj in run.objects:
            if obj.role == "globals":
                return b"".join(_read_verified(store, obj, None)).decode()
    raise BadRequestError(f"{bid} has no roles to restore: the target was backed up without logical.globals")


def _stream_into_pg_restore(
    body: BinaryIO,
    part: ManifestObject,
    tool: PgTool,
    login: Login,
    database: str,
    opts: RestoreOptions,
    on_progress: Callable[[int], None] | None,
    deadline: Deadline | None = None,
    list_file: Path | None = None,
) -> int:
    # long because feeding, hashing and judging the stream are one loop under one watchdog.
    verifier = PartVerifier(part)  # per part when the manifest records parts (logical.digests)
    total = 0
    child = ChildProcess(
        tool,
        pg_restore_args(database, opts, list_file=list_file),
        minimal_env(login.with_database(database).env()),
        login.secrets,
        login.context,
        stdin=subprocess.PIPE,
        capture_stdout=False,
    )
    with child, body, watchdog(child, deadline) as fired:  # the body is released as soon as it is read
        stdin: IO[bytes] | None = child.stdin_pipe
        while chunk := body.read(CHUNK):
            if fired.is_set() or (deadline and deadline.seconds_left() <= 0):
                raise _deadline_error(deadline)
            verifier.update(chunk)
            total += len(chunk)
            if stdin is not None:
                try:
                    stdin.write(chunk)
                except BrokenPipeError:
                    # pg_restore stops reading once a selection's entries are done (or on an error): the
                    # rest is still read and hashed, so the whole object is verified either way.
                    with contextlib.suppress(BrokenPipeError):
                        stdin.close()
                    stdin = None
            if on_progress:
                on_progress(total)
        if stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()
        try:
            child.check()
        except PgToolError as exc:
            if fired.is_set():
                raise _deadline_error(deadline) from None
            verifier.finish()  # a corrupted object is the more useful diagnosis (IntegrityError)
            raise RestoreError(str(exc)) from None
    verifier.finish()
    return total
