"""The template's outputs: what the operator configures the app with (stack/README.md, "Configure")."""

from __future__ import annotations

from stack import names
from stack.template.app_model import QUEUE_LOGICAL
from stack.template.intrinsics import Json, if_, ref
from stack.template.storage import key_arn, signing_key_arn

# The settings document the functions need to write what the stack protects: its bucket, its KMS key (the bucket
# policy refuses any other encryption), the key that signs manifests and the Object Lock mode of complete backups.
SETTINGS_LOCKED = (
    '{"bucket": "${Bucket}", "kms_key_id": "${Key}", "signing_key_id": "${SigningKey}", "object_lock_mode": "${Mode}"}'
)
SETTINGS_UNLOCKED = '{"bucket": "${Bucket}", "kms_key_id": "${Key}", "signing_key_id": "${SigningKey}"}'


def outputs(stage: str, arch: str | None) -> Json:
    variables: Json = {"Bucket": ref("BackupBucket"), "Key": key_arn(), "SigningKey": signing_key_arn()}
    out: Json = {
        "BucketName": {"Value": ref("BackupBucket"), "Description": "settings.bucket"},
        "KmsKeyArn": {"Value": key_arn()},
        "SigningKeyArn": {"Value": signing_key_arn(), "Description": "settings.signing_key_id"},
        "JobsTableName": {"Value": ref("JobsTable")},
        "AlarmTopicArn": {"Value": ref("AlarmTopic")},
        "DashboardName": {"Value": ref("Dashboard"), "Description": "the CloudWatch dashboard: every target"},
        "DatabaseAccessPolicyArn": {"Value": ref("DatabaseAccessPolicy")},
        "SettingsParameter": {
            "Value": names.config_path(stage) + "/settings",
            "Description": "SSM parameter holding the settings JSON (targets under /targets/)",
        },
        "SettingsJson": {
            "Value": if_(
                "HasObjectLock",
                {"Fn::Sub": [SETTINGS_LOCKED, {**variables, "Mode": ref("ObjectLockMode")}]},
                {"Fn::Sub": [SETTINGS_UNLOCKED, variables]},
            ),
            "Description": "Minimal settings for the SettingsParameter: the bucket, its KMS keys, the Object Lock mode",
        },
    }
    for kind in names.QUEUE_KINDS:
        logical = QUEUE_LOGICAL[kind]
        out[f"{logical}QueueUrl"] = {"Value": ref(f"{logical}Queue")}
        out[f"{logical}DeadLetterQueueUrl"] = {"Value": ref(f"{logical}DeadLetterQueue")}
    if arch is not None:
        out["PgClientsLayerArn"] = {"Value": ref("PgClientsLayer")}
        out["OperatorApiPolicyArn"] = {
            "Value": ref("OperatorApiPolicy"),
            "Description": "attach to an operator's role, user or group: execute-api:Invoke on every API route",
        }
        out["WorkerClusterName"] = {"Condition": "HasFargate", "Value": ref("WorkerCluster")}
        out["WorkerTaskDefinitionArn"] = {"Condition": "HasFargate", "Value": ref("WorkerTaskDefinition")}
        out["WorkerLogGroupName"] = {"Condition": "HasFargate", "Value": ref("WorkerLogGroup")}
    return out
