"""--stack NAME: the CLI configures itself from a deployed stack's outputs (the names of
stack/template/outputs.py), in moto's CloudFormation; a stack that does not exist is bad input (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from chalicelib import env
from devstack.local import LocalStack
from stack.template.outputs import outputs
from tests.cli.conftest import Lifeboat

STACK = "pg-lifeboat-test"
CONFIG_PATH = "/pg-lifeboat/test"


def test_the_outputs_read_are_the_templates() -> None:
    """The names chalicelib.env reads are outputs the template declares (chalicelib cannot import stack/)."""
    declared = outputs("prod", "arm64")
    assert set(env.STACK_OUTPUTS) <= set(declared)
    assert declared["SettingsParameter"]["Value"].endswith(env.SETTINGS_SUFFIX)
    assert declared["SettingsParameter"]["Value"] == "/pg-lifeboat/prod/settings"


def create_stack(outputs: dict[str, str]) -> None:
    """A stack with these outputs (and one resource: CloudFormation needs one)."""
    template = {
        "Resources": {
            "Marker": {"Type": "AWS::SSM::Parameter", "Properties": {"Name": "/marker", "Type": "String", "Value": "x"}}
        },
        "Outputs": {name: {"Value": value} for name, value in outputs.items()},
    }
    boto3.client("cloudformation").create_stack(StackName=STACK, TemplateBody=json.dumps(template))


@pytest.fixture
def deployed(aws: LocalStack, monkeypatch: pytest.MonkeyPatch) -> LocalStack:
    """The devstack's table, queues and bucket as a deployed stack's outputs; its configuration in SSM; and an
    environment that points nowhere (the stack must be what configures the CLI)."""
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name=f"{CONFIG_PATH}/settings", Type="String", Value=json.dumps({"bucket": aws.bucket}))
    target = {"name": "shop", "connection": {"host": "127.0.0.1", "port": 5432, "user": "u", "password_secret": "s"}}
    ssm.put_parameter(Name=f"{CONFIG_PATH}/targets/shop", Type="String", Value=json.dumps(target))
    create_stack(
        {
            "BucketName": aws.bucket,
            "KmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/test",
            "SigningKeyArn": "arn:aws:kms:us-east-1:123456789012:key/signing",
            "JobsTableName": aws.jobs_table,
            "SettingsParameter": f"{CONFIG_PATH}/settings",
            "BackupQueueUrl": aws.queue_url,
            "RestoreQueueUrl": aws.restore_queue_url,
        }
    )
    for name in ("LIFEBOAT_CONFIG", "LIFEBOAT_JOBS_TABLE", "LIFEBOAT_BACKUP_QUEUE_URL", "LIFEBOAT_RESTORE_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)
    return aws


def test_the_stack_configures_the_cli(deployed: LocalStack, lifeboat: Lifeboat) -> None:
    assert lifeboat("restores").code == 2  # without the stack: no table, no queue
    ran = lifeboat("validate", "--stack", STACK, "--json")
    assert ran.code == 0, ran
    assert ran.json() == {
        "status": "OK",
        "config": f"ssm:{CONFIG_PATH}",
        "targets": ["shop"],
        "bucket": deployed.bucket,
        "jobs_table": deployed.jobs_table,
        "backup_queue_url": deployed.queue_url,
        "restore_queue_url": deployed.restore_queue_url,
    }
    restores = lifeboat("--stack", STACK, "restores", "--json")  # the jobs table and the restore queue
    assert restores.code == 0 and restores.json() == [], restores
    human = lifeboat("--stack", STACK, "validate")
    assert human.out == f"configuration OK: 1 target(s), bucket {deployed.bucket} (ssm:{CONFIG_PATH})\n"


def test_config_wins_over_the_stacks(deployed: LocalStack, lifeboat: Lifeboat, tmp_path: Path) -> None:
    local = tmp_path / "local.json"
    local.write_text(json.dumps({"settings": {"bucket": "some-other-bucket"}, "targets": []}))
    ran = lifeboat("--stack", STACK, "--config", str(local), "restores", "--json")
    assert ran.code == 0 and ran.json() == []
    # validate says when the configuration is not the stack's bucket
    ran = lifeboat("--stack", STACK, "--config", str(local), "validate")
    assert ran.code == 2 and "settings.bucket is 'some-other-bucket' but stack" in ran.err


def test_a_missing_stack_is_bad_input(deployed: LocalStack, lifeboat: Lifeboat) -> None:
    ran = lifeboat("--stack", "nosuch", "list")
    assert ran.code == 2 and ran.out == ""
    assert ran.err == (
        "lifeboat: stack 'nosuch' does not exist in us-east-1: check --stack (the name given to"
        " `aws cloudformation deploy`), --region and --profile\n"
    )
    ran = lifeboat("--stack", "nosuch", "list", "--json")
    assert ran.code == 2 and ran.err == ""
    assert ran.json() == {
        "status": "FAILED",
        "error": {"code": "invalid_config", "message": ran.json()["error"]["message"]},
    }
    assert "stack 'nosuch' does not exist" in ran.json()["error"]["message"]


def test_a_stack_without_the_outputs_is_bad_input(aws: LocalStack, lifeboat: Lifeboat) -> None:
    create_stack({"BucketName": aws.bucket})
    ran = lifeboat("--stack", STACK, "validate")
    assert ran.code == 2
    assert "has no output BackupQueueUrl, JobsTableName, RestoreQueueUrl, SettingsParameter" in ran.err
