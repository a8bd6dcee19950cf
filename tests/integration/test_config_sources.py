"""Configuration from SSM Parameter Store (one parameter per target) and from files, with loud errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import pytest

from chalicelib import config as config_module
from chalicelib.cli import main
from chalicelib.errors import ConfigError
from devstack.local import LocalStack


def put(name: str, value: object) -> None:
    boto3.client("ssm").put_parameter(Name=name, Type="String", Value=json.dumps(value), Overwrite=True)


def test_ssm_settings_and_one_parameter_per_target(aws: LocalStack) -> None:
    put("/pg-lifeboat/test/settings", {"bucket": aws.bucket})
    for i in range(12):
        put(f"/pg-lifeboat/test/targets/db-{i:02d}", {"name": f"db-{i:02d}", "connection": {"host": "h", "user": "u"}})
    cfg = config_module.load("ssm:/pg-lifeboat/test", ssm_client=boto3.client("ssm"))
    assert cfg.settings.bucket == aws.bucket
    assert [t.name for t in cfg.targets] == [f"db-{i:02d}" for i in range(12)]


def test_ssm_error_names_the_target_and_field(aws: LocalStack) -> None:
    put("/pg-lifeboat/bad/settings", {"bucket": aws.bucket})
    put("/pg-lifeboat/bad/targets/orders", {"name": "orders", "connection": {"host": "h", "user": "u", "port": 99999}})
    with pytest.raises(ConfigError, match=r"target 'orders': connection\.port"):
        config_module.load("ssm:/pg-lifeboat/bad", ssm_client=boto3.client("ssm"))


def test_missing_ssm_settings_is_a_clear_error(aws: LocalStack) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration from SSM /pg-lifeboat/none"):
        config_module.load("ssm:/pg-lifeboat/none", ssm_client=boto3.client("ssm"))


def test_cli_validate_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '[settings]\nbucket = "acme-pg-backups"\n\n[[targets]]\nname = "orders"\n'
        '[targets.connection]\nhost = "db"\nuser = "backup"\n'
    )
    assert main(["--config", str(good), "validate"], out=io.StringIO()) == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"settings": {"bucket": "Bad_Bucket"}, "targets": []}))
    assert main(["--config", str(bad), "validate"], out=io.StringIO()) == 2
    assert "settings.bucket" in capsys.readouterr().err
