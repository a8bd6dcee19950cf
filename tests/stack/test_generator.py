"""stack/template's pure parts: intervals, per-target alarms, lifecycle rules from chalicelib."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stack import policies
from stack.template.app_model import AppModel, Function, queue_environment, queue_kind, schedule_seconds
from stack.template.monitoring import monitoring_resources
from stack.template.storage import lifecycle
from stack.template.targets import WatchedTarget, parse_interval, parse_targets


@pytest.mark.parametrize(
    ("text", "seconds"), [("3600", 3600), ("90m", 5400), ("6h", 21600), ("1d", 86400), ("6d", 6 * 86400)]
)
def test_parse_interval(text: str, seconds: int) -> None:
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "1w", "-1d", "60", "7d", "1.5h"])
def test_parse_interval_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_interval(text)


def test_window_adds_grace_in_whole_minutes_within_seven_days() -> None:
    assert WatchedTarget("a", 3600).window == 7200  # at least an hour of grace
    assert WatchedTarget("a", 86400).window == 86400 + 21600  # a quarter of the interval
    assert WatchedTarget("a", 6 * 86400).window == 7 * 86400  # CloudWatch's limit
    assert WatchedTarget("a", 301 * 60 + 1).window % 60 == 0


def test_parse_targets(tmp_path: Path) -> None:
    f = tmp_path / "targets.json"
    f.write_text(json.dumps([{"name": "billing", "interval": "6h"}]))
    assert parse_targets(["shop=1d"], f) == [WatchedTarget("shop", 86400), WatchedTarget("billing", 21600)]
    for bad in (["shop"], ["Shop=1d"], ["a-b=1d", "aB=1d"]):
        with pytest.raises(ValueError):
            parse_targets(bad, None)


def test_lifecycle_rules_come_from_chalicelib() -> None:
    from chalicelib.config import Settings
    from chalicelib.logical.catalog import Layout
    from chalicelib.scheduling.retention import lifecycle_rules

    settings = Settings(bucket="placeholder-bucket-name")
    source = lifecycle_rules(settings, Layout(settings.prefix).failed_prefix)
    rules, params = lifecycle(None)
    assert [r["Id"] for r in rules] == [r["ID"] for r in source] + ["lifeboat-noncurrent-versions"]
    for generated, original in zip(rules, source, strict=False):
        if "Expiration" in original:
            days = generated["ExpirationInDays"]
            assert (
                days == original["Expiration"]["Days"]
                or params[days["Ref"]]["Default"] == original["Expiration"]["Days"]
            )


def test_settings_file_adds_every_policy_with_fixed_days(tmp_path: Path) -> None:
    f = tmp_path / "settings.json"
    f.write_text(
        json.dumps(
            {
                "bucket": "my-bucket",
                "prefix": "pg/",
                "retention_policies": {
                    "default": {},
                    "short": {"daily_days": 3, "weekly_weeks": 0, "monthly_months": 0, "yearly_years": 0},
                },
            }
        )
    )
    rules, params = lifecycle(f)
    short = [r for r in rules if r["Id"].startswith("lifeboat-short-")]
    assert [(r["Id"], r["ExpirationInDays"]) for r in short] == [
        ("lifeboat-short-daily", 3),
        ("lifeboat-short-ondemand", 3),
    ]
    assert all(r.get("Prefix") == "pg/" for r in rules if r["Id"] != "lifeboat-failed-records" and "wal" not in r["Id"])
    assert next(r for r in rules if "wal" in r["Id"])["Prefix"] == "pg/wal/"
    assert set(params) == {
        "DailyRetentionDays",
        "WeeklyRetentionDays",
        "MonthlyRetentionDays",
        "YearlyRetentionDays",
        "OndemandRetentionDays",
        "NoncurrentVersionDays",
    }


def test_queue_kinds_are_the_stage_names() -> None:
    assert queue_kind("pg-lifeboat-dev-backups.fifo", "dev") == "backups"
    assert queue_environment("prod") == {
        "LIFEBOAT_BACKUP_QUEUE": "pg-lifeboat-prod-backups.fifo",
        "LIFEBOAT_RESTORE_QUEUE": "pg-lifeboat-prod-restores",
    }
    with pytest.raises(SystemExit):
        queue_kind("pg-lifeboat-backups", "dev")


def test_overlapping_capabilities_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(policies.ACCESS, "both", ("bucket:read", "bucket:write"))
    with pytest.raises(ValueError, match="overlapping"):
        policies.function_policy("dev", "both")


def test_a_function_without_access_entry_is_reported() -> None:
    config = policies.load_chalice_config()
    problems = policies.wiring_problems(config, "dev", ["dispatcher", "snapshot_taker"])
    assert len(problems) == 1 and "snapshot_taker" in problems[0]


def test_schedule_seconds() -> None:
    from chalice.app import Cron, Rate

    assert schedule_seconds(Rate(1, unit=Rate.MINUTES)) == 60
    assert schedule_seconds(Rate(15, unit=Rate.MINUTES)) == 900
    assert schedule_seconds(Rate(2, unit=Rate.HOURS)) == 7200
    assert schedule_seconds("rate(1 day)") == 86400
    assert schedule_seconds(Cron(45, 4, "*", "*", "?", "*")) == 86400


def test_scheduled_function_error_alarms() -> None:
    model = AppModel(
        stage="dev",
        metrics_namespace="PgLifeboat",
        functions=[
            Function("every_minute", 120, [], True, schedule_seconds=60),
            Function("quarterly_hour", 120, [], True, schedule_seconds=900),
            Function("daily", 120, [], True, schedule_seconds=86400),
        ],
    )
    alarms = monitoring_resources(model, [])
    shape = {
        k: (a["Properties"]["Period"], a["Properties"]["EvaluationPeriods"])
        for k, a in alarms.items()
        if k.endswith("ErrorsAlarm")
    }
    assert shape == {
        "EveryMinuteErrorsAlarm": (300, 3),
        "QuarterlyHourErrorsAlarm": (900, 3),
        "DailyErrorsAlarm": (86400, 1),
    }
