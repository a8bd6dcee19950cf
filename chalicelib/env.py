"""The process environment, parsed once into typed settings: the one module in chalicelib that reads os.environ.

Every variable pg-lifeboat reads is a field of `Env` below (its name, default and meaning). A bad value is a
ConfigError naming the variable. `current()` parses on first use and again only when one of these variables
changes (tests set them; a Lambda container never does); a command line's options go over the environment
through `configured(...)` (chalicelib.wiring.configured). Variables that boto3 and Powertools read themselves
(AWS_DEFAULT_REGION, AWS_ENDPOINT_URL, AWS_CONFIG_FILE, POWERTOOLS_SERVICE_NAME, POWERTOOLS_LOG_LEVEL, ...) are
left to them.

Cheap to import (app.py imports it and parses the environment at cold start): pydantic and the standard library
only. `Env` is a plain pydantic model fed the set variables by name: pydantic-settings did the same for ~70 ms of
import (its settings sources import asyncio, among others) and features pg-lifeboat does not use (.env files,
secrets directories, JSON-decoded values).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from chalicelib.errors import ConfigError

# The Lambda layer's (and the container image's) locations; adapters.pgtools and adapters.postgres use the same.
DEFAULT_PG_ROOTS = (Path("/opt/pg"), Path("/usr/lib/postgresql"))
DEFAULT_CA_BUNDLE = Path("/opt/pg/certs/rds-ca-bundle.pem")
DEFAULT_CONTAINER = "lifeboat"  # chalicelib.fargate.DEFAULT_CONTAINER, stack/names.py TASK_CONTAINER


def _var(default: Any, name: str, description: str) -> Any:
    # The alias is the variable's name: VARIABLES maps it to the field, and `load` passes values by field name.
    return Field(default, validation_alias=name, description=description)


class Env(BaseModel):
    """The variables pg-lifeboat reads (by their exact names). An empty value counts as unset (`load`)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_default=True, validate_by_name=True, validate_by_alias=False
    )

    # --- what to back up, and where the jobs go
    config: str = _var("", "LIFEBOAT_CONFIG", "the configuration: a JSON/TOML file path, or ssm:/parameter/path")
    jobs_table: str | None = _var(
        None, "LIFEBOAT_JOBS_TABLE", "DynamoDB table of run claims, restore jobs and the dispatch cursor"
    )
    backup_queue_url: str | None = _var(
        None,
        "LIFEBOAT_BACKUP_QUEUE_URL",
        "URL of the SQS queue the dispatcher and POST /backups fill; unset: LIFEBOAT_BACKUP_QUEUE's, if set",
    )
    restore_queue_url: str | None = _var(
        None, "LIFEBOAT_RESTORE_QUEUE_URL", "URL of the SQS queue of restore jobs; unset: LIFEBOAT_RESTORE_QUEUE's"
    )
    backup_queue: str = _var(
        "pg-lifeboat-backups.fifo", "LIFEBOAT_BACKUP_QUEUE", "name of the queue the backup worker reads (app.py)"
    )
    restore_queue: str = _var(
        "pg-lifeboat-restores", "LIFEBOAT_RESTORE_QUEUE", "name of the queue the restore worker reads (app.py)"
    )

    # --- PostgreSQL client programs and TLS
    pg_roots: tuple[Path, ...] = _var(
        DEFAULT_PG_ROOTS, "LIFEBOAT_PG_ROOTS", f"'{os.pathsep}'-separated roots holding <major>/bin/pg_dump"
    )
    ca_bundle: Path = _var(
        DEFAULT_CA_BUNDLE, "LIFEBOAT_CA_BUNDLE", "CA bundle for sslmode verify-ca/verify-full (the layer's RDS CAs)"
    )

    # --- the long-running worker (chalicelib.fargate); without a cluster every run stays on Lambda
    fargate_cluster: str | None = _var(None, "LIFEBOAT_FARGATE_CLUSTER", "ECS cluster the Fargate tasks run in")
    fargate_task_definition: str | None = _var(
        None, "LIFEBOAT_FARGATE_TASK_DEFINITION", "task definition ARN of the Fargate worker"
    )
    fargate_subnets: tuple[str, ...] = _var(
        (), "LIFEBOAT_FARGATE_SUBNETS", "comma-separated subnet ids of the tasks (needed with a cluster)"
    )
    fargate_security_groups: tuple[str, ...] = _var(
        (), "LIFEBOAT_FARGATE_SECURITY_GROUPS", "comma-separated security group ids of the tasks"
    )
    fargate_container: str = _var(
        DEFAULT_CONTAINER, "LIFEBOAT_FARGATE_CONTAINER", "the task definition's container to override"
    )
    fargate_assign_public_ip: bool = _var(
        False, "LIFEBOAT_FARGATE_ASSIGN_PUBLIC_IP", "ENABLED or DISABLED (default: private subnets)"
    )

    # --- AWS and Powertools
    aws_region: str | None = _var(
        None, "AWS_REGION", "region of the clients (Lambda sets it); else the SDK's chain (AWS_DEFAULT_REGION, profile)"
    )
    aws_profile: str | None = _var(
        None, "AWS_PROFILE", "the AWS profile every client uses (credentials, and the region when none is set)"
    )
    metrics_namespace: str = _var("PgLifeboat", "POWERTOOLS_METRICS_NAMESPACE", "CloudWatch namespace of the metrics")
    metrics_disabled: bool | None = _var(
        None, "POWERTOOLS_METRICS_DISABLED", "true: emit no metrics (unset: on, except with POWERTOOLS_DEV)"
    )
    powertools_dev: bool = _var(False, "POWERTOOLS_DEV", "Powertools' development mode: metrics off unless asked")
    trace_disabled: bool = _var(False, "POWERTOOLS_TRACE_DISABLED", "true: no X-Ray subsegments even where traced")

    @field_validator("fargate_subnets", "fargate_security_groups", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return tuple(part.strip() for part in value.split(",") if part.strip()) if isinstance(value, str) else value

    @field_validator("pg_roots", mode="before")
    @classmethod
    def _path_list(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        roots = tuple(part for part in value.split(os.pathsep) if part.strip())
        if not roots:
            raise ValueError("names no directory")
        return roots

    @field_validator("fargate_assign_public_ip", mode="before")
    @classmethod
    def _enabled(cls, value: object) -> object:
        words = {"ENABLED": True, "DISABLED": False}
        return words.get(value.strip().upper(), value) if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _queue_url_by_name(cls, data: object) -> object:
        """`chalice deploy` stages set the queue names only (.chalice/config.json): a queue given by name and
        not by URL is addressed by its name, which adapters.sqs resolves (GetQueueUrl)."""
        if not isinstance(data, dict):
            return data
        for url_field, name_field in (("backup_queue_url", "backup_queue"), ("restore_queue_url", "restore_queue")):
            if not data.get(url_field) and data.get(name_field):
                data = {**data, url_field: data[name_field]}
        return data

    @model_validator(mode="after")
    def _fargate_complete(self) -> Env:
        if self.fargate_cluster and not self.fargate_task_definition:
            raise ValueError(
                "LIFEBOAT_FARGATE_TASK_DEFINITION is empty but LIFEBOAT_FARGATE_CLUSTER is set: set both (the"
                " stack passes the task definition's ARN) or neither"
            )
        if self.fargate_cluster and not self.fargate_subnets:
            raise ValueError(
                "LIFEBOAT_FARGATE_SUBNETS is empty but LIFEBOAT_FARGATE_CLUSTER is set: a Fargate task runs in"
                " subnets (the stack passes the functions' SubnetIds)"
            )
        return self

    @property
    def fargate(self) -> bool:
        """Whether long runs may be delegated to Fargate."""
        return bool(self.fargate_cluster and self.fargate_task_definition)

    @property
    def metrics_off(self) -> bool:
        """Powertools' rule: off when POWERTOOLS_METRICS_DISABLED is true, or unset under POWERTOOLS_DEV."""
        return self.metrics_disabled if self.metrics_disabled is not None else self.powertools_dev


VARIABLES: dict[str, str] = {str(f.validation_alias): name for name, f in Env.model_fields.items()}
"""Variable name → field name, for every variable Env reads."""

# A deployed stack's outputs (stack/template/outputs.py) → the settings they stand for (`lifeboat --stack NAME`).
STACK_OUTPUTS: dict[str, str] = {
    "SettingsParameter": "config",  # <config path>/settings: LIFEBOAT_CONFIG=ssm:<config path>
    "JobsTableName": "jobs_table",
    "BackupQueueUrl": "backup_queue_url",
    "RestoreQueueUrl": "restore_queue_url",
}
SETTINGS_SUFFIX = "/settings"


def settings_from_stack(stack: str, outputs: Mapping[str, str]) -> dict[str, str]:
    """The settings (field name → value) a stack's outputs give; a ConfigError names any output it lacks."""
    missing = sorted(name for name in STACK_OUTPUTS if not outputs.get(name))
    if missing:
        raise ConfigError(
            f"stack {stack!r} has no output {', '.join(missing)}: is it a pg-lifeboat stack"
            " (stack/README.md), and is its deployment complete?"
        )
    found = {field: outputs[name] for name, field in STACK_OUTPUTS.items()}
    found["config"] = "ssm:" + found["config"].removesuffix(SETTINGS_SUFFIX)
    return found


def load(overrides: Mapping[str, Any] | None = None, fallbacks: Mapping[str, Any] | None = None) -> Env:
    """Parse the environment now. `overrides` (by field name) win over it; `fallbacks` apply where it is unset."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    environment = {field: value for name, field in VARIABLES.items() if (value := os.environ.get(name))}
    try:
        env = Env.model_validate({**environment, **given})
    except ValidationError as exc:
        raise ConfigError(f"bad environment: {_describe(exc)}") from None
    unset = {k: v for k, v in (fallbacks or {}).items() if v is not None and k not in env.model_fields_set}
    return env.model_copy(update=unset) if unset else env


def _describe(exc: ValidationError) -> str:
    names = {field: var for var, field in VARIABLES.items()}
    parts = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        if not err["loc"]:  # a check across variables: its message names them
            parts.append(msg)
            continue
        where = str(err["loc"][0])
        parts.append(f"{names.get(where, where)}={err['input']!r}: {msg}")
    return "; ".join(parts)


class _State:
    """The parsed settings, and the command line's options over the environment (one per process)."""

    def __init__(self) -> None:
        self.options: dict[str, Any] = {}
        self.fallbacks: dict[str, Any] = {}
        self.generation = 0  # bumped when the options change
        self.parsed: tuple[tuple[object, ...], Env] | None = None


_state = _State()


def current() -> Env:
    """The settings, parsed once per distinct environment (and command line options)."""
    key = (_state.generation, *(os.environ.get(name) for name in VARIABLES))
    if _state.parsed is None or _state.parsed[0] != key:
        _state.parsed = (key, load(_state.options, _state.fallbacks))
    return _state.parsed[1]


@contextmanager
def configured(options: Mapping[str, Any], fallbacks: Mapping[str, Any] | None = None) -> Iterator[Env]:
    """Within the block, `options` (field name → value; None: keep the environment's) win over the environment
    and `fallbacks` stand in for unset variables. The settings are parsed on entering, so bad ones raise here."""
    saved = dict(_state.options), dict(_state.fallbacks)
    _state.options.update({k: v for k, v in options.items() if v is not None})
    _state.fallbacks.update({k: v for k, v in (fallbacks or {}).items() if v is not None})
    _state.generation += 1
    try:
        yield current()
    finally:
        _state.options, _state.fallbacks = saved
        _state.generation += 1


def reset() -> None:
    """Forget the parsed settings and any command line options (tests)."""
    _state.options.clear()
    _state.fallbacks.clear()
    _state.parsed = None
    _state.generation += 1


def lambda_trace_id() -> str | None:
    """_X_AMZN_TRACE_ID: Lambda sets it for each invocation (only where tracing is on), so it is read each time."""
    return os.environ.get("_X_AMZN_TRACE_ID") or None


def inherited(names: Iterable[str]) -> dict[str, str]:
    """The named variables as this process has them now, for a child process's environment."""
    return {name: os.environ[name] for name in names if name in os.environ}
