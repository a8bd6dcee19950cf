"""Logical backups: pg_dump (and pg_dumpall --globals-only) streamed into the backup store.

Order of work, which is what makes a backup trustworthy:
1. skip the slot if it is complete (its manifest exists and every object it lists is there) or another attempt
   holds its claim; a manifest whose objects are missing is not complete: it is removed and the slot backed up again;
2. export a snapshot in a repeatable-read transaction and count rows in it (before pg_dump, or beside it in the
   same transaction with row_counts_mode parallel: a failed count stops pg_dump and fails the backup);
3. stream pg_dump --snapshot into a multipart upload that completes only if pg_dump exited 0;
4. write the manifest last (a PUT whose outcome is unknown is resolved by reading back: Catalog.write_manifest).
   On any failure: no manifest, no open upload, objects of the attempt deleted (the manifest first), a FAILED
   record under failed/, a failure metric, and an error that says what to fix;
5. once complete: the keep_last retention tags and the Object Lock (chalicelib.logical.protect).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from chalicelib.adapters.dynamo import JobStore, backup_claim_key
from chalicelib.adapters.pgtools import (
    Deadline,
    Toolbox,
    effective_compression,
    scrub,
)
from chalicelib.adapters.postgres import CredentialResolver, Login, connect, exported_snapshot, server_version
from chalicelib.adapters.s3 import BackupStore
from chalicelib.adapters.snapshot_counts import stop_when_failed
from chalicelib.adapters.versions import NULL_VERSION
from chalicelib.config import Config, Logical, Target
from chalicelib.errors import BadRequestError, LifeboatError, StorageError
from chalicelib.logical.catalog import (
    BackupId,
    Catalog,
    Manifest,
    ManifestLeftBehind,
    ManifestNotWritten,
    ManifestObject,
)
from chalicelib.logical.digests import manifest_object
from chalicelib.logical.dump_tools import dump_directory, pg_dump_args, pg_dumpall_args, stream_tool
from chalicelib.logical.protect import protect
from chalicelib.observability import logger, record
from chalicelib.scheduling.dispatch import DueBackup
from chalicelib.scheduling.retention import POLICY_TAG, RETENTION_TAG, backup_class


@dataclass
class BackupServices:
    """What a backup needs, injected: tests and the CLI build it the same way the handlers do."""

    config: Config
    store: BackupStore
    catalog: Catalog
    credentials: CredentialResolver
    toolbox: Toolbox
    claims: JobStore | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    # Where a whole-server run sends its per-database backups (the backup queue); None runs them inline.
    fan_out: Callable[[list[DueBackup]], int] | None = None


@dataclass(frozen=True)
class BackupOutcome:
    status: str  # SUCCEEDED | SKIPPED
    backup_id: str
    manifest: Manifest | None = None
    reason: str = ""


def run_logical_backup(
    svc: BackupServices,
    target_name: str,
    slot: datetime | None = None,
    *,
    trigger: str = "schedule",
    deadline: Deadline | None = None,
    on_progress: Callable[[int], None] | None = None,
    database: str = "",
) -> BackupOutcome:
    """Back up a target for a slot. For a whole-server target (`all_databases`) without `database`, this is
    the run itself: globals and the list of databases, each database then backed up on its own."""
    target = svc.config.target(target_name)
    if target.connection is None:
        raise BadRequestError(f"target {target.name!r} has no connection: logical backups need one")
    opts = target.logical or Logical()
    if database and not opts.all_databases:
        raise BadRequestError(f"target {target.name!r} is one database; only all_databases targets take a database")
    now = svc.clock()
    slot = (slot or now).astimezone(UTC).replace(microsecond=0)
    check_slot(slot, now)
    bid = BackupId(target.name, slot, database=database)
    log = logger
    log.append_keys(target=target.name, backup_id=str(bid))
    try:
        existing = _existing(svc, bid)
        if existing is not None:
            log.info("backup already complete; nothing to do but its retention tags and lock")
            _protect(svc, existing)
            return BackupOutcome("SKIPPED", str(bid), reason="already complete")
        claim_key = backup_claim_key(str(bid))
        # Without a deadline (CLI, Fargate) a run may take hours: hold the slot for a day.
        lease = timedelta(seconds=(deadline.remaining_ms() / 1000 if deadline else 86400) + 60)
        if svc.claims and not svc.claims.claim(claim_key, lease, detail={"trigger": trigger}):
            log.info("another attempt holds or finished this slot; skipping")
            return BackupOutcome("SKIPPED", str(bid), reason="claimed by another attempt")
        if opts.all_databases and not database:
            return _server_run(svc, target, opts, bid, trigger, deadline, claim_key)
        return _backup(svc, target, opts, bid, trigger, deadline, on_progress, claim_key)
    finally:
        log.remove_keys(["target", "backup_id"])


# How far a slot may be ahead of this worker's clock: a slot in the future would pass for the newest backup in
# retention (it would hold `keep` until that date, and every real backup after it only its class).
MAX_SLOT_AHEAD = timedelta(minutes=5)


def check_slot(slot: datetime, now: datetime) -> None:
    """Refuse a slot more than MAX_SLOT_AHEAD after `now` (a typo in --slot, a skewed clock)."""
    if slot > now + MAX_SLOT_AHEAD:
        raise BadRequestError(
            f"slot {slot.isoformat()} is in the future (this clock says {now.astimezone(UTC).isoformat()}):"
            f" a backup's slot may be at most {MAX_SLOT_AHEAD.seconds // 60} minutes ahead; check --slot and the clock"
        )


def _existing(svc: BackupServices, bid: BackupId) -> Manifest | None:
    """The slot's manifest when the backup is complete: its first version, and every object it lists there by the
    version it recorded (Catalog.read_manifest, missing_objects), so a delete marker over the manifest or over one of
    its objects (someone with the worker's DeleteObject) neither hides the backup nor gets it redone.

    A manifest whose objects are not all there is not complete (a phantom: an interrupted clean-up, objects deleted
    by hand). In an unversioned bucket it is removed and the slot backed up again, unless its claim says an attempt
    finished it (then the slot ends with nothing, never with a phantom). In a versioned bucket a manifest is written
    once and read at its first version, so it is never removed nor written over (only an attempt's own manifest is,
    by _record_failure): StorageError says what is missing."""
    found = svc.catalog.read_manifest(bid)
    if found is None:
        return None
    missing = svc.catalog.missing_objects(found)
    if not missing:
        if found.hidden:
            logger.error("the manifest of this complete backup is hidden by a delete marker: it stays a backup")
        return found
    if found.stored_version not in (None, NULL_VERSION):
        raise StorageError(
            f"backup {bid} is not complete: its manifest (first version {found.stored_version}) lists object versions"
            f" that are not in the bucket: {'; '.join(missing[:5])}. A manifest is written once, so the slot is not"
            " backed up again over it: look at the versions of its keys (aws s3api list-object-versions), and restore"
            " another backup"
        )
    logger.error(
        "the manifest of this backup lists objects that are not in the bucket: it is not complete; removing"
        " the manifest",
        extra={"missing": missing[:10]},
    )
    try:
        svc.catalog.remove_manifest(bid)
    except StorageError as exc:
        raise StorageError(
            f"backup {bid} is not complete (its manifest lists objects that are not in the bucket:"
            f" {'; '.join(missing[:5])}), and its manifest could not be removed: {exc}"
        ) from exc
    return None


def _protect(svc: BackupServices, manifest: Manifest) -> None:
    """Retention tags and Object Lock once a backup is complete (chalicelib.logical.protect)."""
    try:
        protect(svc.store, svc.catalog, svc.config, manifest, svc.clock())
    except StorageError as exc:
        logger.error(
            "backup complete, but its retention tags or lock could not be set",
            extra={"backup_id": manifest.backup_id, "error": str(exc)},
        )
        raise StorageError(
            f"backup {manifest.backup_id} is complete, but setting its retention tags or Object Lock"
            f" failed: {exc}; a redelivery of the same slot repeats it"
        ) from exc


def _backup(
    svc: BackupServices,
    target: Target,
    opts: Logical,
    bid: BackupId,
    trigger: str,
    deadline: Deadline | None,
    on_progress: Callable[[int], None] | None,
    claim_key: str,
) -> BackupOutcome:
    # long because it is one backup's whole sequence (snapshot, dumps, manifest last) inside the one try whose
    # except records the failure: split, the cleanup would have to follow the pieces.
    started = svc.clock()
    t0 = time.monotonic()
    written: list[str] = []
    manifest_key: list[str] = []  # set once the manifest PUT starts: its outcome may then be unknown
    login: Login | None = None
    facts_for_record: dict[str, object] = {}
    try:
        assert target.connection is not None
        login = svc.credentials.login(target.connection)
        if bid.database:
            login = login.with_database(bid.database)
        policy = svc.config.policy_for(target)
        with exported_snapshot(login, opts, deadline) as facts:
            facts_for_record.update(server_version=facts.server_version, server_version_num=facts.server_version_num)
            pg_dump = svc.toolbox.pick("pg_dump", facts.major, purpose=f"a PostgreSQL {facts.server_version} server")
            compression = effective_compression(opts.compression, pg_dump.major)
            if compression != opts.compression:
                logger.warning(
                    "compression not available in this pg_dump; using gzip",
                    extra={"configured": opts.compression, "pg_dump": pg_dump.major},
                )
            retention_class = backup_class(bid.stamp, trigger, opts.schedule, policy)
            tags = {RETENTION_TAG: retention_class.value, POLICY_TAG: target.retention, "target": target.name}
            log_extra = {
                "pg_dump": pg_dump.major,
                "server": facts.server_version,
                "retention": retention_class.value,
                "database_size": facts.database_size,
            }
            logger.info("dump starting", extra=log_extra)
            args = pg_dump_args(opts, pg_dump, facts.snapshot_id, compression)
            watch = stop_when_failed(facts.counting, deadline)  # starts a parallel count once pg_dump runs
            try:
                if opts.format == "directory":
                    objects = dump_directory(
                        svc.store,
                        pg_dump,
                        args,
                        login,
                        svc.catalog.layout.dump_key(bid, "directory"),
                        tags,
                        watch,
                        on_progress,
                        written,
                    )
                else:
                    dump_key = svc.catalog.layout.dump_key(bid)
                    written.append(dump_key)
                    dump = stream_tool(svc.store, pg_dump, args, login, dump_key, tags, watch, on_progress)
                    objects = [manifest_object("dump", dump)]
            except LifeboatError:
                if facts.counting is not None:  # a failed count stopped the dump: its error is the cause
                    facts.counting.stop()
                    facts.counting.check()
                raise
            row_counts = facts.counting.wait(deadline) if facts.counting is not None else facts.row_counts
        if opts.globals and not bid.database:  # a whole-server run dumps the globals once, not per database
            pg_dumpall = svc.toolbox.pick("pg_dumpall", facts.major)
            globals_key = svc.catalog.layout.globals_key(bid)
            written.append(globals_key)
            g = stream_tool(
                svc.store, pg_dumpall, pg_dumpall_args(login.database), login, globals_key, tags, deadline, None
            )
            objects.append(manifest_object("globals", g))
        elif opts.globals:
            objects.extend(_copy_run_globals(svc, bid, tags, written))
        finished = svc.clock()
        manifest = Manifest(
            backup_id=str(bid),
            target=target.name,
            slot=bid.stamp,
            trigger=trigger,
            host=login.host,
            database=login.database,
            server_version=facts.server_version,
            server_version_num=facts.server_version_num,
            pg_dump_version=pg_dump.major,
            format=opts.format,
            compression=compression,
            objects=objects,
            size=sum(o.size for o in objects),
            started_at=started,
            finished_at=finished,
            retention_class=retention_class.value,
            retention_policy=target.retention,
            snapshot_id=facts.snapshot_id,
            row_counts=row_counts,
        )
        manifest_key.append(svc.catalog.layout.manifest_key(bid))
        svc.catalog.write_manifest(manifest, tags)  # last: from here on the backup exists
    except BaseException as exc:  # whatever ends the attempt is recorded as its failure, then re-raised
        _record_failure(
            svc, target, bid, trigger, started, written, exc, login, facts_for_record, claim_key, manifest_key
        )
        raise
    seconds = time.monotonic() - t0
    if svc.claims:
        svc.claims.finish(claim_key, "SUCCEEDED", {"size": str(manifest.size)})
    logger.info(
        "backup complete",
        extra={"bytes": manifest.size, "seconds": round(seconds, 3), "objects": len(manifest.objects)},
    )
    record("BackupSucceeded", 1, "Count", target.name)
    record("BackupBytes", manifest.size, "Bytes", target.name)
    record("BackupDuration", seconds, "Seconds", target.name)
    _protect(svc, manifest)
    return BackupOutcome("SUCCEEDED", str(bid), manifest)


def _copy_run_globals(
    svc: BackupServices, bid: BackupId, tags: dict[str, str], written: list[str]
) -> list[ManifestObject]:
    """One database of a whole-server run: a copy of the run's globals.sql in the database's own folder and
    manifest, so that it has the database backup's retention tag and lock (the run's own expires with the run's
    class, which can be shorter than a kept database backup's). None when the run has no globals (yet): the
    restore then falls back to the run's."""
    run_key = svc.catalog.layout.globals_key(BackupId(bid.target, bid.stamp, bid.kind))
    if svc.store.head(run_key) is None:
        logger.warning("the run's globals.sql is not in the bucket: this database's backup has no roles of its own")
        return []
    body = svc.store.get_bytes(run_key)
    key = svc.catalog.layout.globals_key(bid)
    written.append(key)
    copy = svc.store.put_bytes(key, body, tags=tags, content_type="application/sql")
    return [manifest_object("globals", copy)]


# Databases no backup wants: templates, and the providers' own (RDS, Azure, Cloud SQL).
PROVIDER_DATABASES = ("rdsadmin", "azure_maintenance", "azure_sys", "cloudsqladmin", "alloydbadmin")


def list_databases(login: Login, exclude: list[str]) -> list[str]:
    with connect(login) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname"
        ).fetchall()
    return [str(r[0]) for r in rows if r[0] not in PROVIDER_DATABASES and r[0] not in exclude]


def _server_run(
    svc: BackupServices,
    target: Target,
    opts: Logical,
    bid: BackupId,
    trigger: str,
    deadline: Deadline | None,
    claim_key: str,
) -> BackupOutcome:
    """A whole-server run: the globals, then one backup per database, queued (so each gets its own invocation
    and the per-server limit) or run inline, then the run's manifest (the globals and the list of databases)."""
    # long because, like _backup, it is one run's sequence inside the one try whose except records its failure.
    started = svc.clock()
    written: list[str] = []
    manifest_key: list[str] = []
    login: Login | None = None
    facts: dict[str, object] = {}
    try:
        assert target.connection is not None
        login = svc.credentials.login(target.connection)
        databases = list_databases(login, opts.exclude_databases)
        version_num, version = server_version(login)
        facts.update(server_version=version, server_version_num=version_num)
        retention_class = backup_class(bid.stamp, trigger, opts.schedule, svc.config.policy_for(target))
        tags = {RETENTION_TAG: retention_class.value, POLICY_TAG: target.retention, "target": target.name}
        pg_dumpall = svc.toolbox.pick("pg_dumpall", version_num // 10000)
        globals_key = svc.catalog.layout.globals_key(bid)
        written.append(globals_key)
        g = stream_tool(
            svc.store, pg_dumpall, pg_dumpall_args(login.database), login, globals_key, tags, deadline, None
        )
        _fan_out(svc, bid, databases, trigger, deadline)
        manifest = Manifest(
            backup_id=str(bid),
            target=target.name,
            slot=bid.stamp,
            trigger=trigger,
            host=login.host,
            database="*",
            server_version=version,
            server_version_num=version_num,
            pg_dump_version=pg_dumpall.major,
            format=opts.format,
            compression="none",
            objects=[manifest_object("globals", g)],
            size=g.size,
            started_at=started,
            finished_at=svc.clock(),
            retention_class=retention_class.value,
            retention_policy=target.retention,
            databases=databases,
        )
        manifest_key.append(svc.catalog.layout.manifest_key(bid))
        svc.catalog.write_manifest(manifest, tags)
    except BaseException as exc:  # whatever ends the attempt is recorded as its failure, then re-raised
        _record_failure(svc, target, bid, trigger, started, written, exc, login, facts, claim_key, manifest_key)
        raise
    if svc.claims:
        svc.claims.finish(claim_key, "SUCCEEDED", {"databases": str(len(databases))})
    _protect(svc, manifest)
    return BackupOutcome("SUCCEEDED", str(bid), manifest, reason=f"{len(databases)} databases")


def _fan_out(svc: BackupServices, bid: BackupId, databases: list[str], trigger: str, deadline: Deadline | None) -> None:
    """The run's per-database backups, queued (or run inline) before the run's manifest and claim say SUCCEEDED:
    a failure here fails the run, and its redelivery queues them again (a repeat is harmless: the messages are
    deduplicated by id, and a database's backup that is complete or claimed is skipped)."""
    due = [DueBackup(bid.target, "logical", bid.stamp, db, trigger) for db in databases]
    logger.info("whole-server run: databases to back up", extra={"databases": len(databases)})
    if svc.fan_out is not None:
        svc.fan_out(due)
        return
    for item in due:
        run_logical_backup(svc, item.target, item.slot, trigger=item.trigger, deadline=deadline, database=item.database)


def _record_failure(
    svc: BackupServices,
    target: Target,
    bid: BackupId,
    trigger: str,
    started: datetime,
    written: list[str],
    exc: BaseException,
    login: Login | None,
    facts: dict[str, object],
    claim_key: str,
    manifest_key: list[str],
) -> None:
    """Clean-up without delete-version rights: each plain delete leaves a delete marker, and the data a noncurrent
    version that the lifecycle expires (objects of an attempt that never completed are not locked). Never a
    manifest without its objects: a manifest whose write failed in an unknown way is removed first, and when it
    cannot be, the objects stay."""
    # long because every failure is recorded here in full: objects, claim, FAILED record, metric, log line.
    secrets = login.secrets if login else ()
    message = scrub(str(exc) if isinstance(exc, LifeboatError) else f"{type(exc).__name__}: {exc}", secrets)
    logger.error("backup failed", extra={"error": message, "error_code": getattr(exc, "code", "internal_error")})
    record("BackupFailed", 1, "Count", target.name)
    cleanups: list[Callable[[], None]] = []
    if isinstance(exc, ManifestLeftBehind):
        logger.error(
            "the incomplete backup's manifest could not be removed: its objects are kept with it",
            extra={"objects": written[:10]},
        )
    elif manifest_key and not isinstance(exc, ManifestNotWritten):  # the manifest PUT was interrupted: it may be there

        def manifest_then_objects() -> None:
            svc.store.delete(manifest_key)  # when this fails, the objects stay
            if written:
                svc.store.delete(written)

        cleanups.append(manifest_then_objects)
    elif written:
        cleanups.append(lambda: svc.store.delete(written))
    failure = Manifest(
        backup_id=str(bid),
        status="FAILED",
        target=target.name,
        slot=bid.stamp,
        trigger=trigger,
        host=target.connection.host if target.connection else "",
        database=target.connection.database if target.connection else "",
        server_version=str(facts.get("server_version", "")),
        server_version_num=int(str(facts.get("server_version_num", 0))),
        pg_dump_version=0,
        format="custom",
        compression=(target.logical or Logical()).compression,
        started_at=started,
        finished_at=svc.clock(),
        retention_class="",
        retention_policy=target.retention,
        error=message,
    )
    cleanups.append(lambda: svc.catalog.write_failure(failure))
    if svc.claims:
        claims = svc.claims
        cleanups.append(lambda: claims.finish(claim_key, "FAILED", {"error": message[:1000]}))
    for cleanup in cleanups:
        try:
            cleanup()
        except Exception as cleanup_exc:  # the original error matters more; say what could not be tidied
            logger.warning("cleanup after failure incomplete", extra={"error": scrub(str(cleanup_exc), secrets)})
