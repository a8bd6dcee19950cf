"""Beyond Lambda: a logical backup or restore that will not fit an invocation runs as an ECS Fargate task.

A Lambda invocation ends after 15 minutes and has at most 10 GiB of /tmp; a Fargate task has no time limit
and up to 200 GiB of ephemeral storage. The task's container image (the repository's Dockerfile) holds the
same code and the same PostgreSQL client binaries as the functions, and its entry point is the `lifeboat`
command, so a task runs exactly what the worker would have run:

    lifeboat -v backup TARGET --slot SLOT --trigger schedule [--database DB]
    lifeboat -v run-restore RESTORE_ID

Three parts, in the order they are used:
* `choose_runner` / `choose_restore_runner`: pure decisions. A target marked `runner: fargate` (a large
  database) always goes; `runner: lambda` never does; `auto` goes when the previous run took more than
  `settings.fargate_share` of `settings.lambda_timeout_seconds`, or when pg_database_size at
  `settings.fargate_bytes_per_second` predicts it will.
* `route_backup` / `route_restore`: what the SQS workers call before they start. They measure only what
  the decision still needs (the newest manifest and failure record: two LISTs and two GETs; then one
  `SELECT pg_database_size()`), and when Fargate is chosen they launch the task and return the worker's
  result instead of running. They never claim the backup slot or start the restore job: the task does
  (chalicelib.adapters.dynamo, chalicelib.restore.model), exactly as the worker would have. A delegation record
  (`fargate#backup#<id>`, `fargate#restore#<id>` in the jobs table: dynamo.delegation_key, DELEGATION_LEASE)
  keeps a redelivered message from launching a second task.
* `FargateLauncher`: one `ecs.run_task` per run (chalicelib.adapters.ecs), with the command as the container
  override; an ECS refusal (no capacity, a bad subnet, a missing role) is a FargateError (chalicelib.errors)
  saying why, so SQS retries the message.

Deliberately not here: the dispatcher does not route. It stays one pass over the configuration with no AWS
call per target; every logical backup passes through the worker, which already holds the catalog.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from chalicelib.adapters.dynamo import JobStore, delegation_key
from chalicelib.adapters.ecs import EcsTasks
from chalicelib.adapters.postgres import CredentialResolver, connect
from chalicelib.adapters.s3 import BackupStore
from chalicelib.config import Connection, Logical, Settings, Target
from chalicelib.errors import LifeboatError
from chalicelib.logical.catalog import BackupId, Catalog, Manifest
from chalicelib.logical.dump import BackupServices
from chalicelib.observability import logger, record
from chalicelib.restore.model import RestoreServices
from chalicelib.restore.requests import LogicalRestoreRequest
from chalicelib.scheduling.dispatch import DueBackup

Runner = Literal["lambda", "fargate"]
DEFAULT_CONTAINER = "lifeboat"  # the container name in the stack's task definition (stack/names.py)
STARTED_BY = "pg-lifeboat"
TAG_PREFIX = "pg-lifeboat:"
# A redelivered message within this time does not launch a second task for the same run.
DELEGATION_LEASE = timedelta(hours=12)
# pg_restore rebuilds the indexes and constraints pg_dump only names: assume a restore takes twice its dump.
RESTORE_SLOWDOWN = 2.0
# A parallel restore downloads the archive to /tmp first; leave a tenth of it for everything else.
TMP_USABLE_SHARE = 0.9
MiB = 1024 * 1024
_TAG_VALUE = re.compile(r"[^\w .:/=+@-]")


@dataclass(frozen=True)
class Decision:
    runner: Runner
    reason: str
    final: bool = False  # no measurement can change it (an explicit runner, a whole-server run)

    @property
    def fargate(self) -> bool:
        return self.runner == "fargate"


# --------------------------------------------------------------------------------------------------
# The decisions (pure)


def _budget(settings: Settings) -> float:
    return settings.fargate_share * settings.lambda_timeout_seconds


def _over_budget(settings: Settings) -> str:
    return (
        f"over {settings.fargate_share:.0%} of the {settings.lambda_timeout_seconds} s Lambda limit"
        f" ({_budget(settings):.0f} s)"
    )


def choose_runner(
    target: Target,
    last_duration_seconds: float | None,
    database_size_bytes: int | None,
    settings: Settings,
    *,
    database: str = "",
) -> Decision:
    """Where a logical backup of `target` (one `database` of a whole-server target) runs.

    `last_duration_seconds`: how long the previous run took (None: never ran); `database_size_bytes`:
    pg_database_size (None: unknown). An explicit runner wins; a whole-server run itself (globals and the
    list of databases, each then queued on its own) always stays on Lambda.
    """
    opts = target.logical or Logical()
    if opts.runner == "lambda":
        return Decision("lambda", "the target's runner is lambda", final=True)
    if opts.all_databases and not database:
        return Decision("lambda", "a whole-server run dumps only the globals and queues each database", final=True)
    if opts.runner == "fargate":
        return Decision("fargate", "the target is marked large (runner fargate)", final=True)
    budget = _budget(settings)
    if last_duration_seconds is not None and last_duration_seconds > budget:
        return Decision("fargate", f"the previous run took {last_duration_seconds:.0f} s, " + _over_budget(settings))
    if database_size_bytes is not None:
        predicted = database_size_bytes / settings.fargate_bytes_per_second
        if predicted > budget:
            return Decision(
                "fargate",
                f"pg_database_size {database_size_bytes / 1e9:.1f} GB at"
                f" {settings.fargate_bytes_per_second / 1e6:.0f} MB/s predicts"
                f" {predicted:.0f} s, " + _over_budget(settings),
            )
    known = [
        f"previous run {last_duration_seconds:.0f} s" if last_duration_seconds is not None else "",
        f"{database_size_bytes / 1e9:.1f} GB" if database_size_bytes is not None else "",
    ]
    facts = ", ".join(k for k in known if k) or "no history and no size"
    return Decision("lambda", f"fits within {budget:.0f} s ({facts})")


def choose_restore_runner(
    target: Target | None, dump_seconds: float | None, archive_bytes: int, downloads: bool, settings: Settings
) -> Decision:
    """Where a logical restore runs. `target`: the backup's target (None when no longer configured);
    `dump_seconds`: how long the backup took; `downloads`: whether the archive is downloaded to /tmp
    first (a parallel or directory-format restore) rather than streamed into pg_restore."""
    runner = (target.logical or Logical()).runner if target is not None else "auto"
    if runner == "lambda":
        return Decision("lambda", "the target's runner is lambda", final=True)
    if runner == "fargate":
        return Decision("fargate", "the backup's target is marked large (runner fargate)", final=True)
    usable = settings.lambda_ephemeral_storage_mib * MiB * TMP_USABLE_SHARE
    if downloads and archive_bytes > usable:
        return Decision(
            "fargate",
            f"a parallel restore downloads {archive_bytes / MiB:.0f} MiB to /tmp, more than"
            f" the worker's {settings.lambda_ephemeral_storage_mib} MiB allow",
        )
    if dump_seconds is not None:
        expected = dump_seconds * RESTORE_SLOWDOWN
        if expected > _budget(settings):
            return Decision(
                "fargate",
                f"the dump took {dump_seconds:.0f} s; its restore is expected to take"
                f" {expected:.0f} s, " + _over_budget(settings),
            )
    return Decision("lambda", f"fits within {_budget(settings):.0f} s")


# --------------------------------------------------------------------------------------------------
# Launching the task


def _tag_value(text: str) -> str:
    """ECS tag values: at most 256 of letters, digits, spaces and _ . : / = + - @."""
    return _TAG_VALUE.sub("_", text)[:256]


class FargateLauncher:
    """Starts the stack's task definition on Fargate with a `lifeboat` command as the container override."""

    def __init__(
        self,
        ecs: EcsTasks,
        cluster: str,
        task_definition: str,
        subnets: Sequence[str],
        security_groups: Sequence[str],
        container: str = DEFAULT_CONTAINER,
        assign_public_ip: bool = False,
    ) -> None:
        if not subnets:
            raise ValueError("a Fargate task needs at least one subnet")
        self.ecs, self.cluster, self.task_definition = ecs, cluster, task_definition
        self.subnets, self.security_groups = list(subnets), list(security_groups)
        self.container, self.assign_public_ip = container, assign_public_ip

    @staticmethod
    def backup_command(due: DueBackup) -> list[str]:
        """What the task runs: the worker's backup, for the same slot (so it claims the same run)."""
        command = [
            "-v",
            "backup",
            due.target,
            "--slot",
            due.slot.astimezone(UTC).isoformat(),
            "--trigger",
            due.trigger,
            "--json",
        ]  # one JSON line in the task's log (the outcome and manifest)
        if due.database:
            command += ["--database", due.database]
        return command

    @staticmethod
    def restore_command(restore_id: str) -> list[str]:
        return ["-v", "run-restore", restore_id]

    def run_backup(self, due: DueBackup) -> str:
        """Start the backup task; its ARN. FargateError when ECS does not start it."""
        tags = {"kind": "backup", "target": due.target, "slot": due.slot.astimezone(UTC).isoformat()}
        if due.database:
            tags["database"] = due.database
        return self._run(self.backup_command(due), tags)

    def run_restore(self, restore_id: str, target: str = "") -> str:
        tags = {"kind": "restore", "restore-id": restore_id}
        if target:
            tags["target"] = target
        return self._run(self.restore_command(restore_id), tags)

    def _run(self, command: list[str], tags: dict[str, str]) -> str:
        return self.ecs.run_fargate_task(
            cluster=self.cluster,
            task_definition=self.task_definition,
            subnets=self.subnets,
            security_groups=self.security_groups,
            assign_public_ip=self.assign_public_ip,
            container=self.container,
            command=command,
            started_by=STARTED_BY,
            tags={TAG_PREFIX + k: _tag_value(v) for k, v in tags.items()},
            what=" ".join(command[1:3]),
        )


# --------------------------------------------------------------------------------------------------
# What the backup worker measures


def previous_run_seconds(store: BackupStore, catalog: Catalog, target: str, database: str = "") -> float | None:
    """How long the previous run of a target (one database of it) took: the newest complete backup's
    duration, or the newest failed attempt's when that is newer and longer (an attempt stopped at the
    Lambda deadline ran for nearly the whole limit). None when it never ran or the catalog cannot tell."""
    durations: list[float] = []
    try:
        newest = next((bid for bid in catalog.backup_ids(target) if bid.database == database), None)
        success = catalog.manifest(newest) if newest else None
        if success is not None:
            durations.append(success.duration_seconds)
        failure = _newest_failure(store, catalog, target)
        if (
            failure is not None
            and BackupId.parse(failure.backup_id).database == database
            and (success is None or failure.slot > success.slot)
        ):
            durations.append(failure.duration_seconds)
    except (LifeboatError, ValidationError, ValueError) as exc:
        logger.warning("cannot read the previous run's duration; deciding without it", extra={"error": str(exc)})
    return max(durations) if durations else None


def _newest_failure(store: BackupStore, catalog: Catalog, target: str) -> Manifest | None:
    keys = [o.key for o in store.list_objects(f"{catalog.layout.failed_prefix}{target}/")]
    return Manifest.model_validate_json(store.get_bytes(max(keys))) if keys else None


def database_size(credentials: CredentialResolver, connection: Connection, database: str = "") -> int | None:
    """pg_database_size of the database a backup dumps; None when it cannot be read (the backup then
    reports the real problem with its own error and failure record)."""
    import psycopg  # heavy (libpq): only a backup that measures its database loads it here

    try:
        login = credentials.login(connection)
        if database:
            login = login.with_database(database)
        with connect(login) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    except (LifeboatError, psycopg.Error) as exc:
        logger.warning("cannot read pg_database_size; deciding without it", extra={"error": str(exc)})
        return None
    return int(row[0]) if row else None


# --------------------------------------------------------------------------------------------------
# Routing (called by chalicelib.entrypoints)


def _delegate(claims: JobStore | None, key: str, launch: Callable[[], str]) -> str | None:
    """Launch once per run: None when an earlier delivery of the same message already launched it. A
    failed launch releases the record, so the retry may launch again."""
    if claims is not None and not claims.claim(key, DELEGATION_LEASE, detail={"runner": "fargate"}):
        return None
    try:
        return launch()
    except BaseException as exc:  # any failed launch releases the record so a retry may launch; re-raised
        if claims is not None:
            with contextlib.suppress(LifeboatError):
                claims.finish(key, "FAILED", {"error": str(exc)[:1000]})
        raise


def route_backup(svc: BackupServices, due: DueBackup, launcher: FargateLauncher | None) -> dict[str, Any] | None:
    """Before the backup worker dumps: launch the Fargate task instead when this backup will not fit.

    Returns the worker's result when the run was delegated (DELEGATED, or SKIPPED when already delegated),
    None when it runs here. Measures only for `runner: auto`, and nothing when no task is configured.
    """
    target = svc.config.target(due.target)
    settings = svc.config.settings
    decision = choose_runner(target, None, None, settings, database=due.database)
    if target.connection is None or (decision.final and not decision.fargate):
        return None  # no connection: the backup itself says so
    if launcher is None:
        if decision.fargate:
            logger.warning(
                "the target is marked runner=fargate but this deployment has no Fargate task"
                " (LIFEBOAT_FARGATE_*): running on Lambda",
                extra={"target": target.name},
            )
        return None
    bid = BackupId(target.name, due.slot.astimezone(UTC).replace(microsecond=0), database=due.database)
    if svc.store.head(svc.catalog.layout.manifest_key(bid)) is not None:
        return None  # complete already: the worker skips it without a task
    if not decision.fargate:
        last = previous_run_seconds(svc.store, svc.catalog, target.name, due.database)
        decision = choose_runner(target, last, None, settings, database=due.database)
        if not decision.fargate:
            size = database_size(svc.credentials, target.connection, due.database)
            decision = choose_runner(target, last, size, settings, database=due.database)
    if not decision.fargate:
        logger.info("running on Lambda", extra={"backup_id": str(bid), "reason": decision.reason})
        return None
    arn = _delegate(svc.claims, delegation_key("backup", str(bid)), lambda: launcher.run_backup(due))
    if arn is None:
        logger.info("already delegated to a Fargate task", extra={"backup_id": str(bid)})
        return {"status": "SKIPPED", "backup_id": str(bid), "reason": "already delegated to a Fargate task"}
    logger.info("delegated to Fargate", extra={"backup_id": str(bid), "task_arn": arn, "reason": decision.reason})
    record("BackupDelegated", 1, "Count", target.name)
    return {
        "status": "DELEGATED",
        "backup_id": str(bid),
        "runner": "fargate",
        "task_arn": arn,
        "reason": decision.reason,
    }


def route_restore(
    svc: RestoreServices, restore_id: str, launcher: FargateLauncher | None, claims: JobStore | None
) -> dict[str, Any] | None:
    """Before the restore worker restores: launch the Fargate task instead when this logical restore will
    not fit. The job stays PENDING for the task to start (a note in its progress says where it runs)."""
    if launcher is None:
        return None
    try:
        job = svc.jobs.get(restore_id)
        if job.status != "PENDING" or job.kind != "logical":
            return None
        req = LogicalRestoreRequest.model_validate(job.request)
        manifest = svc.catalog.manifest(BackupId.parse(req.backup_id))
    except (LifeboatError, ValidationError):
        return None  # the worker reports it on the job, as it would without Fargate
    target = next((t for t in svc.config.targets if t.name == manifest.target), None)
    downloads = req.options.jobs > 1 or manifest.format == "directory"
    decision = choose_restore_runner(target, manifest.duration_seconds, manifest.size, downloads, svc.config.settings)
    if not decision.fargate:
        return None

    def launch() -> str:
        svc.jobs.save(job.model_copy(update={"progress": {"runner": "fargate", "reason": decision.reason}}))
        return launcher.run_restore(restore_id, manifest.target)

    arn = _delegate(claims, delegation_key("restore", restore_id), launch)
    if arn is None:
        return {"restore_id": restore_id, "status": "SKIPPED", "reason": "already delegated to a Fargate task"}
    logger.info(
        "restore delegated to Fargate", extra={"restore_id": restore_id, "task_arn": arn, "reason": decision.reason}
    )
    record("RestoreDelegated", 1, "Count", manifest.target)
    return {
        "restore_id": restore_id,
        "status": "DELEGATED",
        "runner": "fargate",
        "task_arn": arn,
        "reason": decision.reason,
    }
