"""The template's parameters (what a deployment chooses) and conditions."""

from __future__ import annotations

from stack import names
from stack.template.fargate import fargate_parameters
from stack.template.intrinsics import Json, not_empty, ref
from stack.template.vault import vault_conditions, vault_parameters

STAGE_PATTERN = r"^[a-z][a-z0-9-]{0,19}$"  # stack.package.STAGE_NAME; 20 characters keep bucket names <= 63
# fmt: off
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
                      2922, 3288, 3653)  # what CloudWatch Logs accepts
# fmt: on


def parameters(stage: str, retention: dict[str, Json], with_functions: bool) -> Json:
    """`retention`: the lifecycle rules' parameters (storage.lifecycle)."""
    params = {**_bucket_parameters(stage, retention), **_runtime_parameters(stage)}
    if not with_functions:  # `chalice deploy` takes subnets and security groups from config.json
        del params["SubnetIds"], params["SecurityGroupIds"]
    else:
        params.update(fargate_parameters())
    return params


def _bucket_parameters(stage: str, retention: dict[str, Json]) -> Json:
    return {
        "Stage": {
            "Type": "String",
            "Default": stage,
            "AllowedPattern": STAGE_PATTERN,
            "ConstraintDescription": "a stage name: a lowercase letter, then up to 19 lowercase letters, digits or"
            " hyphens (it is part of the bucket's, queues' and functions' names)",
            "Description": "The stage: any name of the pattern, packaged with `make package STAGE=<name>` (the"
            " functions' policies and queue event sources are fixed at packaging; the template's Rules refuse"
            " another stage than the packaged one)",
        },
        "KmsKeyArn": {
            "Type": "String",
            "Default": "",
            "AllowedPattern": r"^$|^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[a-zA-Z0-9-]+$",
            "Description": "Existing KMS key for the bucket; empty: the stack creates one",
        },
        "ObjectLockMode": {
            "Type": "String",
            "Default": "GOVERNANCE",
            "AllowedValues": ["GOVERNANCE", "COMPLIANCE", "NONE"],
            "Description": "S3 Object Lock mode of complete backups (locked until their retention class ends):"
            " GOVERNANCE (only a principal with s3:BypassGovernanceRetention, which no function has, may shorten or"
            " remove a lock) or COMPLIANCE (nobody may, not even the account root); NONE turns Object Lock off."
            " Decide before the first deploy",
        },
        **retention,
        "GlacierTransitionDays": {
            "Type": "Number",
            "Default": 0,
            "MinValue": 0,
            "MaxValue": 36500,
            "Description": "Move monthly and yearly backups to GlacierStorageClass after"
            " this many days; 0: never. Must be below their retention days",
        },
        "GlacierStorageClass": {
            "Type": "String",
            "Default": "GLACIER_IR",
            "AllowedValues": ["GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"],
            "Description": "GLACIER_IR keeps restores immediate; GLACIER and DEEP_ARCHIVE need an"
            " S3 restore request before pg-lifeboat can read a backup",
        },
        **vault_parameters(),
    }


def _runtime_parameters(stage: str) -> Json:
    return {
        "SubnetIds": {
            "Type": "CommaDelimitedList",
            "Default": "",
            "Description": "Private subnets for the functions (reaching RDS); empty: no VPC",
        },
        "SecurityGroupIds": {
            "Type": "CommaDelimitedList",
            "Default": "",
            "Description": "Security groups for the functions; required with SubnetIds",
        },
        "SecretsPrefix": {
            "Type": "String",
            "Default": names.secrets_prefix(stage),
            "MinLength": 1,
            "Description": "Functions may read Secrets Manager secrets whose names start with this",
        },
        "RdsDbUserArns": {
            "Type": "CommaDelimitedList",
            "Default": "",
            "Description": "rds-db:connect resources for IAM database authentication, e.g."
            " arn:aws:rds-db:eu-west-1:111122223333:dbuser:*/lifeboat_backup",
        },
        "AlarmEmail": {"Type": "String", "Default": "", "Description": "Subscribe this address to the alarm topic"},
        "LogRetentionDays": {
            "Type": "Number",
            "Default": 90,
            "AllowedValues": list(LOG_RETENTION_DAYS),
            "Description": "Retention of the functions' log groups",
        },
        "NoBackupAlarmPeriodSeconds": {
            "Type": "Number",
            "Default": 90000,
            "MinValue": 3600,
            "MaxValue": 604800,
            "Description": "The stack-wide dead-man's switch fires when no backup of any"
            " target succeeded for this long (a multiple of 60)",
        },
    }


def stage_rules(stage: str) -> Json:
    """A clear refusal of a Stage other than the packaged one, whose resources the policy files do not name."""
    return {
        "StageIsThePackagedOne": {
            "Assertions": [
                {
                    "Assert": {"Fn::Equals": [ref("Stage"), stage]},
                    "AssertDescription": f"This template was packaged for stage {stage!r}: its functions' IAM"
                    " policies and queue event sources name that stage's resources. For another stage, add it to"
                    " .chalice/config.json (as dev is), run `python -m stack.policies --write`, then"
                    " `make package STAGE=<name>` and deploy that template.",
                }
            ]
        }
    }


def conditions(with_functions: bool) -> Json:
    conds = {
        "CreateKmsKey": {"Fn::Equals": [ref("KmsKeyArn"), ""]},
        "HasObjectLock": {"Fn::Not": [{"Fn::Equals": [ref("ObjectLockMode"), "NONE"]}]},
        "HasGlacierTransition": {"Fn::Not": [{"Fn::Equals": [ref("GlacierTransitionDays"), 0]}]},
        "HasVpc": not_empty({"Fn::Join": ["", ref("SubnetIds")]}),
        "HasRdsIamUsers": not_empty({"Fn::Join": ["", ref("RdsDbUserArns")]}),
        "HasAlarmEmail": not_empty(ref("AlarmEmail")),
        **vault_conditions(),
    }
    if not with_functions:
        del conds["HasVpc"]
    else:  # the Fargate worker: an image to run and subnets to run it in
        conds["HasFargate"] = {"Fn::And": [{"Condition": "HasVpc"}, not_empty(ref("FargateImageUri"))]}
    return conds
