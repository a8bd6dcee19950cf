"""The template's outputs: what the operator configures the app with (stack/README.md, "Configure")."""

from __future__ import annotations

from stack import names
from stack.template.app_model import QUEUE_LOGICAL
from stack.template.intrinsics import Json, getatt, if_, ref, sub


def outputs(stage: str, arch: str | None) -> Json:
    out: Json = {
        "BucketName": {"Value": ref("BackupBucket"), "Description": "settings.bucket"},
        "KmsKeyArn": {"Value": if_("CreateKmsKey", getatt("BackupKey", "Arn"), ref("KmsKeyArn"))},
        "JobsTableName": {"Value": ref("JobsTable")},
        "AlarmTopicArn": {"Value": ref("AlarmTopic")},
        "DatabaseAccessPolicyArn": {"Value": ref("DatabaseAccessPolicy")},
        "SettingsParameter": {
            "Value": names.config_path(stage) + "/settings",
            "Description": "SSM parameter holding the settings JSON (targets under /targets/)",
        },
        "SettingsJson": {
            "Value": sub('{"bucket": "${BackupBucket}"}'),
            "Description": "Minimal settings for the SettingsParameter",
        },
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
