"""The dashboard and the dead-man's switch that follow the targets in SSM, the operators' API policy and the Stage
parameter, in the packaged template (cfn-lint runs over the same template in test_template.py)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from stack.template.dashboard import dashboard_body
from stack.template.monitoring import OVERDUE_METRIC
from stack.template.parameters import STAGE_PATTERN
from tests.stack.conftest import Packaged
from tests.stack.test_template import emitted_metrics

SEARCH = re.compile(r"SEARCH\('\{(\w+),service,target\} service=\"(\w+)\" MetricName=\"(\w+)\"', '(\w+)', (\d+)\)")


def rendered_body(packaged: Packaged) -> dict[str, Any]:
    """The DashboardBody as CloudFormation renders it, with a region and alarm ARNs filled in."""
    body = packaged.resources["Dashboard"]["Properties"]["DashboardBody"]
    text = ""
    for part in body["Fn::Join"][1]:
        if isinstance(part, str):
            text += part
        elif part == {"Ref": "AWS::Region"}:
            text += "eu-west-1"
        else:
            logical, attribute = part["Fn::GetAtt"]
            assert attribute == "Arn"
            assert packaged.resources[logical]["Type"] == "AWS::CloudWatch::Alarm", logical
            text += f"arn:aws:cloudwatch:eu-west-1:111122223333:alarm:{logical}"
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def test_the_dashboard_graphs_every_target_by_search(packaged: Packaged) -> None:
    widgets = rendered_body(packaged)["widgets"]
    graphs = [w for w in widgets if w["type"] == "metric"]
    searched = []
    for widget in graphs:
        assert widget["properties"]["region"] == "eu-west-1"
        for line in widget["properties"]["metrics"]:
            expression = line[0].get("expression", "") if isinstance(line[0], dict) else ""
            if expression.startswith("SEARCH"):
                m = SEARCH.fullmatch(expression)
                assert m, expression
                assert m.group(1, 2) == ("PgLifeboat", "lifeboat")
                searched.append(m.group(3))
    # The facts of `lifeboat status`, per target: freshness, size, duration, failures, snapshots.
    assert {
        "NewestBackupAgeSeconds",
        "BackupOverdue",
        "BackupBytes",
        "BackupDuration",
        "BackupFailed",
        "ManagedSnapshots",
        "SnapshotFailed",
        "SnapshotSucceeded",
    } <= set(searched)
    assert set(searched) <= set(emitted_metrics()), "a graph searches a metric no code in chalicelib records"
    assert "shop" not in json.dumps(widgets), "a widget names a target: it would not follow the targets in SSM"


def test_the_dashboard_lists_every_alarm_and_its_widgets_do_not_overlap(packaged: Packaged) -> None:
    widgets = rendered_body(packaged)["widgets"]
    (status,) = [w for w in widgets if w["type"] == "alarm"]
    alarms = packaged.of_type("AWS::CloudWatch::Alarm")
    assert {a.rsplit(":", 1)[1] for a in status["properties"]["alarms"]} == set(alarms)
    cells: set[tuple[int, int]] = set()
    for w in widgets:
        assert w["x"] >= 0 and w["x"] + w["width"] <= 24
        area = {(x, y) for x in range(w["x"], w["x"] + w["width"]) for y in range(w["y"], w["y"] + w["height"])}
        assert not area & cells, w
        cells |= area


def test_dashboard_body_keeps_dynamic_labels_out_of_fn_sub() -> None:
    body = dashboard_body("PgLifeboat", "lifeboat", ["NoBackupAlarm"])
    assert set(body) == {"Fn::Join"}
    text = "".join(p for p in body["Fn::Join"][1] if isinstance(p, str))
    assert "${PROP('Dim.target')}" in text
    assert "@@" not in text  # every placeholder was replaced by its intrinsic


def test_one_dead_mans_alarm_follows_the_targets_in_ssm(
    packaged: Packaged, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    alarms = packaged.of_type("AWS::CloudWatch::Alarm")
    props = alarms["BackupsOverdueAlarm"]["Properties"]
    assert props["MetricName"] == OVERDUE_METRIC
    assert (props["Statistic"], props["Threshold"], props["ComparisonOperator"]) == (
        "Maximum",
        1,
        "GreaterThanOrEqualToThreshold",
    )
    assert props["TreatMissingData"] == "breaching"  # the dispatcher stopped measuring: page
    assert props["Period"] >= 2 * 15 * 60  # one missed measurement is not missing data
    for name, alarm in alarms.items():  # CloudWatch refuses alarms on SEARCH expressions
        assert "SEARCH(" not in json.dumps(alarm["Properties"].get("Metrics", [])), name

    # The alarm's namespace and dimensions are those of the dispatcher's EMF line.
    from chalicelib.observability import record

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    record(OVERDUE_METRIC, 1, "Count")
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    emf = line["_aws"]["CloudWatchMetrics"][0]
    assert emf["Namespace"] == props["Namespace"]
    assert emf["Dimensions"] == [[d["Name"] for d in props["Dimensions"]]]
    assert all(line[d["Name"]] == d["Value"] for d in props["Dimensions"])
    assert OVERDUE_METRIC in emitted_metrics()


def test_operators_get_a_policy_for_every_route(packaged: Packaged) -> None:
    from chalicelib.openapi import build

    assert "RestAPI" in packaged.resources
    policy = packaged.resources["OperatorApiPolicy"]["Properties"]["PolicyDocument"]
    (statement,) = policy["Statement"]
    assert statement["Action"] == "execute-api:Invoke"
    granted = {r["Fn::Sub"].split("${RestAPI}/", 1)[1] for r in statement["Resource"]}
    routes = {
        f"api/{method.upper()}{re.sub(r'{[^}]+}', '*', path)}"
        for path, operations in build()["paths"].items()
        for method in operations
    }
    assert granted == routes
    assert packaged.template["Outputs"]["OperatorApiPolicyArn"]["Value"] == {"Ref": "OperatorApiPolicy"}


@pytest.mark.parametrize("name", ["dev", "prod", "staging", "qa-2", "eu1"])
def test_stage_names_of_the_pattern_are_accepted(name: str) -> None:
    assert re.fullmatch(STAGE_PATTERN, name)


@pytest.mark.parametrize("name", ["Prod", "1dev", "dev_1", "", "a" * 21])
def test_other_stage_names_are_refused(name: str) -> None:
    assert not re.fullmatch(STAGE_PATTERN, name)


def test_the_stage_parameter_is_a_pattern_and_the_rules_name_the_packaged_stage(packaged: Packaged) -> None:
    stage = packaged.template["Parameters"]["Stage"]
    assert "AllowedValues" not in stage
    assert (stage["AllowedPattern"], stage["Default"]) == (STAGE_PATTERN, packaged.variant.stage)
    (assertion,) = packaged.template["Rules"]["StageIsThePackagedOne"]["Assertions"]
    assert assertion["Assert"] == {"Fn::Equals": [{"Ref": "Stage"}, packaged.variant.stage]}
    assert "make package STAGE=" in assertion["AssertDescription"]
