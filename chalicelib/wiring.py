"""Building the services from the process environment, once per container and only when first needed.

The one place that reads os.environ and creates boto3 clients; everything below receives them.
Environment:
  LIFEBOAT_CONFIG        path to a JSON/TOML file, or ssm:/parameter/path
  LIFEBOAT_JOBS_TABLE    DynamoDB table for run claims and the dispatch cursor (optional locally)
  LIFEBOAT_BACKUP_QUEUE_URL  SQS queue the dispatcher (and POST /backups) fills
  LIFEBOAT_RESTORE_QUEUE_URL SQS queue of restore jobs
  LIFEBOAT_PG_ROOTS      where <major>/bin/pg_dump live (default /opt/pg:/usr/lib/postgresql)
  AWS_ENDPOINT_URL       honoured by boto3 (local emulators)
"""

from __future__ import annotations

import os
from functools import cache
from typing import TYPE_CHECKING, Any

from chalicelib import config as config_module

if TYPE_CHECKING:
    from chalicelib.adapters.dynamo import JobStore
    from chalicelib.adapters.s3 import S3Store
    from chalicelib.api import ApiServices
    from chalicelib.config import Config
    from chalicelib.fargate import FargateLauncher
    from chalicelib.logical.catalog import Catalog
    from chalicelib.logical.dump import BackupServices
    from chalicelib.physical.snapshots import SnapshotServices
    from chalicelib.scheduling.dispatch import BackupQueue, DispatchCursor


@cache
def client(service: str) -> Any:
    import boto3
    from botocore.config import Config as BotoConfig

    # Standard retry mode: throttles and 5xx are retried with backoff, up to 3 retries after the first try.
    make: Any = boto3.client  # one factory for every service; the stubs type each name separately
    return make(service, config=BotoConfig(retries={"mode": "standard", "max_attempts": 3},
                                                   max_pool_connections=32))


def load_config() -> Config:
    return config_module.load(os.environ.get("LIFEBOAT_CONFIG", ""), ssm_client=None)


def store(cfg: Config) -> S3Store:
    from chalicelib.adapters.s3 import MiB, PartPlan, S3Store

    s = cfg.settings
    return S3Store(client("s3"), s.bucket, kms_key_id=s.kms_key_id, plan=PartPlan(base=s.part_size_mib * MiB),
                   concurrency=s.upload_concurrency, memory_budget=s.upload_memory_mib * MiB)


def catalog(cfg: Config) -> Catalog:
    from chalicelib.logical.catalog import Catalog, Layout

    return Catalog(store(cfg), Layout(cfg.settings.prefix))


def jobs() -> JobStore | None:
    from chalicelib.adapters.dynamo import JobStore

    table = os.environ.get("LIFEBOAT_JOBS_TABLE")
    return JobStore(client("dynamodb"), table) if table else None


def backup_services(cfg: Config | None = None) -> BackupServices:
    from chalicelib.adapters.pgtools import Toolbox
    from chalicelib.adapters.postgres import CredentialResolver
    from chalicelib.logical.catalog import Catalog, Layout
    from chalicelib.logical.dump import BackupServices

    cfg = cfg or load_config()
    s3 = store(cfg)
    return BackupServices(
        config=cfg, store=s3, catalog=Catalog(s3, Layout(cfg.settings.prefix)),
        credentials=CredentialResolver(secrets_client=lambda: client("secretsmanager")),
        toolbox=Toolbox.from_env(), claims=jobs(),
    )


def has_backup_queue() -> bool:
    return bool(os.environ.get("LIFEBOAT_BACKUP_QUEUE_URL"))


def backup_queue(cfg: Config | None = None) -> BackupQueue:
    from chalicelib.errors import ConfigError
    from chalicelib.scheduling.dispatch import BackupQueue

    url = os.environ.get("LIFEBOAT_BACKUP_QUEUE_URL")
    if not url:
        raise ConfigError("LIFEBOAT_BACKUP_QUEUE_URL is not set: the dispatcher needs the backup queue's URL")
    return BackupQueue(client("sqs"), url, cfg)


def dispatch_cursor() -> DispatchCursor | None:
    from chalicelib.scheduling.dispatch import DispatchCursor

    table = os.environ.get("LIFEBOAT_JOBS_TABLE")
    return DispatchCursor(client("dynamodb"), table) if table else None


def api_services(cfg: Config | None = None) -> ApiServices:
    from chalicelib.adapters.pgtools import Toolbox
    from chalicelib.adapters.postgres import CredentialResolver
    from chalicelib.api import ApiServices
    from chalicelib.errors import ConfigError
    from chalicelib.restore.model import RestoreJobStore, RestoreQueue

    cfg = cfg or load_config()
    table = os.environ.get("LIFEBOAT_JOBS_TABLE")
    queue = os.environ.get("LIFEBOAT_RESTORE_QUEUE_URL")
    if not table or not queue:
        raise ConfigError("the restore API needs LIFEBOAT_JOBS_TABLE and LIFEBOAT_RESTORE_QUEUE_URL")
    return ApiServices(
        config=cfg, catalog=catalog(cfg), jobs=RestoreJobStore(client("dynamodb"), table),
        restore_queue=RestoreQueue(client("sqs"), queue),
        backup_queue=backup_queue(cfg) if has_backup_queue() else None,
        credentials=CredentialResolver(secrets_client=lambda: client("secretsmanager")), toolbox=Toolbox.from_env(),
        snapshots=snapshot_services(cfg) if any(t.physical for t in cfg.targets) else None,
    )


@cache
def regional_client(service: str, region: str) -> Any:
    """A client for another region (snapshot copies, sources outside the function's region)."""
    import boto3
    from botocore.config import Config as BotoConfig

    make: Any = boto3.client
    return make(service, region_name=region,
                config=BotoConfig(retries={"mode": "standard", "max_attempts": 3}, max_pool_connections=32))


def snapshot_services(cfg: Config | None = None) -> SnapshotServices:
    from chalicelib.adapters.postgres import CredentialResolver
    from chalicelib.physical.snapshots import SnapshotServices

    cfg = cfg or load_config()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return SnapshotServices(config=cfg, client_for=regional_client, region=region, store=store(cfg),
                            credentials=CredentialResolver(secrets_client=lambda: client("secretsmanager")),
                            claims=jobs())


# --- the long-running worker (chalicelib.fargate) ------------------------------------------------------
# Set by the stack on the backup and restore workers when Fargate is deployed (stack/README.md):
#   LIFEBOAT_FARGATE_CLUSTER, LIFEBOAT_FARGATE_TASK_DEFINITION   the ECS cluster and the task definition ARN
#   LIFEBOAT_FARGATE_SUBNETS, LIFEBOAT_FARGATE_SECURITY_GROUPS   comma-separated ids (the functions' VPC)
#   LIFEBOAT_FARGATE_CONTAINER        the container to override (default lifeboat)
#   LIFEBOAT_FARGATE_ASSIGN_PUBLIC_IP ENABLED or DISABLED (default DISABLED: private subnets)
# Without a cluster and task definition nothing is delegated: every run stays on Lambda.

def fargate_launcher() -> FargateLauncher | None:
    from chalicelib.errors import ConfigError
    from chalicelib.fargate import DEFAULT_CONTAINER, FargateLauncher

    cluster = os.environ.get("LIFEBOAT_FARGATE_CLUSTER", "")
    task_definition = os.environ.get("LIFEBOAT_FARGATE_TASK_DEFINITION", "")
    if not cluster or not task_definition:
        return None
    subnets = [s.strip() for s in os.environ.get("LIFEBOAT_FARGATE_SUBNETS", "").split(",") if s.strip()]
    groups = [g.strip() for g in os.environ.get("LIFEBOAT_FARGATE_SECURITY_GROUPS", "").split(",") if g.strip()]
    if not subnets:
        raise ConfigError("LIFEBOAT_FARGATE_CLUSTER is set but LIFEBOAT_FARGATE_SUBNETS is empty: a Fargate task"
                          " runs in subnets (the stack passes the functions' SubnetIds)")
    public = os.environ.get("LIFEBOAT_FARGATE_ASSIGN_PUBLIC_IP", "DISABLED").upper() in ("ENABLED", "TRUE", "1")
    return FargateLauncher(client("ecs"), cluster, task_definition, subnets, groups,
                           os.environ.get("LIFEBOAT_FARGATE_CONTAINER") or DEFAULT_CONTAINER, public)
