"""What the Chalice app defines, read the way `chalice package` reads it, and what the template takes from
the app's code (chalicelib).

The functions are read from the app itself (the Chalice config and app object, loaded as `chalice package`
loads them), so a function added to app.py is patched without editing the stack; it only needs its line in
stack/policies.py ACCESS.

SQS: Chalice builds each SQS event source ARN from the queue *name* app.py computed at import time
(os.environ LIFEBOAT_BACKUP_QUEUE / LIFEBOAT_RESTORE_QUEUE, which Chalice sets from the stage's
environment_variables before importing app.py). The stack names its queues per stage
(pg-lifeboat-<stage>-backups, ...) so that stages can share an account, and packaging passes those
names as environment overrides (queue_environment below; Chalice's highest-priority config layer),
so app.py, Chalice's event source ARN and the stack's queue agree by construction. The merge cannot
swap the ARN for a Fn::GetAtt instead: a deep merge of {"Fn::GetAtt"} into {"Fn::Sub"} yields one
invalid dict with both keys. Every function's environment refers to every queue, so the queues exist
before any event source mapping (functions.py).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stack import names
from stack.template.intrinsics import Json, camel, ref

REPO = Path(__file__).resolve().parents[2]
QUEUE_LOGICAL = {"backups": "Backup", "restores": "Restore"}  # queue kind -> logical id stem


@dataclass
class Function:
    name: str  # Chalice's function name (the key of lambda_functions in config.json)
    timeout: int
    layers: list[Any]
    manage_role: bool
    sqs: list[str] = field(default_factory=list)  # kinds of the queues it consumes
    schedule_seconds: int | None = None  # seconds between runs of a scheduled function (cron: a day)

    @property
    def logical_id(self) -> str:
        return "APIHandler" if self.name == "api_handler" else camel(self.name)

    @property
    def role_id(self) -> str:
        return camel(f"{self.name}_role")


@dataclass
class AppModel:
    stage: str
    functions: list[Function]
    metrics_namespace: str
    # The functions' environment from .chalice/config.json (stage included): the Fargate task gets it too.
    environment: dict[str, str] = field(default_factory=dict)

    def consumers(self, kind: str) -> list[Function]:
        return [f for f in self.functions if kind in f.sqs]


def queue_environment(stage: str) -> dict[str, str]:
    """The queue names app.py reads at import time, set to the stack's names for the stage."""
    return {f"LIFEBOAT_{QUEUE_LOGICAL[kind].upper()}_QUEUE": names.queue(stage, kind) for kind in names.QUEUE_KINDS}


def chalice_params(stage: str, arch: str | None = None) -> dict[str, Any]:
    """User-provided parameters (the top of Chalice's config lookup) for packaging a stage."""
    params: dict[str, Any] = {"environment_variables": queue_environment(stage)}
    if arch:
        params["lambda_architecture"] = arch
    return params


def schedule_seconds(expression: Any) -> int:
    """Seconds between runs: exact for rate(), a day for cron() (the alarms only need the order of size)."""
    from chalice.app import Rate

    units = {"MINUTE": 60, "HOUR": 3600, "DAY": 86400}
    if isinstance(expression, Rate):
        return int(expression.value) * units[expression.unit.upper().rstrip("S")]
    m = re.fullmatch(r"rate\((\d+) (minute|hour|day)s?\)", str(expression).strip())
    return int(m.group(1)) * units[m.group(2).upper()] if m else 86400


def queue_kind(queue: str, stage: str) -> str:
    """Which stack queue an app queue name is."""
    for kind in names.QUEUE_KINDS:
        if queue == names.queue(stage, kind):
            return kind
    raise SystemExit(
        f"build_template: the app consumes SQS queue {queue!r}, which the stack does not create"
        f" (it creates {', '.join(names.queue(stage, k) for k in names.QUEUE_KINDS)}): read the queue"
        " name from one of the variables of queue_environment(), or add a kind to stack/names.py"
    )


def _function(config: Any, stage: str, name: str) -> Function:
    """One function's timeout, layers and role handling, from the Chalice config scoped to it."""
    scoped = config.scope(stage, name)
    layers: list[Any] = list(scoped.layers or [])
    if scoped.automatic_layer:
        layers.insert(0, ref("ManagedLayer"))
    return Function(
        name=name,
        timeout=int(scoped.lambda_timeout or 60),
        layers=layers,
        manage_role=bool(scoped.manage_iam_role),
    )


def load_app(stage: str) -> AppModel:
    """Read functions, timeouts, layers and SQS sources the way `chalice package` will."""
    from chalice import app as chalice_app
    from chalice.cli.factory import CLIFactory

    # environ=os.environ as the `chalice` command does: the stage's variables are set before app.py is imported.
    factory = CLIFactory(project_dir=str(REPO), environ=os.environ)
    config = factory.create_config_obj(chalice_stage_name=stage, user_provided_params=chalice_params(stage))
    app = config.chalice_app  # imports app.py with the stage's environment variables set

    found: dict[str, Function] = {}

    def add(name: str) -> Function:
        if name not in found:
            found[name] = _function(config, stage, name)
        return found[name]

    if app.websocket_handlers:
        raise SystemExit("build_template: websocket handlers are not supported by this stack")
    if app.routes:
        add("api_handler")
    for auth in app.builtin_auth_handlers:
        add(auth.name)
    for lam in app.pure_lambda_functions:
        add(lam.name)
    for source in app.event_sources:
        fn = add(source.name)
        if isinstance(source, chalice_app.SQSEventConfig):
            if not source.queue:
                raise SystemExit(f"build_template: {source.name} consumes a queue given by ARN; use a queue name")
            fn.sqs.append(queue_kind(source.queue, stage))
        elif isinstance(source, chalice_app.ScheduledEventConfig):
            fn.schedule_seconds = schedule_seconds(source.schedule_expression)
    namespace = config.environment_variables.get("POWERTOOLS_METRICS_NAMESPACE", "PgLifeboat")
    return AppModel(
        stage=stage,
        functions=list(found.values()),
        metrics_namespace=namespace,
        environment={k: str(v) for k, v in config.environment_variables.items()},
    )


# --------------------------------------------------------------------------------------------------
# What the template takes from the app's code. Every chalicelib import of stack/template is here, inside
# the function that needs it (chalicelib is imported only when a template is built).


def metrics_service() -> str:
    """The `service` dimension of the app's EMF metrics."""
    from chalicelib.observability import SERVICE

    return SERVICE


def is_target_name(name: str) -> bool:
    """Whether the app accepts `name` as a target's name."""
    from chalicelib.config import TARGET_NAME

    return bool(TARGET_NAME.match(name))


@dataclass(frozen=True)
class RetentionRules:
    """The bucket's lifecycle rules as chalicelib.scheduling.retention.lifecycle_rules writes them (S3 API form)."""

    rules: list[Json]
    prefix: str  # the settings' key prefix in the bucket
    retention_tag: str  # the tag holding a backup's retention class
    policy_tag: str  # the tag holding its retention policy
    archived_classes: tuple[str, ...]  # the classes that may move to a Glacier storage class


def retention_rules(settings_file: Path | None) -> RetentionRules:
    """The lifecycle rules for a settings document (without one: the default policy only)."""
    from chalicelib.config import Settings
    from chalicelib.logical.catalog import Layout
    from chalicelib.scheduling.retention import POLICY_TAG, RETENTION_TAG, RetentionClass, lifecycle_rules

    if settings_file:
        settings = Settings.model_validate(json.loads(settings_file.read_text()))
    else:
        settings = Settings(bucket="placeholder-bucket-name")  # rules do not depend on the bucket's name
    rules: list[Json] = json.loads(json.dumps(lifecycle_rules(settings, Layout(settings.prefix).failed_prefix)))
    archived = (RetentionClass.MONTHLY, RetentionClass.YEARLY)
    return RetentionRules(rules, settings.prefix, RETENTION_TAG, POLICY_TAG, archived)
