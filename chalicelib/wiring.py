"""Building the services from the settings, once per container and only when first needed.

The one place that creates boto3 clients; everything below receives them. The environment is read by
chalicelib.env (every variable is listed there), a command line's options come in through `configured(...)`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any, Literal, overload

from chalicelib import config as config_module
from chalicelib import env as env_module
from chalicelib.adapters.aws_errors import AWS_ERRORS, error_code, error_message
from chalicelib.adapters.dynamo import DispatchCursor, JobStore, RestoreJobTable
from chalicelib.adapters.ecs import EcsTasks
from chalicelib.adapters.kms import KmsMacKey
from chalicelib.adapters.pgtools import Toolbox
from chalicelib.adapters.postgres import CredentialResolver
from chalicelib.adapters.s3 import MiB, PartPlan, S3Store
from chalicelib.adapters.sqs import Queue
from chalicelib.api import ApiServices
from chalicelib.config import Config
from chalicelib.errors import ConfigError
from chalicelib.fargate import FargateLauncher
from chalicelib.logical.catalog import Catalog, Layout
from chalicelib.logical.dump import BackupServices
from chalicelib.logical.signing import ManifestSigning
from chalicelib.physical.model import SnapshotServices
from chalicelib.restore.model import RestoreJobStore, RestoreQueue
from chalicelib.scheduling.dispatch import BackupQueue

if TYPE_CHECKING:
    from types_boto3_dynamodb import DynamoDBClient
    from types_boto3_ec2 import EC2Client
    from types_boto3_ecs import ECSClient
    from types_boto3_rds import RDSClient
    from types_boto3_s3 import S3Client
    from types_boto3_secretsmanager import SecretsManagerClient
    from types_boto3_sqs import SQSClient
    from types_boto3_ssm import SSMClient


def settings() -> env_module.Env:
    """The environment's settings, with the command line's options over them."""
    return env_module.current()


@contextmanager
def configured(
    *,
    config: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    stack: str | None = None,
    metrics: bool | None = None,
) -> Iterator[env_module.Env]:
    """A command line's options for the block: `config`, `region` and `profile` win over LIFEBOAT_CONFIG,
    AWS_REGION and AWS_PROFILE; `stack` names a deployed pg-lifeboat stack whose outputs (read with that region
    and profile) give the configuration's location, the jobs table and the queues, over the environment's
    (`config` still wins); `metrics` says whether to emit metrics when POWERTOOLS_METRICS_DISABLED is unset.
    None: the environment's."""
    fallbacks = {"metrics_disabled": None if metrics is None else not metrics}
    with ExitStack() as scope:
        env = scope.enter_context(
            env_module.configured({"config": config, "aws_region": region, "aws_profile": profile}, fallbacks)
        )
        if stack:
            from_stack = env_module.settings_from_stack(stack, stack_outputs(stack))
            env = scope.enter_context(env_module.configured({**from_stack, **({"config": config} if config else {})}))
        yield env


def stack_outputs(stack: str) -> dict[str, str]:
    """A CloudFormation stack's outputs (name → value); ConfigError when the stack does not exist."""
    try:
        found = client.get("cloudformation").describe_stacks(StackName=stack)["Stacks"]
    except AWS_ERRORS as exc:
        if error_code(exc) == "ValidationError" and "does not exist" in error_message(exc):
            raise ConfigError(
                f"stack {stack!r} does not exist in {region()}{_profile_note()}: check --stack (the name given to"
                " `aws cloudformation deploy`), --region and --profile"
            ) from None
        why = f"{error_code(exc) or type(exc).__name__}: {error_message(exc)}"
        raise ConfigError(f"cannot read stack {stack!r} in {region()}{_profile_note()}: {why}") from None
    return {o["OutputKey"]: o["OutputValue"] for o in found[0].get("Outputs", []) if "OutputValue" in o}


def _profile_note() -> str:
    profile = settings().aws_profile
    return f" (profile {profile})" if profile else ""


def region() -> str:
    """The clients' region: --region, else AWS_REGION, else the SDK's own chain for the profile (--profile or
    AWS_PROFILE): AWS_DEFAULT_REGION, then the profile's region."""
    found = settings().aws_region or _session(settings().aws_profile).region_name
    if not found:
        raise ConfigError(
            "no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, or a region in the AWS profile) or pass --region"
        )
    return str(found)


@cache
def _session(profile: str | None) -> Any:
    """The SDK's session for a profile (None: the default chain). A Session costs a few ms: once per profile,
    until client.cache_clear()."""
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        return boto3.session.Session(profile_name=profile)
    except ProfileNotFound:
        raise ConfigError(
            f"AWS profile {profile!r} is not in the AWS config files (~/.aws/config, ~/.aws/credentials, or"
            " AWS_CONFIG_FILE): check --profile or AWS_PROFILE (`aws configure list-profiles` lists them)"
        ) from None


def _make_client(service: str, region_name: str, profile: str | None) -> Any:
    from botocore.config import Config as BotoConfig

    # Standard retry mode: throttles and 5xx are retried with backoff, up to 3 retries after the first try.
    # Checksums "when_required" and no S3 payload signing: S3Store hashes every byte it writes once and sends the
    # SHA-256 as ChecksumSHA256 (a signed header S3 verifies the body against), so botocore computes no CRC32
    # and no SHA-256 payload hash of its own; reads are verified against the signed manifest, not by botocore.
    # Operations that require a checksum (DeleteObjects, PutObjectRetention, ...) still get one from botocore.
    return _session(profile).client(
        service,
        region_name=region_name,
        config=BotoConfig(
            retries={"mode": "standard", "max_attempts": 3},
            max_pool_connections=32,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"payload_signing_enabled": False},
        ),
    )


# Every AWS service pg-lifeboat calls: `client` builds no other (tests check each follows --region/--profile).
SERVICES = ("s3", "dynamodb", "sqs", "rds", "ec2", "ecs", "secretsmanager", "ssm", "kms", "cloudformation")


class Clients:
    """boto3 clients, one per (service, region, profile), made on first use; typed per service (types-boto3 stubs).

    `client("s3")` is in the clients' region (`region()`), `client("rds", "eu-west-1")` in another; all with the
    profile (`--profile`, AWS_PROFILE; none: the SDK's default chain).
    `client.cache_clear()` forgets them (tests that move AWS_ENDPOINT_URL or the region).
    """

    def __init__(self) -> None:
        self._made: dict[tuple[str, str, str | None], Any] = {}
        self._lock = threading.Lock()

    @overload
    def __call__(self, service: Literal["s3"], region_name: str | None = None) -> S3Client: ...
    @overload
    def __call__(self, service: Literal["dynamodb"], region_name: str | None = None) -> DynamoDBClient: ...
    @overload
    def __call__(self, service: Literal["sqs"], region_name: str | None = None) -> SQSClient: ...
    @overload
    def __call__(self, service: Literal["rds"], region_name: str | None = None) -> RDSClient: ...
    @overload
    def __call__(self, service: Literal["ec2"], region_name: str | None = None) -> EC2Client: ...
    @overload
    def __call__(self, service: Literal["ecs"], region_name: str | None = None) -> ECSClient: ...
    @overload
    def __call__(self, service: Literal["secretsmanager"], region_name: str | None = None) -> SecretsManagerClient: ...
    @overload
    def __call__(self, service: Literal["ssm"], region_name: str | None = None) -> SSMClient: ...
    def __call__(self, service: str, region_name: str | None = None) -> Any:
        return self.get(service, region_name)

    def get(self, service: str, region_name: str | None = None) -> Any:
        """Any service of SERVICES, untyped (the physical snapshot code's `client_for`)."""
        if service not in SERVICES:
            raise ValueError(f"{service!r} is not in wiring.SERVICES: add it there (and to the tests' list)")
        key = (service, region_name or region(), settings().aws_profile)
        with self._lock:
            made = self._made.get(key)
            if made is None:
                made = self._made[key] = _make_client(*key)
        return made

    def cache_clear(self) -> None:
        with self._lock:
            self._made.clear()
        _session.cache_clear()
        _ssm_provider.cache_clear()


client = Clients()


def load_config() -> Config:
    source = settings().config
    in_ssm = source.startswith("ssm:")
    return config_module.load(source, ssm_client=_ssm_provider(region(), settings().aws_profile) if in_ssm else None)


@cache
def _ssm_provider(region_name: str, profile: str | None) -> Any:
    """ssm:/... is read through a Powertools SSM provider over this module's client (the region and profile of
    every other client), one per region and profile: its five-minute cache outlives the invocation."""
    from aws_lambda_powertools.utilities.parameters import SSMProvider

    return SSMProvider(boto3_client=client("ssm", region_name))


def store(cfg: Config) -> S3Store:
    s = cfg.settings
    return S3Store(
        client("s3"),
        s.bucket,
        kms_key_id=s.kms_key_id,
        plan=PartPlan(base=s.part_size_mib * MiB),
        concurrency=s.upload_concurrency,
        memory_budget=s.upload_memory_mib * MiB,
    )


def signing(cfg: Config) -> ManifestSigning | None:
    """Manifest signing with settings.signing_key_id (None: manifests are neither signed nor checked)."""
    s = cfg.settings
    if not s.signing_key_id:
        return None
    return ManifestSigning(KmsMacKey(lambda: client.get("kms"), s.signing_key_id), s.accept_unsigned_before)


def catalog(cfg: Config) -> Catalog:
    return Catalog(store(cfg), Layout(cfg.settings.prefix), signing(cfg))


def jobs() -> JobStore | None:
    table = settings().jobs_table
    return JobStore(client("dynamodb"), table) if table else None


def toolbox() -> Toolbox:
    return Toolbox(list(settings().pg_roots))


def credentials() -> CredentialResolver:
    """Database logins: Secrets Manager and RDS IAM tokens, clients made when first needed."""

    return CredentialResolver(
        secrets_client=lambda: client("secretsmanager"),
        rds_client=lambda: client("rds"),
        ca_bundle=str(settings().ca_bundle),
    )


def backup_services(cfg: Config | None = None) -> BackupServices:
    cfg = cfg or load_config()
    s3 = store(cfg)
    return BackupServices(
        config=cfg,
        store=s3,
        catalog=Catalog(s3, Layout(cfg.settings.prefix), signing(cfg)),
        credentials=credentials(),
        toolbox=toolbox(),
        claims=jobs(),
    )


def has_backup_queue() -> bool:
    return bool(settings().backup_queue_url)


def backup_queue(cfg: Config | None = None) -> BackupQueue:
    url = settings().backup_queue_url
    if not url:
        raise ConfigError("LIFEBOAT_BACKUP_QUEUE_URL is not set: the dispatcher needs the backup queue's URL")
    return BackupQueue(Queue(client("sqs"), url), cfg)


def dispatch_cursor() -> DispatchCursor | None:
    table = settings().jobs_table
    return DispatchCursor(client("dynamodb"), table) if table else None


def api_services(cfg: Config | None = None) -> ApiServices:
    cfg = cfg or load_config()
    table, queue = settings().jobs_table, settings().restore_queue_url
    if not table or not queue:
        raise ConfigError("the restore API needs LIFEBOAT_JOBS_TABLE and LIFEBOAT_RESTORE_QUEUE_URL")
    return ApiServices(
        config=cfg,
        catalog=catalog(cfg),
        jobs=RestoreJobStore(RestoreJobTable(client("dynamodb"), table)),
        restore_queue=RestoreQueue(Queue(client("sqs"), queue)),
        backup_queue=backup_queue(cfg) if has_backup_queue() else None,
        credentials=credentials(),
        toolbox=toolbox(),
        snapshots=snapshot_services(cfg) if any(t.physical for t in cfg.targets) else None,
    )


def regional_client(service: str, region_name: str) -> Any:
    """A client for another region (snapshot copies, sources outside the function's region)."""
    return client.get(service, region_name)


def snapshot_services(cfg: Config | None = None) -> SnapshotServices:
    cfg = cfg or load_config()
    return SnapshotServices(
        config=cfg,
        client_for=regional_client,
        region=region(),
        store=store(cfg),
        credentials=credentials(),
        claims=jobs(),
    )


# --- the long-running worker (chalicelib.fargate) ------------------------------------------------------
# The stack sets LIFEBOAT_FARGATE_* on the backup and restore workers when Fargate is deployed (stack/README.md;
# chalicelib.env). Without a cluster and task definition nothing is delegated: every run stays on Lambda.


def fargate_launcher() -> FargateLauncher | None:
    s = settings()
    if not s.fargate_cluster or not s.fargate_task_definition:
        return None
    return FargateLauncher(
        EcsTasks(client("ecs")),
        s.fargate_cluster,
        s.fargate_task_definition,
        list(s.fargate_subnets),
        list(s.fargate_security_groups),
        s.fargate_container,
        s.fargate_assign_public_ip,
    )
