"""What a caller may ask of the restore API, validated by schema.

Bodies are validated with pydantic (unknown fields rejected); every problem becomes a BadRequestError
listing the fields to fix. The worker reads a job's request back through the same models.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from chalicelib.config import Connection
from chalicelib.errors import BadRequestError

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


RestoreRequest = LogicalRestoreRequest | SnapshotRestoreRequest | PointInTimeRestoreRequest


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {str(err['msg']).removeprefix('Value error, ')}")
    return "; ".join(parts)


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
        raise BadRequestError(describe_validation_error(exc)) from None
