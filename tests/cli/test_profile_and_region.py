"""--profile and --region reach every client: with AWS_PROFILE naming a profile in eu-west-1 (and no AWS_REGION),
everything the CLI touches is in eu-west-1 (the resources exist only there, in moto), and --region overrides it."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from chalicelib import wiring
from devstack.aws import MotoServer
from tests.cli.conftest import Lifeboat

REGION = "eu-west-1"
CONFIG_PATH = "/pg-lifeboat/eu"


@pytest.fixture
def eu_profile(moto_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """AWS_PROFILE=lifeboat-eu from a temporary AWS config file: region eu-west-1; no region in the environment."""
    moto_server.reset()
    config = tmp_path / "aws-config"
    keys = "aws_access_key_id = testing\naws_secret_access_key = testing\n"  # a named profile: its own keys
    config.write_text(
        f"[profile lifeboat-eu]\nregion = {REGION}\n{keys}\n[profile lifeboat-ap]\nregion = ap-southeast-2\n{keys}"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_DEFAULT_PROFILE", "LIFEBOAT_CONFIG", "LIFEBOAT_JOBS_TABLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_PROFILE", "lifeboat-eu")
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED")  # an operator's shell: no metrics (the moto fixture's are on)
    return config


@pytest.fixture
def eu_resources(eu_profile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A configuration in SSM, an RDS instance to snapshot and a bucket: in eu-west-1 only."""
    session = boto3.session.Session()  # the profile as configured now (boto3's default session may be older)
    ssm = session.client("ssm", region_name=REGION)
    ssm.put_parameter(
        Name=f"{CONFIG_PATH}/settings", Type="String", Value=json.dumps({"bucket": "lifeboat-eu-backups"})
    )
    target = {"name": "shop", "physical": {"method": "rds_instance", "db_instance_id": "shop-db"}}
    ssm.put_parameter(Name=f"{CONFIG_PATH}/targets/shop", Type="String", Value=json.dumps(target))
    session.client("s3", region_name=REGION).create_bucket(
        Bucket="lifeboat-eu-backups", CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    session.client("rds", region_name=REGION).create_db_instance(
        DBInstanceIdentifier="shop-db",
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        AllocatedStorage=20,
        MasterUsername="admin",
        MasterUserPassword="not-used-here-1",
    )
    monkeypatch.setenv("LIFEBOAT_CONFIG", f"ssm:{CONFIG_PATH}")


def made_regions() -> set[str]:
    return {key[1] for key in wiring.client._made}


def test_every_client_wiring_builds_follows_the_profile(eu_profile: Path, lifeboat: Lifeboat) -> None:
    assert wiring.region() == REGION
    for service in wiring.SERVICES:
        assert wiring.client.get(service).meta.region_name == REGION, service
    assert wiring.client("ssm").meta.region_name == REGION
    with wiring.configured(region="us-west-2"):
        assert {wiring.client.get(s).meta.region_name for s in wiring.SERVICES} == {"us-west-2"}
    with wiring.configured(profile="lifeboat-ap"):
        assert {wiring.client.get(s).meta.region_name for s in wiring.SERVICES} == {"ap-southeast-2"}
    with pytest.raises(ValueError, match=r"not in wiring\.SERVICES"):
        wiring.client.get("lambda")


@pytest.mark.usefixtures("eu_resources")
def test_the_commands_work_in_the_profiles_region(lifeboat: Lifeboat) -> None:
    validated = lifeboat("validate", "--json")
    assert validated.code == 0 and validated.json()["targets"] == ["shop"], validated
    listed = lifeboat("list", "--json")
    assert listed.code == 0 and listed.json() == [], listed
    started = lifeboat("snapshot", "shop", "--json")
    assert started.code == 0, started
    snapshot = started.json()
    assert snapshot["region"] == REGION and snapshot["status"] == "STARTED", snapshot
    made = (
        boto3.session.Session()
        .client("rds", region_name=REGION)
        .describe_db_snapshots(DBInstanceIdentifier="shop-db", SnapshotType="manual")
    )
    assert [s["DBSnapshotIdentifier"] for s in made["DBSnapshots"]] == snapshot["resource_ids"]
    assert made_regions() == {REGION}, wiring.client._made.keys()
    assert {key[0] for key in wiring.client._made} >= {"ssm", "s3", "rds"}


@pytest.mark.usefixtures("eu_resources")
def test_region_overrides_the_profile(lifeboat: Lifeboat) -> None:
    elsewhere = lifeboat("--region", "us-west-2", "validate")
    assert elsewhere.code == 2 and "cannot read the configuration from SSM /pg-lifeboat/eu" in elsewhere.err
    assert made_regions() == {"us-west-2"}
    assert lifeboat("--profile", "lifeboat-ap", "validate").code == 2
    assert made_regions() == {"ap-southeast-2"}
    assert lifeboat("validate", "--region", REGION, "--profile", "lifeboat-ap").code == 0
    assert made_regions() == {REGION}


def test_an_unknown_profile_is_bad_input(eu_profile: Path, lifeboat: Lifeboat) -> None:
    ran = lifeboat("--profile", "nosuch", "--config", "ssm:/x", "validate")
    assert ran.code == 2 and ran.out == ""
    assert ran.err.count("\n") == 1 and "AWS profile 'nosuch' is not in the AWS config files" in ran.err
    ran = lifeboat("--profile", "nosuch", "--config", "ssm:/x", "validate", "--json")
    assert ran.code == 2 and ran.err == "" and ran.json()["error"]["code"] == "invalid_config"
