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

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from chalicelib.adapters.upload_memory import UploadMemoryMib
from chalicelib.drills.settings import Drill, drill_problem
from chalicelib.errors import ConfigError, NotFoundError
from chalicelib.pitr.settings import Wal
from chalicelib.scheduling.schedules import Schedule, ScheduleSyntaxError

TARGET_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
# The bucket's key folders (stack.capabilities.RESERVED_NAMES): no target and no segment of the prefix may be one, so
# that one folder's keys never fall under another's in the IAM patterns (WAL of a target `logical` under `*/logical/*`);
# nor may a target end in `drills` (the sweeper's evidence pattern `*drills/*_d-*.json` has no `/` before it).
RESERVED_NAMES = ("logical", "failed", "drills", "snapshots", "wal", "base", "check")
# Real S3 bucket naming rules (moto accepts far more).
BUCKET_NAME = re.compile(r"^(?!xn--)(?!sthree-)(?!.*-s3alias$)(?!.*--ol-s3$)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
POLICY_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
COMPRESSION = re.compile(r"^(none|gzip|lz4|zstd)(:(\d+|long))?$")
SSLModes = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)  # schemas built on first use (cold start)


class Connection(_Model):
    host: str = Field(min_length=1)
    port: int = Field(default=5432, ge=1, le=65535)
    database: str = Field(default="postgres", min_length=1)
    user: str = Field(min_length=1)
    password_secret: str | None = Field(
        default=None, description="Secrets Manager ARN or name: a plain string, or JSON with a 'password' key"
    )
    iam_auth: bool = Field(default=False, description="log in with an RDS IAM authentication token")
    # verify-full by default: `require` encrypts but checks no certificate, so anyone in the middle reads the data
    # and, with a stored password, chooses the SCRAM work factor (README, "Passwords on the wire").
    sslmode: SSLModes = "verify-full"
    sslrootcert: str | None = Field(
        default=None, description="CA of the server's certificate; default: the RDS CA bundle in the layer"
    )
    connect_timeout: int = Field(default=10, ge=1, le=300)
    # Restores get their own login: the backup login should be read-only (pg_read_all_data), the restore
    # login needs CREATEDB and owns what it restores. Without restore_user, restores use the backup login.
    restore_user: str | None = Field(default=None, min_length=1, description="the login restores use")
    restore_password_secret: str | None = Field(default=None, description="restore_user's password secret")
    restore_iam_auth: bool = Field(default=False, description="restore_user logs in with an RDS IAM token")
    # A stored password is sent only with require_auth=scram-sha-256 and channel_binding=require (libpq), so a
    # server that asks for a cleartext or md5 password, or sits between us and the real one, gets nothing.
    weak_auth: bool = Field(
        default=False,
        description="opt out: send stored passwords by whatever method the"
        " server asks (md5, cleartext); logged on every login",
    )
    weak_tls: bool = Field(
        default=False,
        description="opt out: allow sslmode require with a stored password; the server's certificate is not"
        " checked, so a machine in the middle sees the data and chooses the SCRAM work factor (use a long"
        " random password); logged on every login",
    )

    @model_validator(mode="after")
    def _one_credential(self) -> Self:
        if self.password_secret and self.iam_auth:
            raise ValueError("set either password_secret or iam_auth, not both")
        if self.restore_password_secret and self.restore_iam_auth:
            raise ValueError("set either restore_password_secret or restore_iam_auth, not both")
        if (self.restore_password_secret or self.restore_iam_auth) and not self.restore_user:
            raise ValueError("restore_password_secret and restore_iam_auth need restore_user (the login they are for)")
        return self

    @model_validator(mode="after")
    def _verified_tls(self) -> Self:
        verified = self.sslmode in ("verify-ca", "verify-full")
        if (self.iam_auth or self.restore_iam_auth) and not verified:
            raise ValueError(
                f"iam_auth needs sslmode verify-full or verify-ca, not {self.sslmode!r}: the token goes as a"
                " cleartext password (RDS asks for it so), and only a checked server certificate keeps it from"
                " a machine in the middle; use verify-full (the default) with sslrootcert unset (the layer's"
                " RDS CA bundle) or set to your server's CA"
            )
        stored = bool(self.password_secret or self.restore_password_secret)
        if stored and self.sslmode in ("disable", "allow", "prefer") and not self.weak_auth:
            raise ValueError(
                f"sslmode {self.sslmode!r} with a stored password: passwords are sent only with SCRAM"
                " channel binding, which needs TLS; use sslmode verify-full (the default), or set"
                " weak_auth: true to send the password without that protection"
            )
        if stored and self.sslmode == "require" and not (self.weak_tls or self.weak_auth):
            raise ValueError(
                "sslmode 'require' with a stored password: require checks no certificate, so a machine in the"
                " middle reads the data and chooses the SCRAM work factor to crack the password offline; use"
                " sslmode verify-full (the default) with sslrootcert set to your server's CA (unset: the"
                " layer's RDS CA bundle), or set weak_tls: true to accept that (with a long random password)"
            )
        if self.weak_tls and self.sslmode != "require":
            raise ValueError(f"weak_tls only allows sslmode 'require'; with {self.sslmode!r} remove it")
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
    row_counts_mode: Literal["serial", "parallel"] = "parallel"  # beside or before pg_dump (README, Consistent counts)
    # Where the dump (and a logical restore of it) runs: chalicelib.fargate decides "auto".
    runner: Literal["auto", "lambda", "fargate"] = Field(
        default="auto",
        description="auto: Lambda unless the last run or the database size predicts it will not fit;"
        " fargate: a large database, always the ECS Fargate task; lambda: never delegate",
    )

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


class PhysicalRestore(_Model):
    """What a snapshot or point-in-time restore of this target may ask for. Anything else is refused (403);
    an empty list allows only the AWS default (the parameter is not sent). A request that leaves out a subnet
    group, security groups or (EBS) availability zone gets the first listed one (none listed: AWS's default,
    and for EBS any zone)."""

    instance_classes: list[str] = Field(default_factory=list, description="RDS/Aurora instance classes")
    subnet_groups: list[str] = Field(default_factory=list, description="DB subnet groups")
    security_group_ids: list[str] = Field(default_factory=list, description="VPC security groups")
    parameter_groups: list[str] = Field(default_factory=list, description="DB (or DB cluster) parameter groups")
    attach_to_instances: list[str] = Field(
        default_factory=list,
        description="EC2 instances restored EBS volumes"
        " may be attached to (each also needs the tag lifeboat:restore-target=true)",
    )
    availability_zones: list[str] = Field(
        default_factory=list, description="EBS: availability zones the new volumes may go to (empty: any)"
    )


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
    restore: PhysicalRestore = Field(default_factory=PhysicalRestore)

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
    keep_last: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="the newest this many complete backups (logical"
        " backups and snapshots) never expire, whatever their class",
    )
    ondemand_days: int | None = Field(
        default=None,
        ge=1,
        le=36500,
        description="on-demand logical backups (trigger other than schedule); default: daily_days",
    )


class Target(_Model):
    name: str
    connection: Connection | None = None
    logical: Logical | None = None
    physical: Physical | None = None
    retention: str = "default"
    tags: dict[str, str] = Field(default_factory=dict)
    restore_into: list[str] = Field(
        default_factory=list,
        description="other targets this target's backups may be restored into (the target itself always may)",
    )
    max_running_restores: int = Field(default=2, ge=1, le=100, description="PENDING + RUNNING restores into it")
    wal: Wal | None = Field(default=None, description="WAL stream and base backups (chalicelib.pitr.settings)")
    drill: Drill | None = Field(default=None, description="restore drills (chalicelib.drills.settings)")

    @model_validator(mode="after")
    def _needs(self) -> Self:
        if self.wal is not None and self.connection is None:
            raise ValueError("wal streaming needs a connection (a login with the REPLICATION attribute)")
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
        if value in RESERVED_NAMES or value.endswith("drills"):
            raise ValueError(
                f"{value!r}: a target may not be named {', '.join(RESERVED_NAMES)} (the bucket's key folders, which the"
                f" stack's IAM tells apart by name) nor end in 'drills'; rename it, e.g. {value + '-db'!r}"
            )
        return value


class Settings(_Model):
    bucket: str
    prefix: str = Field(default="", description="key prefix inside the bucket, e.g. 'pg/'")
    kms_key_id: str | None = Field(default=None, description="SSE-KMS key; SSE-S3 when unset")
    # S3 Object Lock: when a manifest makes a backup complete, its objects are locked in this mode until its
    # retention class ends (chalicelib.logical.protect). The bucket must have Object Lock enabled (the stack's
    # SettingsJson output sets this from ObjectLockMode); None: nothing is locked.
    object_lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] | None = None
    # EBS snapshot lock (chalicelib.physical.protect): the sweep locks each managed EBS snapshot it sees complete,
    # in this mode, for its retention. None: object_lock_mode's mode (the stack's default: GOVERNANCE); NONE: no lock.
    # RDS and Aurora snapshots have no lock: IAM protects them (only the pruner deletes, managed snapshots only).
    snapshot_lock_mode: Literal["GOVERNANCE", "COMPLIANCE", "NONE"] | None = None
    # A second AWS account (the vault): every managed snapshot, and its cross-region copy, is shared with it once
    # available (EBS createVolumePermission, RDS restore attribute). None: nothing is shared.
    vault_account_id: str | None = Field(
        default=None, description="12-digit AWS account id every managed snapshot is shared with"
    )
    # Signed manifests (chalicelib.logical.signing): a KMS HMAC_256 key (ARN, id or alias/...) that signs every
    # manifest at write and is checked by every restore and `lifeboat verify`; None: not signed, not checked.
    signing_key_id: str | None = Field(default=None, description="KMS HMAC_256 key signing manifests")
    # Migration: an unsigned manifest (written before signing) is believed only when it was finished and stored
    # before this time; unset: no unsigned manifest is believed once signing_key_id is set.
    accept_unsigned_before: AwareDatetime | None = None
    retention_policies: dict[str, RetentionPolicy] = Field(default_factory=lambda: {"default": RetentionPolicy()})
    # 6 MiB is the smallest first part whose growing plan could reach S3's 5 TiB (growth stops at half the budget).
    part_size_mib: int = Field(default=8, ge=6, le=512)
    upload_concurrency: int = Field(default=4, ge=1, le=32)
    upload_memory_mib: UploadMemoryMib = Field(default=56, ge=16, le=4096)  # two parts: adapters.upload_memory
    deadline_margin_seconds: int = Field(default=60, ge=5, le=600)
    dispatch_lookback_minutes: int = Field(default=5, ge=1, le=1440)
    per_server_concurrency: int = Field(default=2, ge=1, le=50, description="concurrent dumps per server")
    metrics_namespace: str = "PgLifeboat"
    max_running_restores: int = Field(
        default=10, ge=1, le=1000, description="PENDING + RUNNING restores, all targets together"
    )
    # Beyond Lambda (chalicelib.fargate): a run predicted to need more than fargate_share of the workers'
    # Lambda timeout goes to the ECS Fargate task instead.
    lambda_timeout_seconds: int = Field(
        default=900, ge=60, le=900, description="the backup and restore workers' Lambda timeout (.chalice/config.json)"
    )
    fargate_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="share of lambda_timeout_seconds above which"
        " the last run's duration (or the predicted one) sends a run to Fargate",
    )
    fargate_bytes_per_second: int = Field(
        default=20_000_000,
        ge=100_000,
        description="pg_database_size bytes a Lambda dumps per second: predicts the duration of a target's first run",
    )
    lambda_ephemeral_storage_mib: int = Field(
        default=512,
        ge=512,
        le=10240,
        description="the restore worker's /tmp: a parallel restore of a larger archive goes to Fargate",
    )

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not BUCKET_NAME.fullmatch(value) or ".." in value or re.fullmatch(r"\d+\.\d+\.\d+\.\d+", value):
            raise ValueError(f"{value!r} is not a valid S3 bucket name (3-63 lowercase letters, digits, '.', '-')")
        return value

    @field_validator("vault_account_id")
    @classmethod
    def _vault_account(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d{12}", value):
            raise ValueError(f"vault_account_id {value!r}: an AWS account id is exactly 12 digits, e.g. '123456789012'")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value and (not value.endswith("/") or value.startswith("/") or "//" in value):
            raise ValueError(f"{value!r}: a prefix ends with '/' and does not start with one, e.g. 'pg/'")
        if clash := [segment for segment in value.split("/") if segment in RESERVED_NAMES]:
            raise ValueError(
                f"{value!r}: {clash[0]!r} is one of the bucket's key folders ({', '.join(RESERVED_NAMES)}), which the"
                " stack's IAM tells apart by name; choose another prefix, e.g. 'pg/'"
            )
        return value

    @model_validator(mode="after")
    def _default_policy(self) -> Self:
        if "default" not in self.retention_policies:
            raise ValueError("retention_policies needs a 'default' policy")
        for name in self.retention_policies:
            if not POLICY_NAME.fullmatch(name):
                raise ValueError(
                    f"retention policy {name!r}: use 1-40 lowercase letters, digits and hyphens"
                    " (it becomes an S3 tag value and part of lifecycle rule ids)"
                )
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
        by_name = {t.name: t for t in self.targets}
        for target in self.targets:
            for name in target.restore_into:
                if name not in by_name:
                    raise ValueError(f"target {target.name!r}: restore_into names {name!r}, which is not a target")
                if by_name[name].connection is None:
                    raise ValueError(
                        f"target {target.name!r}: restore_into names {name!r}, which has no connection to restore into"
                    )
            if problem := drill_problem(target, by_name):
                raise ValueError(problem)
        return self

    def target(self, name: str) -> Target:
        for target in self.targets:
            if target.name == name:
                return target
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
    # Powertools Parameters (and boto3 under it) load only when the configuration lives in SSM: a file needs neither.
    from aws_lambda_powertools.utilities import parameters
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

    # ssm_client: a boto3 SSM client, or an SSMProvider (chalicelib.wiring keeps one, so its cache outlives a call)
    provider = ssm_client if isinstance(ssm_client, parameters.SSMProvider) else None
    provider = provider or (parameters.SSMProvider(boto3_client=ssm_client) if ssm_client else None)
    base = path.rstrip("/")
    try:
        if provider:
            settings_raw = provider.get(f"{base}/settings", max_age=max_age, decrypt=True)
            targets_raw = provider.get_multiple(f"{base}/targets", max_age=max_age, decrypt=True, recursive=True)
        else:
            settings_raw = parameters.get_parameter(f"{base}/settings", max_age=max_age, decrypt=True)
            targets_raw = parameters.get_parameters(f"{base}/targets", max_age=max_age, decrypt=True, recursive=True)
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
