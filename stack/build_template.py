#!/usr/bin/env python3
"""Write the CloudFormation template merged into Chalice's by `chalice package --merge-template`.

    .venv/bin/python -m stack.build_template --stage dev --arch arm64 --out out/dev-arm64/merge.json \\
        [--target shop=1d --target billing=6h | --targets targets.json] [--settings settings.json] \\
        [--resources-only]

Chalice generates the functions, their roles (from .chalice/policy-<stage>-<function>.json) and their
event sources; this template adds what the product needs around them (bucket, key, jobs table, queues,
alarms, the PostgreSQL client layer) and patches the generated functions. Chalice merges it as a deep
dict merge (chalice/package.py TemplateDeepMerger: dicts merge key by key, anything else, lists
included, replaces), so a patch names only the keys it sets: Layers, VpcConfig, FunctionName, extra
environment variables, DependsOn, and the roles' ManagedPolicyArns. (Chalice's own values are never
intrinsic functions, so no dict-valued intrinsic is ever merged into another.)

The functions are read from the app itself (the Chalice config and app object, loaded the way
`chalice package` loads them), so a function added to app.py is patched without editing this file;
it only needs its line in stack/policies.py ACCESS.

Decisions:
* SQS: Chalice builds each SQS event source ARN from the queue *name* app.py computed at import time
  (os.environ LIFEBOAT_BACKUP_QUEUE / LIFEBOAT_RESTORE_QUEUE, which Chalice sets from the stage's
  environment_variables before importing app.py). The stack names its queues per stage
  (pg-lifeboat-<stage>-backups, ...) so that stages can share an account, and packaging passes those
  names as environment overrides (queue_environment below; Chalice's highest-priority config layer),
  so app.py, Chalice's event source ARN and the stack's queue agree by construction. The merge cannot
  swap the ARN for a Fn::GetAtt instead: a deep merge of {"Fn::GetAtt"} into {"Fn::Sub"} yields one
  invalid dict with both keys. Every function's environment refers to every queue, so the queues exist
  before any event source mapping.
* VPC: subnets and security groups are stack parameters injected here as VpcConfig, not
  `subnet_ids`/`security_group_ids` in .chalice/config.json: they are per-account deployment inputs,
  the same packaged template deploys anywhere, and leaving them empty deploys outside a VPC.
* Lifecycle rules come from chalicelib.retention.lifecycle_rules; only the days of the default policy
  (and the noncurrent-version days) become parameters, defaulting to the rules' own days.
* Alarms: failures by Metrics Insights over the EMF metrics (any target); dead-man's switches on
  BackupSucceeded/SnapshotSucceeded per target (given here), and stack-wide through a log metric filter.
* The Fargate worker (fargate_resources; chalicelib/fargate.py) exists only with FargateImageUri and a VPC
  (HasFargate): an image is built and pushed outside CloudFormation, and a task runs in subnets. Its roles
  are plain CloudFormation roles (no names, so CAPABILITY_IAM suffices), which the launch policy names by
  GetAtt: RunTask, TagResource and PassRole are granted by the template, not by the policy files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from stack import names, policies  # noqa: E402

ARCHES = ("x86_64", "arm64")
LAYER_RUNTIME = "python3.12"
DEAD_LETTER_AFTER = 3  # receives before a message moves to its dead-letter queue
VISIBILITY_FACTOR = 6  # AWS: queue visibility >= 6x the consumer's timeout (room for throttled retries)
SQS_MAX_VISIBILITY = 43200
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
                      2922, 3288, 3653)
QUEUE_LOGICAL = {"backups": "Backup", "restores": "Restore"}
INTERVAL = re.compile(r"^(\d+)([smhd]?)$")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_ALARM_WINDOW = 7 * 86400  # CloudWatch: Period x EvaluationPeriods <= 7 days
ANY_SUCCESS_METRIC = "BackupSucceededAnyTarget"  # from metric filters: no dimensions

Json = dict[str, Any]


def ref(name: str) -> Json:
    return {"Ref": name}


def sub(text: str) -> Json:
    return {"Fn::Sub": text}


def getatt(resource: str, attribute: str) -> Json:
    return {"Fn::GetAtt": [resource, attribute]}


def if_(condition: str, then: Any, otherwise: Any = None) -> Json:
    return {"Fn::If": [condition, then, ref("AWS::NoValue") if otherwise is None else otherwise]}


def camel(name: str) -> str:
    from chalice.utils import to_cfn_resource_name

    return str(to_cfn_resource_name(name))


# --------------------------------------------------------------------------------------------------
# What the Chalice app defines


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
    raise SystemExit(f"build_template: the app consumes SQS queue {queue!r}, which the stack does not create"
                     f" (it creates {', '.join(names.queue(stage, k) for k in names.QUEUE_KINDS)}): read the queue"
                     " name from one of the variables of queue_environment(), or add a kind to stack/names.py")


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
            scoped = config.scope(stage, name)
            layers: list[Any] = list(scoped.layers or [])
            if scoped.automatic_layer:
                layers.insert(0, ref("ManagedLayer"))
            found[name] = Function(name=name, timeout=int(scoped.lambda_timeout or 60), layers=layers,
                                   manage_role=bool(scoped.manage_iam_role))
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
    return AppModel(stage=stage, functions=list(found.values()), metrics_namespace=namespace,
                    environment={k: str(v) for k, v in config.environment_variables.items()})


# --------------------------------------------------------------------------------------------------
# Lifecycle rules from chalicelib.retention


def lifecycle(settings_file: Path | None) -> tuple[list[Json], dict[str, Json]]:
    """The bucket's lifecycle rules, with the default policy's days and the noncurrent-version days
    turned into parameters whose defaults are the days lifecycle_rules chose."""
    from chalicelib.catalog import Layout
    from chalicelib.config import Settings
    from chalicelib.retention import POLICY_TAG, RETENTION_TAG, RetentionClass, lifecycle_rules

    if settings_file:
        settings = Settings.model_validate(json.loads(settings_file.read_text()))
    else:
        settings = Settings(bucket="placeholder-bucket-name")  # rules do not depend on the bucket's name
    rules: list[Json] = json.loads(json.dumps(lifecycle_rules(settings, Layout(settings.prefix).failed_prefix)))
    params: dict[str, Json] = {}
    noncurrent_default = 1
    for rule in rules:
        tags = {t["Key"]: t["Value"] for t in rule.get("Filter", {}).get("And", {}).get("Tags", [])}
        cls = tags.get(RETENTION_TAG)
        if "NoncurrentVersionExpiration" in rule:
            noncurrent_default = rule["NoncurrentVersionExpiration"]["NoncurrentDays"]
            rule["NoncurrentVersionExpiration"]["NoncurrentDays"] = ref("NoncurrentVersionDays")
        if cls is None or tags.get(POLICY_TAG) != "default":
            continue
        name = f"{cls.capitalize()}RetentionDays"
        params[name] = {"Type": "Number", "Default": rule["Expiration"]["Days"], "MinValue": 1, "MaxValue": 36500,
                        "Description": f"Days to keep backups tagged {RETENTION_TAG}={cls} (default policy);"
                                       " keep longer classes longer than shorter ones"}
        rule["Expiration"]["Days"] = ref(name)
        if cls in (RetentionClass.MONTHLY, RetentionClass.YEARLY):
            rule["Transitions"] = if_("HasGlacierTransition", [
                {"StorageClass": ref("GlacierStorageClass"), "TransitionInDays": ref("GlacierTransitionDays")}])
    # Versioning keeps what is overwritten or deleted (a failed upload's parts, a deleted backup): expire
    # those versions, and the delete markers left behind, after the same number of days.
    rules.append({"Id": "lifeboat-noncurrent-versions", "Status": "Enabled",
                  **({"Prefix": settings.prefix} if settings.prefix else {}),
                  "NoncurrentVersionExpiration": {"NoncurrentDays": ref("NoncurrentVersionDays")},
                  "ExpiredObjectDeleteMarker": True})
    params["NoncurrentVersionDays"] = {
        "Type": "Number", "Default": noncurrent_default, "MinValue": 1, "MaxValue": 36500,
        "Description": "Days a deleted or overwritten object version is kept (the window to undo a deletion)"}
    return [_cfn_rule(r) for r in rules], params


def _cfn_rule(rule: Json) -> Json:
    """S3 API lifecycle rule (as lifecycle_rules returns it) -> AWS::S3::Bucket Rule."""
    if "Id" in rule:  # already in CloudFormation form
        return rule
    out: Json = {"Id": rule["ID"], "Status": rule["Status"]}
    flt = rule.get("Filter", {})
    both = flt.get("And", flt)
    if both.get("Prefix"):
        out["Prefix"] = both["Prefix"]
    if both.get("Tags"):
        out["TagFilters"] = both["Tags"]
    if "AbortIncompleteMultipartUpload" in rule:
        out["AbortIncompleteMultipartUpload"] = rule["AbortIncompleteMultipartUpload"]
    if "Expiration" in rule:
        out["ExpirationInDays"] = rule["Expiration"]["Days"]
    if "NoncurrentVersionExpiration" in rule:
        out["NoncurrentVersionExpiration"] = rule["NoncurrentVersionExpiration"]
    if "Transitions" in rule:
        out["Transitions"] = rule["Transitions"]
    unknown = set(rule) - {"ID", "Status", "Filter", "AbortIncompleteMultipartUpload", "Expiration",
                           "NoncurrentVersionExpiration", "Transitions"}
    if unknown:
        raise SystemExit(f"build_template: lifecycle rule {rule['ID']} has fields this generator does not map:"
                         f" {sorted(unknown)}")
    return out


# --------------------------------------------------------------------------------------------------
# Per-target dead-man's switches


# What counts as a successful backup, per kind: the EMF metric (dimensions service, target), and the
# function whose log carries it (for the stack-wide switch). Snapshots count when the sweeper sees them done.
SUCCESS = {"logical": ("BackupSucceeded", "backup_worker"), "snapshot": ("SnapshotSucceeded", "snapshot_sweeper")}
FAILURE_METRICS = {
    "BackupFailed": "A logical backup failed. Its failure record is under failed/<target>/ in the bucket and in the"
                    " backup worker's log; SQS retries the message up to 3 times.",
    "SnapshotFailed": "A snapshot could not be started, or RDS/EC2 reported it failed. See the backup worker's"
                      " and the snapshot sweeper's logs.",
    "RestoreFailed": "A restore job failed (its job record, GET /restores/<id>, says why). See the restore"
                     " worker's log.",
}


@dataclass(frozen=True)
class WatchedTarget:
    name: str
    interval: int  # seconds between scheduled backups
    kind: str = "logical"  # or "snapshot"

    @property
    def window(self) -> int:
        """The alarm period: the interval plus a grace of a quarter of it (at least an hour), so a
        backup that starts or ends a little late does not page anyone. Whole minutes."""
        seconds = self.interval + max(3600, self.interval // 4)
        return min(MAX_ALARM_WINDOW, -(-seconds // 60) * 60)


def parse_interval(text: str) -> int:
    m = INTERVAL.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"{text!r} is not an interval (use e.g. 3600, 90m, 6h, 1d)")
    seconds = int(m.group(1)) * UNIT_SECONDS[m.group(2)]
    if seconds < 300 or seconds > 6 * 86400:
        raise ValueError(f"{text!r}: a watched interval runs from 5 minutes to 6 days (CloudWatch watches at most"
                         " 7 days, grace included)")
    return seconds


def parse_targets(pairs: list[str], targets_file: Path | None) -> list[WatchedTarget]:
    """`NAME=INTERVAL[:snapshot]` pairs and a JSON list of {"name", "interval", "kind"}."""
    from chalicelib.config import TARGET_NAME

    raw: list[tuple[str, str, str]] = []
    for pair in pairs:
        name, sep, rest = pair.partition("=")
        interval, _, kind = rest.partition(":")
        if not sep:
            raise ValueError(f"--target {pair!r}: use NAME=INTERVAL[:snapshot], e.g. shop=1d")
        raw.append((name, interval, kind or "logical"))
    if targets_file:
        for item in json.loads(targets_file.read_text()):
            raw.append((item["name"], str(item["interval"]), item.get("kind", "logical")))
    watched: list[WatchedTarget] = []
    ids: dict[str, str] = {}
    for name, interval, kind in raw:
        if not TARGET_NAME.match(name) or len(name) > 48:
            raise ValueError(f"{name!r} is not a target name")
        if kind not in SUCCESS:
            raise ValueError(f"{name}: kind {kind!r} is not one of {', '.join(SUCCESS)}")
        alarm_id = alarm_id_for(name, kind)
        if alarm_id in ids:
            raise ValueError(f"targets {ids[alarm_id]!r} and {name!r} ({kind}) map to the same alarm id")
        ids[alarm_id] = name
        watched.append(WatchedTarget(name, parse_interval(interval), kind))
    return watched


def alarm_id_for(target: str, kind: str) -> str:
    return f"{'NoBackupAlarm' if kind == 'logical' else 'NoSnapshotAlarm'}{camel(target)}"


# --------------------------------------------------------------------------------------------------
# The template


def parameters(stage: str, retention: dict[str, Json], with_functions: bool) -> Json:
    params = {
        "Stage": {"Type": "String", "Default": stage, "AllowedValues": [stage],
                  "Description": "The Chalice stage this template was packaged for (fixed at packaging time)"},
        "KmsKeyArn": {"Type": "String", "Default": "",
                      "AllowedPattern": r"^$|^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[a-zA-Z0-9-]+$",
                      "Description": "Existing KMS key for the bucket; empty: the stack creates one"},
        "ObjectLockMode": {"Type": "String", "Default": "NONE", "AllowedValues": ["NONE", "GOVERNANCE", "COMPLIANCE"],
                           "Description": "S3 Object Lock default retention mode; decide before the first deploy"},
        "ObjectLockRetentionDays": {"Type": "Number", "Default": 7, "MinValue": 1, "MaxValue": 36500,
                                    "Description": "Default Object Lock retention when ObjectLockMode is set"},
        **retention,
        "GlacierTransitionDays": {"Type": "Number", "Default": 0, "MinValue": 0, "MaxValue": 36500,
                                  "Description": "Move monthly and yearly backups to GlacierStorageClass after"
                                                 " this many days; 0: never. Must be below their retention days"},
        "GlacierStorageClass": {"Type": "String", "Default": "GLACIER_IR",
                                "AllowedValues": ["GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"],
                                "Description": "GLACIER_IR keeps restores immediate; GLACIER and DEEP_ARCHIVE need an"
                                               " S3 restore request before pg-lifeboat can read a backup"},
        "SubnetIds": {"Type": "CommaDelimitedList", "Default": "",
                      "Description": "Private subnets for the functions (reaching RDS); empty: no VPC"},
        "SecurityGroupIds": {"Type": "CommaDelimitedList", "Default": "",
                             "Description": "Security groups for the functions; required with SubnetIds"},
        "SecretsPrefix": {"Type": "String", "Default": names.secrets_prefix(stage), "MinLength": 1,
                          "Description": "Functions may read Secrets Manager secrets whose names start with this"},
        "RdsDbUserArns": {"Type": "CommaDelimitedList", "Default": "",
                          "Description": "rds-db:connect resources for IAM database authentication, e.g."
                                         " arn:aws:rds-db:eu-west-1:111122223333:dbuser:*/lifeboat_backup"},
        "AlarmEmail": {"Type": "String", "Default": "", "Description": "Subscribe this address to the alarm topic"},
        "LogRetentionDays": {"Type": "Number", "Default": 90, "AllowedValues": list(LOG_RETENTION_DAYS),
                             "Description": "Retention of the functions' log groups"},
        "NoBackupAlarmPeriodSeconds": {"Type": "Number", "Default": 90000, "MinValue": 3600, "MaxValue": 604800,
                                       "Description": "The stack-wide dead-man's switch fires when no backup of any"
                                                      " target succeeded for this long (a multiple of 60)"},
    }
    if not with_functions:  # `chalice deploy` takes subnets and security groups from config.json
        del params["SubnetIds"], params["SecurityGroupIds"]
    else:
        params.update(fargate_parameters())
    return params


def conditions(with_functions: bool) -> Json:
    def not_empty(value: Any) -> Json:
        return {"Fn::Not": [{"Fn::Equals": [value, ""]}]}

    conds = {
        "CreateKmsKey": {"Fn::Equals": [ref("KmsKeyArn"), ""]},
        "HasObjectLock": {"Fn::Not": [{"Fn::Equals": [ref("ObjectLockMode"), "NONE"]}]},
        "HasGlacierTransition": {"Fn::Not": [{"Fn::Equals": [ref("GlacierTransitionDays"), 0]}]},
        "HasVpc": not_empty({"Fn::Join": ["", ref("SubnetIds")]}),
        "HasRdsIamUsers": not_empty({"Fn::Join": ["", ref("RdsDbUserArns")]}),
        "HasAlarmEmail": not_empty(ref("AlarmEmail")),
    }
    if not with_functions:
        del conds["HasVpc"]
    else:  # the Fargate worker: an image to run and subnets to run it in
        conds["HasFargate"] = {"Fn::And": [{"Condition": "HasVpc"}, not_empty(ref("FargateImageUri"))]}
    return conds


def storage_resources(rules: list[Json]) -> Json:
    key_arn = if_("CreateKmsKey", getatt("BackupKey", "Arn"), ref("KmsKeyArn"))
    bucket_arn = getatt("BackupBucket", "Arn")
    retain = {"DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain"}
    return {
        "BackupKey": {
            "Type": "AWS::KMS::Key", "Condition": "CreateKmsKey", **retain,
            "Properties": {
                "Description": sub("pg-lifeboat ${Stage}: encrypts the backup bucket"),
                "EnableKeyRotation": True,
                "KeyPolicy": {"Version": "2012-10-17", "Statement": [{
                    # The account administers the key and IAM policies decide who uses it (the functions'
                    # policies allow it only through S3, for this stage's buckets).
                    "Sid": "AccountAdministersKeyThroughIam", "Effect": "Allow",
                    "Principal": {"AWS": sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root")},
                    "Action": "kms:*", "Resource": "*"}]},
            },
        },
        "BackupKeyAlias": {"Type": "AWS::KMS::Alias", "Condition": "CreateKmsKey",
                           "Properties": {"AliasName": sub("alias/pg-lifeboat-${Stage}"),
                                          "TargetKeyId": ref("BackupKey")}},
        "BackupBucket": {
            "Type": "AWS::S3::Bucket", **retain,
            "Properties": {
                "BucketName": sub("pg-lifeboat-${Stage}-${AWS::AccountId}-${AWS::Region}"),
                "PublicAccessBlockConfiguration": {"BlockPublicAcls": True, "BlockPublicPolicy": True,
                                                   "IgnorePublicAcls": True, "RestrictPublicBuckets": True},
                "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
                "BucketEncryption": {"ServerSideEncryptionConfiguration": [{
                    "ServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn},
                    "BucketKeyEnabled": True}]},
                "VersioningConfiguration": {"Status": "Enabled"},
                "ObjectLockEnabled": if_("HasObjectLock", True),
                "ObjectLockConfiguration": if_("HasObjectLock", {
                    "ObjectLockEnabled": "Enabled",
                    "Rule": {"DefaultRetention": {"Mode": ref("ObjectLockMode"),
                                                  "Days": ref("ObjectLockRetentionDays")}}}),
                "LifecycleConfiguration": {"Rules": rules,
                                           "TransitionDefaultMinimumObjectSize": "all_storage_classes_128K"},
                "Tags": [{"Key": "pg-lifeboat:stage", "Value": ref("Stage")}],
            },
        },
        "BackupBucketPolicy": {
            "Type": "AWS::S3::BucketPolicy",
            "Properties": {"Bucket": ref("BackupBucket"), "PolicyDocument": {"Version": "2012-10-17", "Statement": [
                {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
                 "Resource": [bucket_arn, {"Fn::Join": ["", [bucket_arn, "/*"]]}],
                 "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
                {"Sid": "DenyOldTls", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
                 "Resource": [bucket_arn, {"Fn::Join": ["", [bucket_arn, "/*"]]}],
                 "Condition": {"NumericLessThan": {"s3:TlsVersion": "1.2"}}},
            ]}},
        },
        "JobsTable": {
            "Type": "AWS::DynamoDB::Table",
            "Properties": {
                "TableName": sub("pg-lifeboat-${Stage}-jobs"),
                "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
                "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                "SSESpecification": {"SSEEnabled": True},
            },
        },
    }


def queue_resources(model: AppModel) -> Json:
    resources: Json = {}
    for kind in names.QUEUE_KINDS:
        logical = QUEUE_LOGICAL[kind]
        timeouts = [f.timeout for f in model.consumers(kind)] or [900]  # not consumed yet: Lambda's maximum
        visibility = min(SQS_MAX_VISIBILITY, VISIBILITY_FACTOR * max(timeouts))
        fifo: Json = {"FifoQueue": True} if kind in names.FIFO_KINDS else {}
        suffix = ".fifo" if fifo else ""
        resources[f"{logical}DeadLetterQueue"] = {
            "Type": "AWS::SQS::Queue",
            "Properties": {"QueueName": sub(f"pg-lifeboat-${{Stage}}-{kind}-dlq{suffix}"), "SqsManagedSseEnabled": True,
                           "MessageRetentionPeriod": 14 * 86400, **fifo},
        }
        resources[f"{logical}Queue"] = {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": sub(f"pg-lifeboat-${{Stage}}-{kind}{suffix}"), "SqsManagedSseEnabled": True,
                "VisibilityTimeout": visibility, "MessageRetentionPeriod": 4 * 86400,
                "RedrivePolicy": {"deadLetterTargetArn": getatt(f"{logical}DeadLetterQueue", "Arn"),
                                  "maxReceiveCount": DEAD_LETTER_AFTER},
                **fifo,
            },
        }
        for queue in (f"{logical}Queue", f"{logical}DeadLetterQueue"):
            resources[f"{queue}Policy"] = {
                "Type": "AWS::SQS::QueuePolicy",
                "Properties": {"Queues": [ref(queue)], "PolicyDocument": {"Version": "2012-10-17", "Statement": [{
                    "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "sqs:*",
                    "Resource": getatt(queue, "Arn"), "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}},
            }
    return resources


def alarm(name: str, description: str, **properties: Any) -> Json:
    return {"Type": "AWS::CloudWatch::Alarm", "Properties": {
        "AlarmName": sub(f"pg-lifeboat-${{Stage}}-{name}"), "AlarmDescription": description,
        "AlarmActions": [ref("AlarmTopic")], "OKActions": [ref("AlarmTopic")], **properties}}


def metrics_insights_sum(metric: str, namespace: str, service: str) -> str:
    """A CloudWatch Metrics Insights query (not SQL run anywhere) over every target of the service."""
    return f'SELECT SUM({metric}) FROM SCHEMA("{namespace}", service, target) WHERE service = \'{service}\''  # noqa: S608


def monitoring_resources(model: AppModel, watched: list[WatchedTarget]) -> Json:
    from chalicelib.observability import SERVICE

    ns = model.metrics_namespace
    resources: Json = {
        "AlarmTopic": {"Type": "AWS::SNS::Topic", "Properties": {"TopicName": sub("pg-lifeboat-${Stage}-alarms")}},
        "AlarmEmailSubscription": {"Type": "AWS::SNS::Subscription", "Condition": "HasAlarmEmail", "Properties": {
            "TopicArn": ref("AlarmTopic"), "Protocol": "email", "Endpoint": ref("AlarmEmail")}},
    }
    # The functions emit *Failed with dimensions (service, target): a Metrics Insights query sums one over
    # every target, so a new target is watched without changing the stack.
    for metric, meaning in FAILURE_METRICS.items():
        resources[f"{metric}Alarm"] = alarm(
            re.sub(r"(?<!^)(?=[A-Z])", "-", metric).lower(),
            f"{metric} >= 1 in 5 minutes, any target. {meaning}",
            Metrics=[{"Id": "failed", "ReturnData": True, "Period": 300,
                      "Expression": metrics_insights_sum(metric, ns, SERVICE)}],
            ComparisonOperator="GreaterThanOrEqualToThreshold", Threshold=1, EvaluationPeriods=1,
            TreatMissingData="notBreaching")
    for kind in names.QUEUE_KINDS:
        logical = QUEUE_LOGICAL[kind]
        resources[f"{logical}DeadLetterAlarm"] = alarm(
            f"{kind}-dead-letters",
            f"Messages gave up after {DEAD_LETTER_AFTER} attempts and wait in the {kind} dead-letter queue"
            " (a crash or timeout never recorded as BackupFailed lands here too). Inspect, fix, then redrive.",
            Namespace="AWS/SQS", MetricName="ApproximateNumberOfMessagesVisible",
            Dimensions=[{"Name": "QueueName", "Value": getatt(f"{logical}DeadLetterQueue", "QueueName")}],
            Statistic="Maximum", Period=300, EvaluationPeriods=1, Threshold=1,
            ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="notBreaching")
    for fn in model.functions:
        if fn.schedule_seconds is None:
            continue
        # Frequent schedules: failures in three consecutive periods (one blip does not page). Hourly or
        # rarer (a daily cron): the one failed run.
        period = -(-max(300, fn.schedule_seconds) // 60) * 60
        runs = 3 if period <= 3600 else 1
        period = min(period, 86400)
        resources[f"{fn.logical_id}ErrorsAlarm"] = alarm(
            f"{fn.name.replace('_', '-')}-errors",
            f"Scheduled function {fn.name} failed in {runs} consecutive period(s) of {period // 60} minutes: its"
            " work is not being done. See its log group.",
            Namespace="AWS/Lambda", MetricName="Errors",
            Dimensions=[{"Name": "FunctionName", "Value": names.function_name(model.stage, fn.name)}],
            Statistic="Sum", Period=period, EvaluationPeriods=runs, DatapointsToAlarm=runs, Threshold=1,
            ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="notBreaching")
    # Stack-wide dead-man's switch. Metrics Insights alarms see 3 hours only, and EMF has no target-less
    # success metric: metric filters on the logs of the functions that report successes count them, of
    # any target and kind, into one metric.
    present = {fn.name: fn for fn in model.functions}
    reporters = [(metric, present[fname]) for metric, fname in SUCCESS.values() if fname in present]
    for metric, fn in reporters:
        resources[f"{fn.logical_id}{metric}Filter"] = {
            "Type": "AWS::Logs::MetricFilter",
            "Properties": {
                "LogGroupName": ref(f"{fn.logical_id}LogGroup"),
                "FilterPattern": f"{{ $.{metric}[0] >= 1 }}",
                "MetricTransformations": [{"MetricNamespace": ns, "MetricName": ANY_SUCCESS_METRIC,
                                           "MetricValue": "1", "Unit": "Count"}]}}
    if reporters:
        resources["NoBackupAlarm"] = alarm(
            "no-backup",
            "Dead-man's switch: no backup (logical or snapshot) of any target succeeded within"
            " NoBackupAlarmPeriodSeconds. Check the dispatcher, the queues and the workers' logs. In ALARM from"
            " the first deploy until a backup succeeds.",
            Namespace=ns, MetricName=ANY_SUCCESS_METRIC, Statistic="Sum",
            Period=ref("NoBackupAlarmPeriodSeconds"), EvaluationPeriods=1, Threshold=1,
            ComparisonOperator="LessThanThreshold", TreatMissingData="breaching")
    for target in watched:
        metric = SUCCESS[target.kind][0]
        resources[alarm_id_for(target.name, target.kind)] = alarm(
            f"no-{'backup' if target.kind == 'logical' else 'snapshot'}-{target.name}",
            f"Dead-man's switch: no {metric} for target {target.name} (expected every"
            f" {target.interval // 60} minutes) in the last {target.window // 60} minutes.",
            Namespace=ns, MetricName=metric,
            Dimensions=[{"Name": "service", "Value": SERVICE}, {"Name": "target", "Value": target.name}],
            Statistic="Sum", Period=target.window, EvaluationPeriods=1, Threshold=1,
            ComparisonOperator="LessThanThreshold", TreatMissingData="breaching")
    return resources


def function_resources(model: AppModel, arch: str | None) -> Json:
    """Log groups for every function; with an arch, the layer and the patches of Chalice's resources."""
    resources: Json = {}
    env = {
        "LIFEBOAT_JOBS_TABLE": ref("JobsTable"),
        **{f"LIFEBOAT_{QUEUE_LOGICAL[k].upper()}_QUEUE_URL": ref(f"{QUEUE_LOGICAL[k]}Queue")
           for k in names.QUEUE_KINDS},
        **{f"LIFEBOAT_{QUEUE_LOGICAL[k].upper()}_QUEUE": getatt(f"{QUEUE_LOGICAL[k]}Queue", "QueueName")
           for k in names.QUEUE_KINDS},
    }
    database_roles = []
    # The workers that hand long runs to the Fargate task (fargate:run) learn where it is; without the
    # task (HasFargate false) the variables are absent and every run stays on Lambda.
    launcher_env = {
        "LIFEBOAT_FARGATE_CLUSTER": if_("HasFargate", ref("WorkerCluster")),
        "LIFEBOAT_FARGATE_TASK_DEFINITION": if_("HasFargate", ref("WorkerTaskDefinition")),
        "LIFEBOAT_FARGATE_SUBNETS": if_("HasFargate", {"Fn::Join": [",", ref("SubnetIds")]}),
        "LIFEBOAT_FARGATE_SECURITY_GROUPS": if_("HasFargate", {"Fn::Join": [",", ref("SecurityGroupIds")]}),
        "LIFEBOAT_FARGATE_ASSIGN_PUBLIC_IP": if_("HasFargate", ref("FargateAssignPublicIp")),
        "LIFEBOAT_FARGATE_CONTAINER": names.TASK_CONTAINER,
    }
    for fn in model.functions:
        # Chalice creates the same logical id when log_retention_in_days is set: the merge then only
        # pins its name and retention.
        resources[f"{fn.logical_id}LogGroup"] = {"Type": "AWS::Logs::LogGroup", "Properties": {
            "LogGroupName": sub(names.log_group("${Stage}", fn.name)), "RetentionInDays": ref("LogRetentionDays")}}
        if arch is None:
            continue
        props: Json = {
            "FunctionName": sub(names.function_name("${Stage}", fn.name)),
            "Layers": [*fn.layers, ref("PgClientsLayer")],
            "VpcConfig": if_("HasVpc", {"SubnetIds": ref("SubnetIds"), "SecurityGroupIds": ref("SecurityGroupIds")}),
            "Environment": {"Variables": {**env, **(launcher_env if policies.needs(fn.name, "fargate:run") else {})}},
        }
        # The log group first: the function must not create its own (unretained, unfiltered) one. The
        # queue a function consumes, which Chalice's event source names without a reference, comes first
        # too: `env` refers to every queue.
        resources[fn.logical_id] = {"Properties": props, "DependsOn": [f"{fn.logical_id}LogGroup"]}
        if fn.manage_role:
            managed = [if_("HasVpc", sub(
                "arn:${AWS::Partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"))]
            if policies.needs(fn.name, "database"):
                managed.insert(0, ref("DatabaseAccessPolicy"))
                database_roles.append(fn.role_id)
            if policies.needs(fn.name, "fargate:run"):
                managed.append(if_("HasFargate", ref("FargateLaunchPolicy")))
            resources[fn.role_id] = {"Properties": {"ManagedPolicyArns": managed}}
    if arch is not None:
        resources["PgClientsLayer"] = {
            "Type": "AWS::Serverless::LayerVersion",
            "Properties": {
                "LayerName": sub(f"pg-lifeboat-${{Stage}}-pg-clients-{arch.replace('_', '-')}"),
                "Description": "PostgreSQL client programs (pg_dump, pg_restore, psql) and libpq, under /opt/pg",
                # A path next to the packaged template: `aws cloudformation package` uploads it.
                "ContentUri": f"./{layer_zip_name(arch)}",
                "CompatibleRuntimes": [LAYER_RUNTIME],
                "CompatibleArchitectures": [arch],
                "RetentionPolicy": "Delete",
            },
        }
    if database_roles or arch is None:
        resources["DatabaseAccessPolicy"] = {
            "Type": "AWS::IAM::ManagedPolicy",
            "Properties": {"Description": sub("pg-lifeboat ${Stage}: database passwords and IAM database logins"),
                           "PolicyDocument": policies.database_policy()},
        }
    return resources


def outputs(stage: str, arch: str | None) -> Json:
    out: Json = {
        "BucketName": {"Value": ref("BackupBucket"), "Description": "settings.bucket"},
        "KmsKeyArn": {"Value": if_("CreateKmsKey", getatt("BackupKey", "Arn"), ref("KmsKeyArn"))},
        "JobsTableName": {"Value": ref("JobsTable")},
        "AlarmTopicArn": {"Value": ref("AlarmTopic")},
        "DatabaseAccessPolicyArn": {"Value": ref("DatabaseAccessPolicy")},
        "SettingsParameter": {"Value": names.config_path(stage) + "/settings",
                              "Description": "SSM parameter holding the settings JSON (targets under /targets/)"},
        "SettingsJson": {"Value": sub('{"bucket": "${BackupBucket}"}'),
                         "Description": "Minimal settings for the SettingsParameter"},
    }
    for kind in names.QUEUE_KINDS:
        logical = QUEUE_LOGICAL[kind]
        out[f"{logical}QueueUrl"] = {"Value": ref(f"{logical}Queue")}
        out[f"{logical}DeadLetterQueueUrl"] = {"Value": ref(f"{logical}DeadLetterQueue")}
    if arch is not None:
        out["PgClientsLayerArn"] = {"Value": ref("PgClientsLayer")}
        out["WorkerClusterName"] = {"Condition": "HasFargate", "Value": ref("WorkerCluster")}
        out["WorkerTaskDefinitionArn"] = {"Condition": "HasFargate", "Value": ref("WorkerTaskDefinition")}
        out["WorkerLogGroupName"] = {"Condition": "HasFargate", "Value": ref("WorkerLogGroup")}
    return out


# --------------------------------------------------------------------------------------------------
# The long-running worker: an ECS Fargate task of the Dockerfile's image (chalicelib.fargate)

FARGATE_CPU = ("256", "512", "1024", "2048", "4096", "8192", "16384")
FARGATE_ARCH = {"x86_64": "X86_64", "arm64": "ARM64"}
# CloudFormation regex (Java): a repository URI with a tag or a digest; empty turns Fargate off.
IMAGE_URI = r"^$|^[a-z0-9][a-z0-9.-]*(:[0-9]+)?/[a-z0-9._/-]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$"


def fargate_parameters() -> Json:
    return {
        "FargateImageUri": {"Type": "String", "Default": "", "AllowedPattern": IMAGE_URI,
                            "Description": "The worker image (Dockerfile; make image ARCH=<this template's arch>) in an"
                                           " ECR repository of this account and region, by tag or digest. Empty: no"
                                           " Fargate worker, every run stays on Lambda. Needs SubnetIds"},
        "FargateCpu": {"Type": "String", "Default": "1024", "AllowedValues": list(FARGATE_CPU),
                       "Description": "CPU units of the Fargate worker task (1024 = 1 vCPU)"},
        "FargateMemory": {"Type": "String", "Default": "2048", "AllowedPattern": r"^[1-9][0-9]{2,5}$",
                          "Description": "MiB of memory, valid with FargateCpu (1 vCPU: 2048 to 8192 in 1024 steps)"},
        "FargateEphemeralStorageGiB": {"Type": "Number", "Default": 50, "MinValue": 21, "MaxValue": 200,
                                       "Description": "Ephemeral storage of the task (GiB): parallel restores download"
                                                      " the archive there; directory-format dumps stage files"},
        "FargateAssignPublicIp": {"Type": "String", "Default": "DISABLED", "AllowedValues": ["DISABLED", "ENABLED"],
                                  "Description": "ENABLED only in public subnets without a NAT gateway (the task"
                                                 " pulls its image and reaches AWS APIs)"},
    }


def fargate_resources(model: AppModel, arch: str) -> Json:
    """Cluster, task definition, roles, log group and the launch policy of the workers (all HasFargate)."""
    when = {"Condition": "HasFargate"}
    stage_tag = [{"Key": "pg-lifeboat:stage", "Value": ref("Stage")}]
    # The functions' environment, the stack's table and queues, and metrics on: the CLI turns them off
    # by default, the task's EMF lines become BackupSucceeded/BackupFailed like the workers'.
    env: Json = {
        **model.environment,
        "LIFEBOAT_JOBS_TABLE": ref("JobsTable"),
        **{f"LIFEBOAT_{QUEUE_LOGICAL[k].upper()}_QUEUE_URL": ref(f"{QUEUE_LOGICAL[k]}Queue")
           for k in names.QUEUE_KINDS},
        "POWERTOOLS_METRICS_DISABLED": "false",
    }
    return {
        "WorkerCluster": {"Type": "AWS::ECS::Cluster", **when, "Properties": {
            "ClusterName": sub(names.ecs_cluster("${Stage}")),
            "ClusterSettings": [{"Name": "containerInsights", "Value": "disabled"}], "Tags": stage_tag}},
        "WorkerLogGroup": {"Type": "AWS::Logs::LogGroup", **when, "Properties": {
            "LogGroupName": sub(names.task_log_group("${Stage}")), "RetentionInDays": ref("LogRetentionDays")}},
        "WorkerTaskRole": {"Type": "AWS::IAM::Role", **when, "Properties": {
            "Description": sub("pg-lifeboat ${Stage}: the Fargate worker (logical backups and restores)"),
            "AssumeRolePolicyDocument": policies.task_assume_role_policy(),
            "Policies": [{"PolicyName": "lifeboat-worker", "PolicyDocument": policies.task_policy(model.stage)}],
            "ManagedPolicyArns": [ref("DatabaseAccessPolicy")]}},
        "WorkerExecutionRole": {"Type": "AWS::IAM::Role", **when, "Properties": {
            "Description": sub("pg-lifeboat ${Stage}: ECS starts the Fargate worker (image pull, logs)"),
            "AssumeRolePolicyDocument": policies.task_assume_role_policy(),
            "Policies": [{"PolicyName": "ecs-task-execution",
                          "PolicyDocument": policies.task_execution_policy("WorkerLogGroup")}]}},
        "WorkerTaskDefinition": {"Type": "AWS::ECS::TaskDefinition", **when, "Properties": {
            "Family": sub(names.task_family("${Stage}")),
            "RequiresCompatibilities": ["FARGATE"], "NetworkMode": "awsvpc",
            "Cpu": ref("FargateCpu"), "Memory": ref("FargateMemory"),
            "RuntimePlatform": {"CpuArchitecture": FARGATE_ARCH[arch], "OperatingSystemFamily": "LINUX"},
            "EphemeralStorage": {"SizeInGiB": ref("FargateEphemeralStorageGiB")},
            "TaskRoleArn": getatt("WorkerTaskRole", "Arn"), "ExecutionRoleArn": getatt("WorkerExecutionRole", "Arn"),
            "ContainerDefinitions": [{
                "Name": names.TASK_CONTAINER, "Image": ref("FargateImageUri"), "Essential": True,
                "Environment": [{"Name": k, "Value": v} for k, v in sorted(env.items())],
                "LogConfiguration": {"LogDriver": "awslogs", "Options": {
                    "awslogs-group": ref("WorkerLogGroup"), "awslogs-region": ref("AWS::Region"),
                    "awslogs-stream-prefix": "lifeboat"}},
            }],
            "Tags": stage_tag}},
        "FargateLaunchPolicy": {"Type": "AWS::IAM::ManagedPolicy", **when, "Properties": {
            "Description": sub("pg-lifeboat ${Stage}: start the Fargate worker task"),
            "PolicyDocument": policies.fargate_launch_policy("WorkerCluster", "WorkerTaskDefinition",
                                                             "WorkerTaskRole", "WorkerExecutionRole")}},
        # The stack-wide dead-man's switch counts the task's successes too.
        f"Worker{SUCCESS['logical'][0]}Filter": {"Type": "AWS::Logs::MetricFilter", **when, "Properties": {
            "LogGroupName": ref("WorkerLogGroup"), "FilterPattern": f"{{ $.{SUCCESS['logical'][0]}[0] >= 1 }}",
            "MetricTransformations": [{"MetricNamespace": model.metrics_namespace, "MetricName": ANY_SUCCESS_METRIC,
                                       "MetricValue": "1", "Unit": "Count"}]}},
        # A task that could not start or did not exit 0 (a crash, an OOM kill, a failed run) is reported on
        # the alarm topic: nothing else would notice a run that never started.
        "WorkerTaskStoppedRule": {"Type": "AWS::Events::Rule", **when, "Properties": {
            "Description": sub("pg-lifeboat ${Stage}: a Fargate worker task failed to start or exited non-zero"),
            "State": "ENABLED",
            "EventPattern": {"source": ["aws.ecs"], "detail-type": ["ECS Task State Change"], "detail": {
                "clusterArn": [getatt("WorkerCluster", "Arn")], "lastStatus": ["STOPPED"],
                "$or": [{"stopCode": ["TaskFailedToStart"]}, {"containers": {"exitCode": [{"anything-but": 0}]}}]}},
            "Targets": [{"Id": "AlarmTopic", "Arn": ref("AlarmTopic"), "InputTransformer": {
                "InputPathsMap": {"task": "$.detail.taskArn", "stop": "$.detail.stopCode",
                                  "reason": "$.detail.stoppedReason", "exit": "$.detail.containers[0].exitCode"},
                "InputTemplate": sub(
                    '"pg-lifeboat ${Stage}: the Fargate worker task <task> stopped (<stop>: <reason>; exit code'
                    f' <exit>). Its output is in the log group {names.task_log_group("${Stage}")}."')}}]}},
        # A topic policy replaces SNS's default one: CloudWatch alarms keep publishing, and the rule may.
        "AlarmTopicPolicy": {"Type": "AWS::SNS::TopicPolicy", **when, "Properties": {
            "Topics": [ref("AlarmTopic")], "PolicyDocument": {"Version": "2012-10-17", "Statement": [
                {"Sid": "CloudWatchAlarms", "Effect": "Allow", "Principal": {"Service": "cloudwatch.amazonaws.com"},
                 "Action": "sns:Publish", "Resource": ref("AlarmTopic"),
                 "Condition": {"StringEquals": {"aws:SourceAccount": ref("AWS::AccountId")}}},
                {"Sid": "WorkerTaskStopped", "Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"},
                 "Action": "sns:Publish", "Resource": ref("AlarmTopic"),
                 "Condition": {"ArnEquals": {"aws:SourceArn": getatt("WorkerTaskStoppedRule", "Arn")}}}]}}},
    }


def layer_zip_name(arch: str) -> str:
    return f"pg-clients-{arch}.zip"


def build(stage: str, arch: str | None, watched: list[WatchedTarget] | None = None,
          settings_file: Path | None = None) -> Json:
    """The merge template (arch given) or, with arch None, a standalone stack of everything but the
    functions and the layer (for `chalice deploy`)."""
    if arch is not None and arch not in ARCHES:
        raise ValueError(f"arch {arch!r}: use one of {', '.join(ARCHES)}")
    model = load_app(stage)
    problems = policies.wiring_problems(policies.load_chalice_config(), stage, [f.name for f in model.functions])
    if problems:
        raise SystemExit("build_template: IAM policies are not in place:\n  " + "\n  ".join(problems))
    rules, retention = lifecycle(settings_file)
    resources = {**storage_resources(rules), **queue_resources(model), **monitoring_resources(model, watched or []),
                 **function_resources(model, arch)}
    if arch is not None:
        resources.update(fargate_resources(model, arch))
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": f"pg-lifeboat ({stage}): PostgreSQL backups to S3"
                       + ("" if arch else " - storage, queues and alarms for `chalice deploy`"),
        "Parameters": parameters(stage, retention, arch is not None),
        "Conditions": conditions(arch is not None),
        "Resources": resources,
        "Outputs": outputs(stage, arch),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--arch", choices=ARCHES, help="merge template for `chalice package` on this architecture")
    mode.add_argument("--resources-only", action="store_true",
                      help="a standalone template without functions and layer (for `chalice deploy`)")
    parser.add_argument("--out", type=Path, required=True, help="file to write ('-': stdout)")
    parser.add_argument("--target", action="append", default=[], metavar="NAME=INTERVAL[:snapshot]",
                        help="add a dead-man's switch for a target backed up every INTERVAL (e.g. shop=1d,"
                             " db=1d:snapshot for its snapshots)")
    parser.add_argument("--targets", type=Path, help='JSON list of {"name": ..., "interval": "1d", "kind": ...}')
    parser.add_argument("--settings", type=Path,
                        help="settings JSON: lifecycle rules for all its retention policies and its prefix")
    args = parser.parse_args(argv)
    try:
        watched = parse_targets(args.target, args.targets)
    except (ValueError, KeyError, OSError) as exc:
        parser.error(str(exc))
    template = build(args.stage, None if args.resources_only else args.arch, watched, args.settings)
    text = json.dumps(template, indent=2) + "\n"
    if str(args.out) == "-":
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
