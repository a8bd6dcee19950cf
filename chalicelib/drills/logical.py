"""A logical drill: restore a picked dump into a scratch database on the configured scratch server, with the one
restore path (chalicelib.logical.restore.restore_logical: signature, sizes, SHA-256, row counts), run the checks, and
always drop the scratch database, whatever happened. The outcome is recorded (chalicelib.drills.runner.finish).

What is dropped never comes from a record (any role that writes the jobs table can forge one): only
`scratch_database(drill_id)`, only a name of SCRATCH_DATABASE's shape, and only while the database carries the
marker the restore wrote naming this drill (`pg-lifeboat restoring|restored <drill id> from <backup>`)."""

from __future__ import annotations

from chalicelib.adapters.postgres import Login
from chalicelib.config import Target
from chalicelib.drills.checks import row_count_check, run_checks
from chalicelib.drills.model import SCRATCH_DATABASE, CheckResult, DrillRecord, scratch_database
from chalicelib.drills.selection import Candidate
from chalicelib.drills.services import DrillServices
from chalicelib.errors import LifeboatError
from chalicelib.logical.databases import database_comment, drop_database, marker
from chalicelib.logical.restore import restore_logical
from chalicelib.observability import logger


def logical_candidates(svc: DrillServices, target: Target) -> list[Candidate]:
    """The target's backups that have a manifest (one LIST). A whole-server target's are its databases' backups.
    Completeness is checked when the picked one is restored: an incomplete pick is a failed drill, as it should be."""
    whole_server = bool(target.logical and target.logical.all_databases)
    return [
        Candidate(str(bid), bid.stamp)
        for bid in svc.catalog.backup_ids(target.name)
        if bool(bid.database) == whole_server
    ]


def scratch_login(svc: DrillServices, target: Target) -> Login:
    assert target.drill is not None and target.drill.into.target  # chalicelib.drills.settings.drill_problem
    scratch = svc.config.target(target.drill.into.target)
    assert scratch.connection is not None
    return svc.credentials.restore_login(scratch.connection)


def run_logical(svc: DrillServices, target: Target, rec: DrillRecord, picked: Candidate) -> DrillRecord:
    """Restore, verify, check; the scratch database is dropped in every case (the drop is recorded in `cleanup`).
    Failures become a FAILED record, never an exception (except a BaseException, after the drop)."""
    assert target.drill is not None
    database = scratch_database(rec.drill_id)
    t0 = svc.monotonic()
    login: Login | None = None
    try:
        try:
            login = scratch_login(svc, target)
            result = restore_logical(
                svc.store, svc.catalog, svc.toolbox, picked.backup_id, login, database, restore_id=rec.drill_id
            )
            checks = [row_count_check(result.verification)]
            checks += run_checks(
                login.with_database(database), target.drill.checks, target.drill.statement_timeout_seconds
            )
            recovery = svc.monotonic() - t0
        finally:
            cleanup = drop_scratch(login, rec.drill_id)
    except LifeboatError as exc:
        return rec.model_copy(update={"cleanup": cleanup}).failed(exc.code, str(exc))
    rec = rec.model_copy(
        update={"checks": checks, "restore_seconds": result.seconds, "recovery_seconds": recovery, "cleanup": cleanup}
    )
    return _judged(rec, checks)


def _judged(rec: DrillRecord, checks: list[CheckResult]) -> DrillRecord:
    failing = [c for c in checks if not c.passed]
    if failing:
        names = "; ".join(f"{c.name}: {c.detail}" for c in failing)
        return rec.failed("check_failed", f"{len(failing)} of {len(checks)} checks failed: {names}")
    return rec.model_copy(update={"status": "SUCCEEDED"})


def drill_markers(drill_id: str) -> tuple[str, str]:
    """How the restore (restore_id = the drill id) marks the scratch database: while restoring, then restored."""
    return marker("restoring", drill_id, ""), marker("restored", drill_id, "")


def drop_scratch(login: Login | None, drill_id: str) -> dict[str, object]:
    """Drop drill `drill_id`'s scratch database if it exists and is that drill's; never raises (the drill's own
    outcome is what to report). A database without the drill's marker is left alone and the reason recorded."""
    try:
        database = scratch_database(drill_id)
    except ValueError as exc:
        return {"database": None, "dropped": False, "reason": str(exc)}
    if not SCRATCH_DATABASE.fullmatch(database):  # never anything else, whatever scratch_database becomes
        return {"database": database, "dropped": False, "reason": "not a drill's scratch database name"}
    if login is None:
        return {"database": database, "dropped": False, "reason": "no login to the scratch server"}
    import psycopg

    try:
        comment = database_comment(login, database)
        if comment is None:
            return {"database": database, "dropped": False, "reason": "it does not exist"}
        if not comment.startswith(drill_markers(drill_id)):
            reason = f"it does not carry drill {drill_id}'s marker (its comment: {comment[:200]!r}): left alone"
            logger.error("a scratch database that is not the drill's", extra={"database": database, "why": reason})
            return {"database": database, "dropped": False, "reason": reason}
        drop_database(login, database)
    except (LifeboatError, psycopg.Error) as exc:
        logger.warning("could not drop a drill's scratch database", extra={"database": database, "error": str(exc)})
        return {"database": database, "dropped": False, "reason": str(exc)[:500]}
    return {"database": database, "dropped": True}
