"""The WAL stream services (`stack.package --wal-target NAME`) and the drills' alarms in the packaged template:
cfn-lint clean, one Fargate service per target running `lifeboat wal-stream NAME` (never two tasks at once), its own
role and alarms under HasFargate, listed on the dashboard only when they exist."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stack.template.fargate import check_wal_targets
from stack.template.monitoring import DRILLS_OVERDUE_METRIC, WAL_HEARTBEAT_METRIC
from tests.stack.conftest import REPO, Packaged, packaging_env, wheelhouse
from tests.stack.test_template import cfn_lint, emitted_metrics, errors_of


@pytest.fixture(scope="module")
def wal_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("wal")
    cmd = [sys.executable, "-m", "stack.package", "--stage", "dev", "--arch", "arm64", "--out", str(out)]
    cmd += ["--no-layer-zip", "--wal-target", "shop", "--wal-target", "billing-eu"]
    wh = wheelhouse()
    proc = subprocess.run(
        [*cmd, *(["--wheelhouse", str(wh)] if wh else [])],
        cwd=REPO,
        env=packaging_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if proc.returncode == 3:
        pytest.skip(f"chalice cannot fetch the dependency wheels: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "sam.json", json.loads((out / "sam.json").read_text())


def test_the_template_with_wal_streams_passes_cfn_lint(wal_template: tuple[Path, dict[str, Any]]) -> None:
    errors = errors_of(cfn_lint(wal_template[0]))
    assert not errors, "\n".join(errors)


def test_one_service_per_target_runs_wal_stream(wal_template: tuple[Path, dict[str, Any]]) -> None:
    resources = wal_template[1]["Resources"]
    services = {k: v for k, v in resources.items() if v["Type"] == "AWS::ECS::Service"}
    assert set(services) == {"WalStreamShopService", "WalStreamBillingEuService"}
    for logical, service in services.items():
        props = service["Properties"]
        assert service["Condition"] == "HasFargate"
        assert props["DesiredCount"] == 1
        assert props["DeploymentConfiguration"] == {"MaximumPercent": 100, "MinimumHealthyPercent": 0}
        task = resources[props["TaskDefinition"]["Ref"]]["Properties"]
        (container,) = task["ContainerDefinitions"]
        target = "shop" if "Shop" in logical else "billing-eu"
        assert container["Command"] == ["wal-stream", target]
        assert container["Image"] == {"Ref": "FargateImageUri"}  # the worker's image
        role = resources[task["TaskRoleArn"]["Fn::GetAtt"][0]]["Properties"]
        assert role["ManagedPolicyArns"] == [{"Ref": "DatabaseAccessPolicy"}]  # the replication login's secret
        text = json.dumps(role["Policies"])
        assert f"wal/{target}/" in text and ("wal/shop/" in text) == (target == "shop")  # its own prefix only


def test_wal_alarms_exist_with_their_services_and_on_the_dashboard(wal_template: tuple[Path, dict[str, Any]]) -> None:
    resources = wal_template[1]["Resources"]
    alarms = {k: v for k, v in resources.items() if k.startswith("WalStreamShop") and k.endswith("Alarm")}
    assert set(alarms) == {"WalStreamShopNotStreamingAlarm", "WalStreamShopSlotAlarm", "WalStreamShopGapAlarm"}
    assert all(a["Condition"] == "HasFargate" for a in alarms.values())
    beat = alarms["WalStreamShopNotStreamingAlarm"]["Properties"]
    assert (beat["MetricName"], beat["TreatMissingData"]) == (WAL_HEARTBEAT_METRIC, "breaching")
    assert {"WalStreamHeartbeat", "WalGaps"} <= set(emitted_metrics())
    body = json.dumps(resources["Dashboard"]["Properties"]["DashboardBody"])
    for name in alarms:
        assert f'{{"Fn::If": ["HasFargate", {{"Fn::Join": ["", [", \\"", {{"Fn::GetAtt": ["{name}", "Arn"]}}' in body


def test_drill_alarms_follow_the_targets_in_ssm(packaged: Packaged) -> None:
    alarms = packaged.of_type("AWS::CloudWatch::Alarm")
    for failure in ("DrillFailedAlarm", "DrillRtoExceededAlarm"):
        (query,) = alarms[failure]["Properties"]["Metrics"]
        assert "FROM SCHEMA(" in query["Expression"] and "SEARCH" not in query["Expression"]
    overdue = alarms["DrillsOverdueAlarm"]["Properties"]
    assert overdue["MetricName"] == DRILLS_OVERDUE_METRIC in emitted_metrics()
    assert [d["Name"] for d in overdue["Dimensions"]] == ["service"]  # no target: one alarm, whatever SSM holds


@pytest.mark.parametrize("names", [["Shop"], ["shop", "shop"], ["a_b"], ["x" * 41]])
def test_bad_wal_targets_are_refused(names: list[str]) -> None:
    with pytest.raises(ValueError, match="--wal-target"):
        check_wal_targets(names)
