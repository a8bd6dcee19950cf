"""What a caller may ask of the restore API, validated by schema.

Bodies are validated with pydantic (unknown fields rejected); every problem becomes a BadRequestError
listing the fields to fix. The worker reads a job's request back through the same models.

A caller names things, never places: a backup, a configured target to restore into, a database name. No
host, user, secret or CA comes from a request (chalicelib.restore.access decides what a target allows). The one
path a request may carry (a WAL recovery's `pgdata`) is on the caller's own machine: it only goes, quoted, into
the command the answer returns.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from chalicelib.errors import BadRequestError
from chalicelib.logical.catalog import BackupId

DatabaseName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")]
# RDS instance and cluster identifiers: a letter first, then letters, digits, single hyphens. At most 54 (RDS allows
# 63): an Aurora restore's instance is `<new_id>-<8 hex digits of the restore id>`. A new_id must also start with
# `lifeboat-` (chalicelib.restore.snapshot.NEW_ID_PREFIX, checked there): IAM lets restores create nothing else.
NEW_ID_MAX = 54
ResourceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z](-?[A-Za-z0-9])*$", max_length=NEW_ID_MAX)]
NEW_ID_HELP = "the new DB instance or cluster identifier: starts with lifeboat-, at most 54 characters"
Pattern = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]
AwsId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:/-]{1,255}$")]
TargetName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$", max_length=48)]
LSN = re.compile(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}")
# A data directory on the caller's machine, put into a shell command: absolute, and only characters no shell treats
# specially (the command quotes it anyway), no `..` segment.
PGDATA = re.compile(r"/[A-Za-z0-9_./@+,:=-]{0,1023}")
WAL_FORMS = ("time", "latest", "lsn")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)  # schemas built on first use (cold start)


class Into(_Body):
    target: TargetName | None = Field(
        default=None, description="a configured target: the backup's own (the default) or one its restore_into lists"
    )
    database: DatabaseName


class LogicalOptions(_Body):
    schemas: list[Pattern] = Field(default_factory=list, max_length=100)
    tables: list[Pattern] = Field(default_factory=list, max_length=500)
    jobs: int = Field(default=1, ge=1, le=16)
    clean: bool = False
    confirm: DatabaseName | None = None
    no_owner: bool = False
    no_acl: bool = False
    globals: bool = Field(default=False, description="first create the backup's roles the server lacks")


class LogicalRestoreRequest(_Body):
    backup_id: Annotated[str, StringConstraints(pattern=r"^logical:")]
    into: Into
    options: LogicalOptions = Field(default_factory=LogicalOptions)


class SnapshotRestoreRequest(_Body):
    backup_id: Annotated[str, StringConstraints(pattern=r"^snapshot:")]
    new_id: ResourceId | None = Field(default=None, description=NEW_ID_HELP)
    instance_class: AwsId | None = None
    subnet_group: AwsId | None = None
    security_group_ids: list[AwsId] = Field(default_factory=list, max_length=5)
    parameter_group: AwsId | None = None
    region: AwsId | None = Field(default=None, description="restore from the copy in this region (DR)")
    availability_zone: AwsId | None = Field(
        default=None, description="EBS: where the new volumes go (default: the first of availability_zones)"
    )
    attach_to_instance: AwsId | None = Field(default=None, description="EBS: attach the new volumes here")


class PointInTimeRestoreRequest(_Body):
    target: TargetName = Field(
        description="the target whose RDS instance or Aurora cluster is restored (the"
        " path's; may be left out of the body)"
    )
    point_in_time: datetime | Literal["latest"]
    new_id: ResourceId = Field(description=NEW_ID_HELP)
    instance_class: AwsId | None = None
    subnet_group: AwsId | None = None
    security_group_ids: list[AwsId] = Field(default_factory=list, max_length=5)
    parameter_group: AwsId | None = None


class WalRecoveryRequest(_Body):
    """The point-in-time form for a target with a `wal` section (a WAL stream and base backups, chalicelib.pitr):
    planned, not run. The answer names the base, the WAL range and the `lifeboat recover` command to run on the
    machine that will run the server (chalicelib.restore.wal_recovery)."""

    target: TargetName = Field(description="the streaming target (the path's; may be left out of the body)")
    time: AwareDatetime | None = Field(default=None, description="recover up to this moment (ISO 8601 with a zone)")
    latest: Literal[True] | None = Field(default=None, description="recover up to the newest archived WAL")
    lsn: str | None = Field(default=None, description="recover up to this WAL location, e.g. 0/3000148")
    pgdata: str | None = Field(
        default=None,
        description="the new data directory on the machine that will run the server: an absolute path of letters,"
        " digits and ._/@+,:=- only (default: the command has a <PGDATA> placeholder to fill in)",
    )

    @field_validator("lsn")
    @classmethod
    def _lsn(cls, value: str | None) -> str | None:
        if value is not None and not LSN.fullmatch(value):
            raise ValueError(f"{value[:40]!r} is not an LSN: write it as PostgreSQL prints it, e.g. 0/3000148")
        return value

    @field_validator("pgdata")
    @classmethod
    def _pgdata(cls, value: str | None) -> str | None:
        if value is not None and (not PGDATA.fullmatch(value) or ".." in value.split("/")):
            raise ValueError(
                f"{value[:100]!r} is not usable as a data directory here: give an absolute path (at most 1024"
                " characters) of letters, digits and ._/@+,:=- only, without '..' segments; or leave pgdata out"
                " and fill in the command's <PGDATA>"
            )
        return value

    @model_validator(mode="after")
    def _one_form(self) -> WalRecoveryRequest:
        given = [name for name in WAL_FORMS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of time (ISO 8601 with a zone), latest (true) or lsn, not {given or 'none'}"
            )
        return self


RestoreRequest = LogicalRestoreRequest | SnapshotRestoreRequest | PointInTimeRestoreRequest | WalRecoveryRequest


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {str(err['msg']).removeprefix('Value error, ')}")
    return "; ".join(parts)


def source_target(req: RestoreRequest) -> str:
    """The target whose backup (or instance) a request restores: what the API path names."""
    if isinstance(req, PointInTimeRestoreRequest | WalRecoveryRequest):
        return req.target
    return BackupId.parse(req.backup_id).target


def parse_restore_request(body: dict[str, Any], path_target: str | None = None) -> RestoreRequest:
    """The request in `body`; with `path_target` (POST /targets/{target}/restores) it must restore that target's
    backup (a point-in-time body may leave its target out). A body with time, latest or lsn is the WAL form."""
    model: type[RestoreRequest]
    if any(name in body for name in WAL_FORMS):
        model = WalRecoveryRequest
        if path_target is not None and "target" not in body:
            body = {**body, "target": path_target}
    elif "point_in_time" in body:
        model = PointInTimeRestoreRequest
        if path_target is not None and "target" not in body:
            body = {**body, "target": path_target}
    elif isinstance(body.get("backup_id"), str) and body["backup_id"].startswith("snapshot:"):
        model = SnapshotRestoreRequest
    elif "backup_id" in body:
        model = LogicalRestoreRequest
    else:
        raise BadRequestError(
            "give backup_id (a logical dump or a snapshot), point_in_time + new_id (an RDS instance or Aurora"
            " cluster), or one of time, latest, lsn (a target with a wal section)"
        )
    try:
        req = model.model_validate(body)
    except ValidationError as exc:
        raise BadRequestError(describe_validation_error(exc)) from None
    if path_target is not None and source_target(req) != path_target:
        raise BadRequestError(
            f"this request restores target {source_target(req)!r}, not {path_target!r}: post it to"
            f" /targets/{source_target(req)}/restores"
        )
    return req
