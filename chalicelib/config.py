"""Targets and settings: loaded and validated once, at the edge, into typed objects.

Sources: a JSON or TOML file (local use, `LIFEBOAT_CONFIG=path`), or SSM Parameter Store
(`LIFEBOAT_CONFIG=ssm:/pg-lifeboat`): `<path>/settings` holds the settings and every parameter under
`<path>/targets/` holds one target, so a fleet of a thousand targets does not hit the 8 KB limit of a
single parameter. Any error names the target and the field to fix.
"""

from __future__ import annotations

import contextlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from chalicelib.errors import ConfigError
from chalicelib.scheduling.schedules import Schedule, ScheduleSyntaxError

TARGET_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
# Real S3 bucket naming rules (moto accepts far more).
BUCKET_NAME = re.compile(r"^(?!xn--)(?!sthree-)(?!.*-s3alias$)(?!.*--ol-s3$)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
POLICY_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
COMPRESSION = re.compile(r"^(none|gzip|lz4|zstd)(:(\d+|long))?$")
SSLModes = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Connection(_Model):
    host: str = Field(min_length=1)
    port: int = Field(default=5432, ge=1, le=65535)
    database: str = Field(default="postgres", min_length=1)
    user: str = Field(min_length=1)
    password_secret: str | None = Field(
        default=None, description="Secrets Manager ARN or name: a plain string, or JSON with a 'password' key"
    )
    iam_auth: bool = Field(default=False, description="log in with an RDS IAM authentication token")
    sslmode: SSLModes = "require"
    sslrootcert: str | None = Field(default=None, description="CA bundle; default: the RDS bundle in the layer")
    connect_timeout: int = Field(default=10, ge=1, le=300)

    @model_validator(mode="after")
    def _one_credential(self) -> Self:
        if self.password_secret and self.iam_auth:
            raise ValueError("set either password_secret or iam_auth, not both")
        if self.iam_auth and self.sslmode in ("disable", "allow", "prefer"):
            raise ValueError("iam_auth needs sslmode require or stricter (RDS refuses tokens without TLS)")
        return self


class Logical(_Model):
    schedule: str | None = None
    format: Literal["custom", "directory"] = "custom"
    jobs: int = Field(default=1, ge=1, le=16, description="directory format: parallel pg_dump workers")
    compression: str = "zstd:1"  # from BENCHMARKS.md: never the bottleneck, archives within a few % of zstd:3
    schemas: list[str] = Field(default_factory=list)
    exclude_schemas: list[str] = Field(default_factory=list)
    tables: list[str] = Field(default_factory=list)
    exclude_tables: list[str] = Field(default_factory=list)
    globals: bool = Field(default=False, description="also pg_dumpall --globals-only --no-role-passwords")
    all_databases: bool = Field(default=False, description="every database of the server, each its own backup")
    exclude_databases: list[str] = Field(default_factory=list)
    lock_wait_timeout_seconds: int = Field(default=60, ge=1, le=3600)
    row_counts: bool = Field(default=True, description="exact per-table counts from the dump's snapshot")
    # Where the dump (and a logical restore of it) runs: chalicelib.fargate decides "auto".
    runner: Literal["auto", "lambda", "fargate"] = Field(
        default="auto", description="auto: Lambda unless the last run or the database size predicts it will not fit;"
                                    " fargate: a large database, always the ECS Fargate task; lambda: never delegate")

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                Schedule.parse(value)
            except ScheduleSyntaxError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("compression")
    @classmethod
    def _compression(cls, value: str) -> str:
        m = COMPRESSION.fullmatch(value)
        if not m:
            raise ValueError(f"{value!r}: use none, gzip[:1-9], lz4[:1-12] or zstd[:1-22|long]")
        method, level = m.group(1), m.group(3)
        limits = {"gzip": 9, "lz4": 12, "zstd": 22, "none": 0}
        if level == "long" and method != "zstd":
            raise ValueError(f"{value!r}: 'long' is a zstd option")
        if level and method == "none":
            raise ValueError(f"{value!r}: 'none' takes no level")
        # pg_dump 16+ rejects level 0 ("expects a compression level between 1 and 9")
        if level and level != "long" and not 1 <= int(level) <= limits[method]:
            raise ValueError(f"{value!r}: {method} levels run from 1 to {limits[method]}")
        return value

    @model_validator(mode="after")
    def _jobs_need_directory(self) -> Self:
        if self.jobs > 1 and self.format != "directory":
            raise ValueError("jobs > 1 needs format 'directory' (pg_dump -j writes only that format)")
        return self

    @property
    def compression_method(self) -> str:
        return self.compression.split(":", 1)[0]


class Physical(_Model):
    """Snapshots: an RDS instance, an Aurora cluster, or the EBS volumes of PostgreSQL on EC2."""

    method: Literal["rds_instance", "aurora_cluster", "ebs"]
    schedule: str | None = None
    db_instance_id: str | None = None
    db_cluster_id: str | None = None
    ec2_instance_id: str | None = None
    volume_ids: list[str] = Field(default_factory=list)
    exclude_boot_volume: bool = True
    app_consistent: bool = Field(default=False, description="ebs: bracket with pg_backup_start/pg_backup_stop")
    region: str | None = Field(default=None, description="region of the source; default: the function's")
    copy_to_region: str | None = None
    copy_kms_key_id: str | None = Field(default=None, description="destination-region KMS key for the copy")

    _schedule = field_validator("schedule")(Logical._schedule.__func__)  # type: ignore[attr-defined]

    @model_validator(mode="after")
    def _source(self) -> Self:
        if self.method == "rds_instance" and not self.db_instance_id:
            raise ValueError("method rds_instance needs db_instance_id")
        if self.method == "aurora_cluster" and not self.db_cluster_id:
            raise ValueError("method aurora_cluster needs db_cluster_id")
        if self.method == "ebs" and not (self.ec2_instance_id or self.volume_ids):
            raise ValueError("method ebs needs ec2_instance_id or volume_ids")
        if self.copy_to_region and self.copy_to_region == self.region:
            raise ValueError("copy_to_region must differ from the source region")
        return self


class RetentionPolicy(_Model):
    """Grandfather-father-son: how long each class of backup is kept. 0 disables a class."""

    daily_days: int = Field(default=7, ge=1, le=3650)
    weekly_weeks: int = Field(default=5, ge=0, le=520)
    monthly_months: int = Field(default=12, ge=0, le=1200)
    yearly_years: int = Field(default=3, ge=0, le=100)
    keep_last: int = Field(default=1, ge=1, le=1000, description="snapshots: always keep this many")


class Target(_Model):
    name: str
    connection: Connection | None = None
    logical: Logical | None = None
    physical: Physical | None = None
    retention: str = "default"
    tags: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _needs(self) -> Self:
        if self.connection is None:
            if self.logical is not None:
                raise ValueError("logical backups need a connection")
            if self.physical is None:
                raise ValueError("a target needs a connection (logical backups) or a physical section (snapshots)")
            if self.physical.app_consistent:
                raise ValueError("physical.app_consistent needs a connection (for pg_backup_start/stop)")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not TARGET_NAME.fullmatch(value) or len(value) > 48:
            raise ValueError(
                f"{value!r}: use 1-48 lowercase letters, digits and single hyphens, starting with a letter"
            )
        return value


class Settings(_Model):
    bucket: str
    prefix: str = Field(default="", description="key prefix inside the bucket, e.g. 'pg/'")
    kms_key_id: str | None = Field(default=None, description="SSE-KMS key; SSE-S3 when unset")
    retention_policies: dict[str, RetentionPolicy] = Field(default_factory=lambda: {"default": RetentionPolicy()})
    # 6 MiB is the smallest first part whose growing plan still reaches S3's 5 TiB object limit.
    part_size_mib: int = Field(default=8, ge=6, le=512)
    upload_concurrency: int = Field(default=4, ge=1, le=32)
    upload_memory_mib: int = Field(default=64, ge=16, le=4096)
    deadline_margin_seconds: int = Field(default=60, ge=5, le=600)
    dispatch_lookback_minutes: int = Field(default=5, ge=1, le=1440)
    per_server_concurrency: int = Field(default=2, ge=1, le=50, description="concurrent dumps per server")
    metrics_namespace: str = "PgLifeboat"
    # Beyond Lambda (chalicelib.fargate): a run predicted to need more than fargate_share of the workers'
    # Lambda timeout goes to the ECS Fargate task instead.
    lambda_timeout_seconds: int = Field(default=900, ge=60, le=900, description="the backup and restore workers'"
                                        " Lambda timeout (.chalice/config.json)")
    fargate_share: float = Field(default=0.5, gt=0, le=1, description="share of lambda_timeout_seconds above which"
                                 " the last run's duration (or the predicted one) sends a run to Fargate")
    fargate_bytes_per_second: int = Field(default=20_000_000, ge=100_000, description="pg_database_size bytes a"
                                          " Lambda dumps per second: predicts the duration of a target's first run")
    lambda_ephemeral_storage_mib: int = Field(default=512, ge=512, le=10240, description="the restore worker's"
                                              " /tmp: a parallel restore of a larger archive goes to Fargate")

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not BUCKET_NAME.fullmatch(value) or ".." in value or re.fullmatch(r"\d+\.\d+\.\d+\.\d+", value):
            raise ValueError(f"{value!r} is not a valid S3 bucket name (3-63 lowercase letters, digits, '.', '-')")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value and (not value.endswith("/") or value.startswith("/") or "//" in value):
            raise ValueError(f"{value!r}: a prefix ends with '/' and does not start with one, e.g. 'pg/'")
        return value

    @model_validator(mode="after")
    def _default_policy(self) -> Self:
        if "default" not in self.retention_policies:
            raise ValueError("retention_policies needs a 'default' policy")
        for name in self.retention_policies:
            if not POLICY_NAME.fullmatch(name):
                raise ValueError(f"retention policy {name!r}: use 1-40 lowercase letters, digits and hyphens"
                                 " (it becomes an S3 tag value and part of lifecycle rule ids)")
        return self


class Config(_Model):
    settings: Settings
    targets: list[Target] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        seen: set[str] = set()
        for target in self.targets:
            if target.name in seen:
                raise ValueError(f"target {target.name!r} is defined twice")
            seen.add(target.name)
            if target.retention not in self.settings.retention_policies:
                raise ValueError(
                    f"target {target.name!r}: retention policy {target.retention!r} is not in"
                    f" settings.retention_policies ({', '.join(sorted(self.settings.retention_policies))})"
                )
        return self

    def target(self, name: str) -> Target:
        for target in self.targets:
            if target.name == name:
                return target
        from chalicelib.errors import NotFoundError

        known = ", ".join(t.name for t in self.targets[:20]) or "none configured"
        raise NotFoundError(f"unknown target {name!r} (known: {known})")

    def policy_for(self, target: Target) -> RetentionPolicy:
        return self.settings.retention_policies[target.retention]


def parse_config(data: Any, source: str = "configuration") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source} is invalid:\n" + _describe(exc, data)) from None


def _describe(exc: ValidationError, data: Any) -> str:
    """One line per problem, naming the target (not its index) and the dotted field path."""
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = list(err["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "targets" and isinstance(loc[1], int):
            name = None
            with contextlib.suppress(KeyError, IndexError, TypeError, AttributeError):
                name = data["targets"][loc[1]].get("name")
            where = f"target {name!r}" if name else f"targets[{loc[1]}]"
            loc = loc[2:]
        field = ".".join(str(p) for p in loc)
        message = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"  - {where + ': ' if where else ''}{field or '(whole)'}: {message}")
    return "\n".join(lines)


def load_file(path: str | Path) -> Config:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {p}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode()) if p.suffix == ".toml" else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p} is not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: {exc}") from None
    return parse_config(data, str(p))


def load_ssm(path: str, ssm_client: Any = None, max_age: int = 300) -> Config:
    """Settings from `<path>/settings`, targets from each parameter under `<path>/targets/` (cached)."""
    from aws_lambda_powertools.utilities import parameters
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

    provider = parameters.SSMProvider(boto3_client=ssm_client) if ssm_client else None
    base = path.rstrip("/")
    try:
        if provider:
            settings_raw = provider.get(f"{base}/settings", max_age=max_age, decrypt=True)
            targets_raw = provider.get_multiple(f"{base}/targets", max_age=max_age, decrypt=True, recursive=True)
        else:
            settings_raw = parameters.get_parameter(f"{base}/settings", max_age=max_age, decrypt=True)
            targets_raw = parameters.get_parameters(f"{base}/targets", max_age=max_age, decrypt=True,
                                                    recursive=True)
    except GetParameterError as exc:
        raise ConfigError(f"cannot read the configuration from SSM {base}: {exc}") from None
    try:
        settings = json.loads(str(settings_raw))
        targets = [json.loads(str(targets_raw[key])) for key in sorted(targets_raw)]
    except ValueError as exc:
        raise ConfigError(f"a parameter under {base} is not valid JSON: {exc}") from None
    return parse_config({"settings": settings, "targets": targets}, f"SSM {base}")


def load(source: str, ssm_client: Any = None) -> Config:
    if not source:
        raise ConfigError("LIFEBOAT_CONFIG is not set: point it at a JSON/TOML file or at ssm:/parameter/path")
    if source.startswith("ssm:"):
        return load_ssm(source.removeprefix("ssm:"), ssm_client)
    return load_file(source)
