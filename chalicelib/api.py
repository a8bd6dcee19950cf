"""The restore API's requests and operations, independent of Chalice.

Bodies are validated by schema (pydantic, unknown fields rejected); every problem becomes a
BadRequestError listing the fields to fix. Operations validate, record a job and hand it to a worker;
they never run a restore inside the 29 s an API Gateway request has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from chalicelib.catalog import BackupId, Catalog
from chalicelib.config import Config, Connection
from chalicelib.database import CredentialResolver, Login, database_exists
from chalicelib.dispatch import BackupQueue, DueBackup
from chalicelib.errors import BadRequestError, ConflictError, NotFoundError
from chalicelib.pgtools import Toolbox
from chalicelib.restore_jobs import RestoreJob, RestoreJobStore, RestoreQueue, new_restore_id

MAX_BODY_BYTES = 16 * 1024
DatabaseName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")]
# RDS instance and cluster identifiers: a letter first, then letters, digits, single hyphens; 1-63.
ResourceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z](-?[A-Za-z0-9])*$", max_length=63)]
Pattern = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]
AwsId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:/-]{1,255}$")]
TargetName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$", max_length=48)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Into(_Body):
    target: TargetName | None = None
    connection: Connection | None = None
    database: DatabaseName

    @model_validator(mode="after")
    def _one_server(self) -> Self:
        if (self.target is None) == (self.connection is None):
            raise ValueError("give exactly one of into.target or into.connection")
        return self


class LogicalOptions(_Body):
    schemas: list[Pattern] = Field(default_factory=list, max_length=100)
    tables: list[Pattern] = Field(default_factory=list, max_length=500)
    jobs: int = Field(default=1, ge=1, le=16)
    clean: bool = False
    confirm: DatabaseName | None = None
    no_owner: bool = False
    no_acl: bool = False


class LogicalRestoreRequest(_Body):
    backup_id: Annotated[str, StringConstraints(pattern=r"^logical:")]
    into: Into
    options: LogicalOptions = Field(default_factory=LogicalOptions)


class SnapshotRestoreRequest(_Body):
    backup_id: Annotated[str, StringConstraints(pattern=r"^snapshot:")]
    new_id: ResourceId | None = Field(default=None, description="new DB instance or cluster identifier")
    instance_class: AwsId | None = None
    subnet_group: AwsId | None = None
    security_group_ids: list[AwsId] = Field(default_factory=list, max_length=5)
    parameter_group: AwsId | None = None
    region: AwsId | None = Field(default=None, description="restore from the copy in this region (DR)")
    availability_zone: AwsId | None = Field(default=None, description="EBS: where the new volumes go")
    attach_to_instance: AwsId | None = Field(default=None, description="EBS: attach the new volumes here")


class PointInTimeRestoreRequest(_Body):
    target: TargetName
    point_in_time: datetime | Literal["latest"]
    new_id: ResourceId
    instance_class: AwsId | None = None
    subnet_group: AwsId | None = None
    security_group_ids: list[AwsId] = Field(default_factory=list, max_length=5)
    parameter_group: AwsId | None = None


class BackupRequest(_Body):
    target: TargetName
    kind: Literal["logical", "physical"] = "logical"


RestoreRequest = LogicalRestoreRequest | SnapshotRestoreRequest | PointInTimeRestoreRequest


def _fields(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {str(err['msg']).removeprefix('Value error, ')}")
    return "; ".join(parts)


def parse_json(raw: str | bytes | None) -> dict[str, Any]:
    if raw is not None and len(raw) > MAX_BODY_BYTES:
        raise BadRequestError(f"the body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise BadRequestError("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequestError("the body must be a JSON object")
    return body


def parse_restore_request(body: dict[str, Any]) -> RestoreRequest:
    model: type[LogicalRestoreRequest] | type[SnapshotRestoreRequest] | type[PointInTimeRestoreRequest]
    if "point_in_time" in body:
        model = PointInTimeRestoreRequest
    elif isinstance(body.get("backup_id"), str) and body["backup_id"].startswith("snapshot:"):
        model = SnapshotRestoreRequest
    elif "backup_id" in body:
        model = LogicalRestoreRequest
    else:
        raise BadRequestError("give backup_id (a logical dump or a snapshot) or target + point_in_time")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise BadRequestError(_fields(exc)) from None


def parse_backup_request(body: dict[str, Any]) -> BackupRequest:
    try:
        return BackupRequest.model_validate(body)
    except ValidationError as exc:
        raise BadRequestError(_fields(exc)) from None


@dataclass
class ApiServices:
    config: Config
    catalog: Catalog
    jobs: RestoreJobStore
    restore_queue: RestoreQueue
    backup_queue: BackupQueue | None
    credentials: CredentialResolver
    toolbox: Toolbox
    snapshots: Any = None  # SnapshotServices, built only when a target has a physical section


def into_login(svc: ApiServices, into: Into) -> tuple[Login, str]:
    if into.target:
        target = svc.config.target(into.target)
        if target.connection is None:
            raise BadRequestError(f"target {into.target!r} has no connection to restore into")
        return svc.credentials.login(target.connection), into.target
    assert into.connection is not None
    # A caller-chosen server gets a stored password only if it proves who it is (verify-full against
    # the CA bundle) and never in cleartext (require_auth=!password: SCRAM or MD5 only).
    if into.connection.sslmode != "verify-full":
        raise BadRequestError("into.connection needs sslmode 'verify-full' (the server must prove its identity"
                              " before it is sent credentials); or restore into a configured target")
    login = svc.credentials.login(into.connection)
    return replace(login, require_auth="!password"), into.connection.host


def check_logical(svc: ApiServices, req: LogicalRestoreRequest) -> str:
    """Everything that can be refused now is refused now (404, 409), before a job exists."""
    bid = BackupId.parse(req.backup_id)
    svc.config.target(bid.target)
    svc.catalog.manifest(bid)  # 404 unless complete
    if req.options.clean and req.options.confirm != req.into.database:
        raise ConflictError(f"replacing database {req.into.database!r} needs options.confirm set to"
                            f" {req.into.database!r} as well")
    login, _ = into_login(svc, req.into)
    if not req.options.clean and database_exists(login, req.into.database):
        raise ConflictError(f"database {req.into.database!r} already exists on {login.host}: choose a new name,"
                            " or set options.clean=true and options.confirm to the same name to replace it")
    return bid.target


def start_restore(svc: ApiServices, req: RestoreRequest) -> RestoreJob:
    now = datetime.now(UTC)
    if isinstance(req, LogicalRestoreRequest):
        kind, target, backup_id = "logical", check_logical(svc, req), req.backup_id
    elif isinstance(req, SnapshotRestoreRequest):
        from chalicelib import snapshot_restores

        kind, target, backup_id = "snapshot", snapshot_restores.check(svc, req), req.backup_id
    else:
        from chalicelib import snapshot_restores

        target_cfg = svc.config.target(req.target)
        if target_cfg.physical is None or target_cfg.physical.method == "ebs":
            raise BadRequestError(f"target {req.target!r} is not an RDS instance or Aurora cluster:"
                                  " point-in-time restore needs one")
        kind, target, backup_id = "point_in_time", snapshot_restores.check(svc, req), None
    job = RestoreJob(restore_id=new_restore_id(), kind=kind, target=target, backup_id=backup_id,  # type: ignore[arg-type]
                     request=req.model_dump(mode="json", exclude_none=True), created_at=now, updated_at=now)
    svc.jobs.create(job)
    svc.restore_queue.send(job.restore_id)
    return job


def request_backup(svc: ApiServices, req: BackupRequest) -> dict[str, Any]:
    target = svc.config.target(req.target)
    if req.kind == "physical" and target.physical is None:
        raise BadRequestError(f"target {req.target!r} has no physical section")
    if req.kind == "logical" and target.connection is None:
        raise BadRequestError(f"target {req.target!r} has no connection for a logical backup")
    if svc.backup_queue is None:
        raise BadRequestError("on-demand backups need LIFEBOAT_BACKUP_QUEUE_URL")
    slot = datetime.now(UTC).replace(microsecond=0)
    svc.backup_queue.send([DueBackup(req.target, req.kind, slot)])
    kind = "logical" if req.kind == "logical" else "snapshot"
    return {"backup_id": str(BackupId(req.target, slot, kind)), "target": req.target, "kind": req.kind,
            "status": "QUEUED", "queued_at": slot.isoformat()}


def list_backups(svc: ApiServices, target: str | None, kind: str | None, limit: int = 50) -> dict[str, Any]:
    if not target:
        raise BadRequestError("the query parameter 'target' is required")
    svc.config.target(target)
    if kind not in (None, "logical", "snapshot"):
        raise BadRequestError("kind must be 'logical' or 'snapshot'")
    entries: list[dict[str, Any]] = []
    if kind in (None, "logical"):
        for m in svc.catalog.list_backups(target, limit=limit):
            entries.append({"backup_id": m.backup_id, "kind": "logical", "target": m.target,
                            "time": m.slot.isoformat(), "size": m.size, "status": m.status,
                            "retention_class": m.retention_class, "server_version": m.server_version,
                            "database": m.database})
    if kind in (None, "snapshot") and svc.config.target(target).physical is not None and svc.snapshots:
        from chalicelib.snapshots import list_snapshots

        for e in list_snapshots(svc.snapshots, target):
            entries.append({"backup_id": e.backup_id, "kind": "snapshot", "target": e.target,
                            "time": e.slot.isoformat(), "size": e.size, "status": e.status,
                            "retention_class": e.retention_class, "server_version": e.server_version or None,
                            "region": e.region, "resource_ids": e.resource_ids})
    entries.sort(key=lambda e: e["time"], reverse=True)
    return {"target": target, "backups": entries[:limit]}


def get_restore(svc: ApiServices, restore_id: str) -> RestoreJob:
    """The job; a running snapshot or point-in-time restore is advanced first (describe calls are cheap)."""
    if not restore_id.startswith("r-") or len(restore_id) > 40:
        raise NotFoundError(f"no restore {restore_id!r}")
    job = svc.jobs.get(restore_id)
    if job.status == "RUNNING" and job.kind != "logical" and job.result:
        from chalicelib import snapshot_restores

        advanced = snapshot_restores.advance(svc, job)
        if advanced != job:
            job = svc.jobs.save(advanced)
    return job


def advance_running(svc: ApiServices) -> list[str]:
    """The restore sweeper: advance every running snapshot or point-in-time restore."""
    from chalicelib import snapshot_restores

    changed = []
    for job in svc.jobs.recent(limit=500):
        if job.status == "RUNNING" and job.kind != "logical" and job.result:
            advanced = snapshot_restores.advance(svc, job)
            if advanced != job:
                svc.jobs.save(advanced)
                changed.append(job.restore_id)
    return changed


def start_restore_once(svc: ApiServices, req: RestoreRequest, idempotency_key: str | None, table: str | None
                       ) -> dict[str, Any]:
    """start_restore, deduplicated by the client's Idempotency-Key through Powertools Idempotency.

    The same key with the same body returns the first job; the same key with another body is refused.
    """
    if not idempotency_key:
        return start_restore(svc, req).public()
    if not table:
        raise BadRequestError("Idempotency-Key needs LIFEBOAT_JOBS_TABLE")
    if len(idempotency_key) > 128:
        raise BadRequestError("Idempotency-Key is longer than 128 characters")
    from aws_lambda_powertools.utilities.idempotency import (
        DynamoDBPersistenceLayer,
        IdempotencyConfig,
        idempotent_function,
    )
    from aws_lambda_powertools.utilities.idempotency.exceptions import (
        IdempotencyAlreadyInProgressError,
        IdempotencyValidationError,
    )

    persistence = DynamoDBPersistenceLayer(table_name=table, key_attr="pk", expiry_attr="expires_at",
                                           boto3_client=svc.jobs.client)
    config = IdempotencyConfig(event_key_jmespath="key", payload_validation_jmespath="body",
                               expires_after_seconds=24 * 3600, raise_on_no_idempotency_key=True)

    def run(request: dict[str, Any]) -> dict[str, Any]:
        return start_restore(svc, req).public()

    once = idempotent_function(run, data_keyword_argument="request", persistence_store=persistence, config=config,
                               key_prefix="idempotency#restores")
    try:
        result: dict[str, Any] = once(request={"key": idempotency_key, "body": req.model_dump(mode="json")})
    except IdempotencyValidationError:
        raise ConflictError("this Idempotency-Key was used with a different body: use a new key") from None
    except IdempotencyAlreadyInProgressError:
        raise ConflictError("a request with this Idempotency-Key is still being processed: retry shortly") from None
    if result.get("restore_id"):
        return svc.jobs.get(str(result["restore_id"])).public()  # the job as it is now
    return result
