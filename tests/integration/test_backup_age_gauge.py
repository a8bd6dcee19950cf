"""The dispatcher's dead-man's gauge against S3 (moto): what it reads from the bucket and the EMF lines it writes,
which the stack's BackupsOverdueAlarm and dashboard read (stack/template/monitoring.py, dashboard.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib.entrypoints import dispatch_tick
from chalicelib.logical.catalog import BackupId, Layout
from devstack.local import LocalStack, target, write_config

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)  # a quarter-hour tick: the gauge is measured


def _emf(out: str) -> list[dict[str, Any]]:
    return [line for line in map(json.loads, filter(None, out.splitlines())) if "_aws" in line]


@pytest.fixture
def two_targets(aws: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    targets = [target(name, 5432, aws.secret_arn) for name in ("fresh", "late")]  # daily at 03:00
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(write_config(tmp_path / "lifeboat.json", aws.bucket, targets)))
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    s3 = boto3.client("s3")
    for name, slot in (("fresh", datetime(2026, 3, 10, 3, tzinfo=UTC)), ("late", datetime(2026, 3, 8, 3, tzinfo=UTC))):
        s3.put_object(Bucket=aws.bucket, Key=Layout().manifest_key(BackupId(name, slot)), Body=b"{}")
    # A manifest of a slot in the future is not believed (catalog.is_future): it must not hide a late target.
    s3.put_object(
        Bucket=aws.bucket, Key=Layout().manifest_key(BackupId("late", datetime(2026, 3, 11, 3, tzinfo=UTC))), Body=b"{}"
    )


@pytest.mark.usefixtures("two_targets")
def test_a_quarter_hour_tick_records_each_targets_age_and_the_count_overdue(capsys: pytest.CaptureFixture[str]) -> None:
    result = dispatch_tick(NOW.isoformat())
    assert result["overdue"] == ["late"]
    lines = _emf(capsys.readouterr().out)
    by_metric: dict[str, dict[str, float]] = {}
    for line in lines:
        (metric,) = (m["Name"] for d in line["_aws"]["CloudWatchMetrics"] for m in d["Metrics"])
        value = line[metric]
        by_metric.setdefault(metric, {})[line.get("target", "")] = value[0] if isinstance(value, list) else value
    assert by_metric["NewestBackupAgeSeconds"] == {"fresh": 9 * 3600, "late": 2 * 86400 + 9 * 3600}
    assert by_metric["BackupOverdue"] == {"fresh": 0, "late": 1}
    assert by_metric["TargetsOverdue"] == {"": 1}
    (count,) = (line for line in lines if "TargetsOverdue" in line)
    assert count["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]


@pytest.mark.usefixtures("two_targets")
def test_other_ticks_do_not_list_the_bucket(capsys: pytest.CaptureFixture[str]) -> None:
    assert dispatch_tick(NOW.replace(minute=7).isoformat())["overdue"] is None
    assert not [line for line in _emf(capsys.readouterr().out) if "TargetsOverdue" in line]
