"""retention: grandfather-father-son classes and the S3 lifecycle rules that expire them."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from chalicelib.config import RetentionPolicy, Settings
from chalicelib.scheduling.retention import (
    FAILED_RECORD_DAYS,
    NONCURRENT_VERSION_DAYS,
    POLICY_TAG,
    RETENTION_TAG,
    RetentionClass,
    SnapshotFacts,
    class_days,
    classify,
    lifecycle_rules,
    snapshots_to_keep,
)
from chalicelib.scheduling.schedules import Schedule

D, W, M, Y = RetentionClass.DAILY, RetentionClass.WEEKLY, RetentionClass.MONTHLY, RetentionClass.YEARLY
OD = RetentionClass.ONDEMAND
POLICY = RetentionPolicy()


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


# --- classify ---------------------------------------------------------------------------------------------------------


def test_first_backup_ever_is_yearly() -> None:
    assert classify(at(2026, 6, 17, 3), None, POLICY) is Y


@pytest.mark.parametrize(
    ("previous", "slot", "expected"),
    [
        (at(2025, 12, 31, 3), at(2026, 1, 1, 3), Y),  # new year
        (at(2026, 1, 31, 3), at(2026, 2, 1, 3), M),  # new month
        (at(2026, 3, 1, 3), at(2026, 3, 2, 3), W),  # Sunday -> Monday: new ISO week
        (at(2026, 3, 2, 3), at(2026, 3, 8, 3), D),  # Monday -> Sunday: same ISO week
        (at(2026, 3, 3, 3), at(2026, 3, 3, 15), D),  # same day
        (at(2026, 3, 2, 3), at(2026, 3, 3, 3), D),
        (at(2026, 1, 31, 3), at(2026, 2, 28, 3), M),  # a month skipped is still a new month
    ],
)
def test_promotion(previous: datetime, slot: datetime, expected: RetentionClass) -> None:
    assert classify(slot, previous, POLICY) is expected


def test_iso_week_that_straddles_new_year() -> None:
    # 2025-12-29 (Mon) and 2026-01-02 (Fri) share ISO week 2026-W01, but the year changed: yearly wins.
    assert classify(at(2026, 1, 2), at(2025, 12, 29), POLICY) is Y
    # 2026-12-28 (Mon) .. 2026-12-31 (Thu): same ISO week, same month.
    assert classify(at(2026, 12, 31), at(2026, 12, 28), POLICY) is D


@pytest.mark.parametrize(
    ("policy", "previous", "slot", "expected"),
    [
        (RetentionPolicy(yearly_years=0), None, at(2026, 1, 1), M),
        (RetentionPolicy(yearly_years=0), at(2025, 12, 31), at(2026, 1, 1), M),
        (RetentionPolicy(yearly_years=0, monthly_months=0), at(2025, 12, 28), at(2026, 1, 1), W),
        # Wed 2025-12-31 and Thu 2026-01-01 share ISO week 2026-W01: with years and months off, just daily.
        (RetentionPolicy(yearly_years=0, monthly_months=0), at(2025, 12, 31), at(2026, 1, 1), D),
        (RetentionPolicy(yearly_years=0, monthly_months=0, weekly_weeks=0), None, at(2026, 1, 1), D),
        (RetentionPolicy(monthly_months=0), at(2026, 1, 31), at(2026, 2, 2), W),  # Sat -> Mon
        (RetentionPolicy(monthly_months=0), at(2026, 1, 31), at(2026, 2, 1), D),  # Sat -> Sun: same ISO week
        (RetentionPolicy(monthly_months=0, weekly_weeks=0), at(2026, 1, 31), at(2026, 2, 2), D),
        (RetentionPolicy(weekly_weeks=0), at(2026, 3, 1), at(2026, 3, 2), D),
    ],
)
def test_disabled_classes_fall_through(
    policy: RetentionPolicy, previous: datetime | None, slot: datetime, expected: RetentionClass
) -> None:
    assert classify(slot, previous, policy) is expected


def simulate(
    expression: str, start: datetime, end: datetime, policy: RetentionPolicy
) -> list[tuple[datetime, RetentionClass]]:
    previous = None
    out = []
    for slot in Schedule.parse(expression).slots(start, end):
        out.append((slot, classify(slot, previous, policy)))
        previous = slot
    return out


def test_weekly_sunday_schedule_still_keeps_one_monthly_per_month() -> None:
    runs = simulate("cron(0 3 ? * 1 *)", at(2026, 1, 1), at(2026, 12, 31, 23), POLICY)
    assert len(runs) == 52
    assert Counter(cls for _, cls in runs) == {Y: 1, M: 11, W: 40}
    monthly_or_better = [slot.month for slot, cls in runs if cls in (M, Y)]
    assert monthly_or_better == list(range(1, 13))
    # Each is the first Sunday of its month.
    assert all(slot.day <= 7 for slot, cls in runs if cls in (M, Y))


def test_daily_schedule_promotes_the_first_run_of_each_week_month_and_year() -> None:
    runs = simulate("cron(0 3 * * ? *)", at(2025, 12, 31, 4), at(2026, 12, 31, 4), POLICY)
    assert len(runs) == 365
    assert Counter(cls for _, cls in runs)[Y] == 1
    assert Counter(cls for _, cls in runs)[M] == 11
    seen_weeks: set[tuple[int, int]] = set()
    seen_months: set[tuple[int, int]] = set()
    for slot, cls in runs:
        week, month = tuple(slot.isocalendar()[:2]), (slot.year, slot.month)
        expected = Y if slot == runs[0][0] else M if month not in seen_months else W if week not in seen_weeks else D
        assert cls is expected, slot
        seen_weeks.add(week)  # type: ignore[arg-type]
        seen_months.add(month)
    assert len(seen_weeks) == 53  # 2026 starts on a Thursday: 53 ISO weeks


# --- class_days -------------------------------------------------------------------------------------------------------


def test_class_days_default() -> None:
    assert class_days(POLICY) == {D: 7, W: 35, M: 372, Y: 1098, OD: 7}


def test_ondemand_backups_are_kept_like_daily_unless_told() -> None:
    assert class_days(RetentionPolicy(daily_days=10))[OD] == 10
    assert class_days(RetentionPolicy(daily_days=10, ondemand_days=2))[OD] == 2


@pytest.mark.parametrize(
    "policy",
    [
        RetentionPolicy(),
        RetentionPolicy(daily_days=400),
        RetentionPolicy(daily_days=60, weekly_weeks=1),
        RetentionPolicy(daily_days=3650, weekly_weeks=520, monthly_months=1200, yearly_years=100),
        RetentionPolicy(weekly_weeks=0),
        RetentionPolicy(daily_days=100, weekly_weeks=0, monthly_months=1),
    ],
)
def test_class_days_monotonic(policy: RetentionPolicy) -> None:
    days = class_days(policy)
    ordered = [days[c] for c in (D, W, M, Y) if c in days]
    assert ordered == sorted(ordered)
    assert days[D] == policy.daily_days


def test_class_days_raises_shorter_longer_classes_to_the_floor() -> None:
    assert class_days(RetentionPolicy(daily_days=60, weekly_weeks=1, monthly_months=1, yearly_years=1)) == {
        D: 60,
        W: 60,
        M: 60,
        Y: 366,
        OD: 60,
    }


def test_class_days_omits_disabled_classes() -> None:
    assert class_days(RetentionPolicy(weekly_weeks=0, yearly_years=0)) == {D: 7, M: 372, OD: 7}
    assert class_days(RetentionPolicy(weekly_weeks=0, monthly_months=0, yearly_years=0)) == {D: 7, OD: 7}


# --- lifecycle_rules --------------------------------------------------------------------------------------------------


def settings(**kw: Any) -> Settings:
    return Settings(bucket="acme-pg-backups", **kw)


def expiration_rules(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rules if "Expiration" in r and "And" in r["Filter"]]


def test_lifecycle_rules_default() -> None:
    rules = lifecycle_rules(settings(prefix="pg/"), "pg/failed/")
    assert rules[0] == {
        "ID": "lifeboat-abort-incomplete-uploads",
        "Status": "Enabled",
        "Filter": {"Prefix": "pg/"},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }
    assert rules[1] == {
        "ID": "lifeboat-failed-records",
        "Status": "Enabled",
        "Filter": {"Prefix": "pg/failed/"},
        "Expiration": {"Days": FAILED_RECORD_DAYS},
    }
    assert FAILED_RECORD_DAYS == 30
    assert rules[2]["ID"] == "lifeboat-wal-partial-versions"  # tests/pitr/test_window_retention.py
    assert rules[3:] == [
        {
            "ID": f"lifeboat-default-{cls}",
            "Status": "Enabled",
            "Filter": {
                "And": {
                    "Prefix": "pg/",
                    "Tags": [{"Key": RETENTION_TAG, "Value": cls}, {"Key": POLICY_TAG, "Value": "default"}],
                }
            },
            "Expiration": {"Days": days},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 30},
        }
        for cls, days in (("daily", 7), ("weekly", 35), ("monthly", 372), ("yearly", 1098), ("ondemand", 7))
    ]
    assert (RETENTION_TAG, POLICY_TAG) == ("retention", "retention-policy")
    assert NONCURRENT_VERSION_DAYS == 30


def test_one_rule_per_policy_and_enabled_class() -> None:
    policies = {
        "default": RetentionPolicy(),
        "short": RetentionPolicy(weekly_weeks=0, monthly_months=0, yearly_years=0),
        "archive": RetentionPolicy(daily_days=30, weekly_weeks=0),
    }
    rules = expiration_rules(lifecycle_rules(settings(retention_policies=policies), "failed/"))
    assert [r["ID"] for r in rules] == [
        "lifeboat-archive-daily",
        "lifeboat-archive-monthly",
        "lifeboat-archive-yearly",
        "lifeboat-archive-ondemand",
        "lifeboat-default-daily",
        "lifeboat-default-weekly",
        "lifeboat-default-monthly",
        "lifeboat-default-yearly",
        "lifeboat-default-ondemand",
        "lifeboat-short-daily",
        "lifeboat-short-ondemand",
    ]
    for rule in rules:
        tags = {t["Key"]: t["Value"] for t in rule["Filter"]["And"]["Tags"]}
        name, cls = rule["ID"].removeprefix("lifeboat-").rsplit("-", 1)
        assert tags == {RETENTION_TAG: cls, POLICY_TAG: name}
        assert rule["Expiration"]["Days"] == class_days(policies[name])[RetentionClass(cls)]


def test_abort_days_can_be_set() -> None:
    rules = lifecycle_rules(settings(), "failed/", abort_multipart_days=3)
    assert rules[0]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 3}
    assert "Expiration" not in rules[0]


def test_expiration_filters_never_overlap() -> None:
    policies = {name: RetentionPolicy() for name in ("default", "gold", "silver", "bronze")}
    rules = expiration_rules(lifecycle_rules(settings(prefix="db/", retention_policies=policies), "db/failed/"))
    # Same prefix everywhere, so rules are disjoint exactly when their (retention, policy) tag pairs differ: an
    # object carries one value per tag key.
    prefixes = {r["Filter"]["And"]["Prefix"] for r in rules}
    assert prefixes == {"db/"}
    pairs = [tuple(sorted((t["Key"], t["Value"]) for t in r["Filter"]["And"]["Tags"])) for r in rules]
    assert len(pairs) == len(set(pairs)) == 20
    assert all({k for k, _ in p} == {RETENTION_TAG, POLICY_TAG} for p in pairs)
    ids = [r["ID"] for r in lifecycle_rules(settings(retention_policies=policies), "failed/")]
    assert len(ids) == len(set(ids))


def test_rule_limit() -> None:
    # 3 fixed rules + 5 per full policy (4 GFS classes and ondemand): 199 full policies and one with two classes
    # (daily, ondemand) make exactly 1,000.
    policies = {f"p{i:03d}": RetentionPolicy() for i in range(198)}
    policies["default"] = RetentionPolicy()
    policies["zz-two"] = RetentionPolicy(weekly_weeks=0, monthly_months=0, yearly_years=0)
    assert len(lifecycle_rules(settings(retention_policies=policies), "failed/")) == 1000
    policies["zz-two-more"] = RetentionPolicy(weekly_weeks=0, monthly_months=0, yearly_years=0)
    with pytest.raises(ValueError, match="1002 lifecycle rules exceed S3's limit of 1,000"):
        lifecycle_rules(settings(retention_policies=policies), "failed/")


def test_no_rule_expires_keep() -> None:
    from chalicelib.scheduling.retention import KEEP

    rules = lifecycle_rules(settings(retention_policies={"default": RetentionPolicy(), "b": RetentionPolicy()}), "f/")
    values = {
        t["Value"] for r in expiration_rules(rules) for t in r["Filter"]["And"]["Tags"] if t["Key"] == RETENTION_TAG
    }
    assert values == {"daily", "weekly", "monthly", "yearly", "ondemand"}
    assert KEEP not in values


def test_rule_ids_are_unique_even_for_long_policy_names() -> None:
    try:
        s = settings(retention_policies={"default": RetentionPolicy(), "x" * 250: RetentionPolicy()})
    except ValidationError:
        return  # rejected at the edge: fixed
    ids = [r["ID"] for r in lifecycle_rules(s, "failed/")]
    assert all(len(i) <= 255 for i in ids)
    assert len(ids) == len(set(ids))


# --- snapshots_to_keep ------------------------------------------------------------------------------------------------


def daily_snapshots(first: datetime, days: int) -> list[SnapshotFacts]:
    return [SnapshotFacts(f"snap-{i:03d}", first + timedelta(days=i)) for i in range(days)]


def test_snapshots_keep_daily_window_and_newest() -> None:
    policy = RetentionPolicy(daily_days=3, weekly_weeks=0, monthly_months=0, yearly_years=0, keep_last=1)
    snaps = daily_snapshots(at(2026, 3, 1, 3), 10)  # 1..10 March
    kept = snapshots_to_keep(snaps, policy, now=at(2026, 3, 10, 12))
    assert set(kept) == {"snap-007", "snap-008", "snap-009"}
    assert kept["snap-009"] == "newest successful, last 1, daily 2026-03-10"
    assert kept["snap-007"] == "daily 2026-03-08"


def test_snapshots_newest_of_each_month() -> None:
    policy = RetentionPolicy(daily_days=1, weekly_weeks=0, monthly_months=3, yearly_years=0)
    snaps = daily_snapshots(at(2026, 1, 1, 3), 90)  # 1 Jan .. 31 Mar
    kept = snapshots_to_keep(snaps, policy, now=at(2026, 3, 31, 12))
    by_slot = {s.id: s.slot for s in snaps}
    assert sorted(by_slot[i] for i in kept) == [at(2026, 1, 31, 3), at(2026, 2, 28, 3), at(2026, 3, 31, 3)]


def test_failed_and_pinned_snapshots() -> None:
    policy = RetentionPolicy(daily_days=1, weekly_weeks=0, monthly_months=0, yearly_years=0)
    snaps = [
        SnapshotFacts("old-pinned", at(2020, 1, 1), pinned=True),
        SnapshotFacts("good", at(2026, 3, 9)),
        SnapshotFacts("failed-newer", at(2026, 3, 10), succeeded=False),
        SnapshotFacts("failed-pinned", at(2026, 3, 10, 1), succeeded=False, pinned=True),
    ]
    kept = snapshots_to_keep(snaps, policy, now=at(2026, 3, 10, 12))
    assert kept == {"old-pinned": "pinned", "failed-pinned": "pinned", "good": "newest successful, last 1"}


def test_no_successful_snapshots() -> None:
    snaps = [SnapshotFacts("failed", at(2026, 3, 10), succeeded=False)]
    assert snapshots_to_keep(snaps, POLICY, now=at(2026, 3, 10)) == {}
