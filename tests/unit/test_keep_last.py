"""keep_last and the one GFS semantic of logical backups, without AWS: which backups carry `keep`, which get their
class back, and a simulated year of S3 lifecycle expiry (from the lifecycle rules' own day counts) in which the
last 60 daily slots fail. Fixed clocks only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from chalicelib.config import RetentionPolicy, Settings
from chalicelib.scheduling.retention import (
    KEEP,
    RETENTION_TAG,
    LogicalFacts,
    RetentionClass,
    SnapshotFacts,
    backup_class,
    class_days,
    lifecycle_rules,
    lock_days,
    newest_class,
    retention_tags,
    snapshots_to_keep,
)
from chalicelib.scheduling.schedules import Schedule

D, W, M, Y = RetentionClass.DAILY, RetentionClass.WEEKLY, RetentionClass.MONTHLY, RetentionClass.YEARLY
POLICY = RetentionPolicy()
DAILY = "cron(0 3 * * ? *)"


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- the class recorded when a backup completes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slot", "following", "expected"),
    [
        (at(2026, 12, 31, 3), at(2027, 1, 1, 3), Y),  # the newest of its year
        (at(2026, 3, 31, 3), at(2026, 4, 1, 3), M),
        (at(2026, 3, 8, 3), at(2026, 3, 9, 3), W),  # Sunday -> Monday: the newest of ISO week 10
        (at(2026, 3, 9, 3), at(2026, 3, 10, 3), D),
        (at(2026, 3, 9, 3), at(2026, 3, 9, 15), D),  # not even the newest of its day: still kept as daily
        (at(2026, 3, 9, 3), None, Y),  # nothing follows: the newest of every period
    ],
)
def test_newest_of_a_period_earns_its_class(
    slot: datetime, following: datetime | None, expected: RetentionClass
) -> None:
    assert newest_class(slot, following, POLICY) is expected


def test_disabled_classes_are_never_earned() -> None:
    assert newest_class(at(2026, 12, 31), at(2027, 1, 1), RetentionPolicy(yearly_years=0)) is M
    assert newest_class(at(2026, 12, 31), None, RetentionPolicy(yearly_years=0, monthly_months=0)) is W
    assert newest_class(at(2026, 12, 31), None, RetentionPolicy(yearly_years=0, monthly_months=0, weekly_weeks=0)) is D


def test_the_schedule_decides_which_backup_is_the_newest() -> None:
    # A daily schedule: the last day of the month is the month's. A Sunday-only schedule: the last Sunday.
    assert backup_class(at(2026, 3, 31, 3), "schedule", DAILY, POLICY) is M
    assert backup_class(at(2026, 3, 30, 3), "schedule", DAILY, POLICY) is D
    sundays = "cron(0 3 ? * 1 *)"
    assert backup_class(at(2026, 3, 29, 3), "schedule", sundays, POLICY) is M  # next: Sunday 5 April
    assert backup_class(at(2026, 3, 22, 3), "schedule", sundays, POLICY) is W


@pytest.mark.parametrize("trigger", ["on-demand", "api", ""])
def test_on_demand_backups_have_their_own_class(trigger: str) -> None:
    # A first test backup is not kept as a yearly one for three years.
    assert backup_class(at(2026, 1, 1, 3), trigger, DAILY, POLICY) is RetentionClass.ONDEMAND
    assert class_days(POLICY)[RetentionClass.ONDEMAND] == POLICY.daily_days


def test_consistent_with_snapshot_pruning_over_a_year() -> None:
    """All slots succeed: the class each scheduled backup earns is the longest period snapshots_to_keep would keep it
    for (the newest of each week, month and year), daily when it represents none."""
    slots = list(Schedule.parse(DAILY).slots(at(2025, 12, 31, 12), at(2026, 12, 31, 12)))
    policy = RetentionPolicy(daily_days=1, weekly_weeks=60, monthly_months=13, yearly_years=2)  # windows cover 2026
    kept = snapshots_to_keep([SnapshotFacts(str(s), s) for s in slots], policy, at(2026, 12, 31, 12))
    for slot in slots:
        reasons = kept.get(str(slot), "")
        expected = next((c for c in (Y, M, W) if f"{c.value} " in reasons), D)
        assert backup_class(slot, "schedule", DAILY, policy) is expected, (slot, reasons)
    assert sum(backup_class(s, "schedule", DAILY, policy) is M for s in slots) == 11  # December's is the yearly one


# --- retention_tags: keep_last ---------------------------------------------------------------------------------------


def facts(*slots: datetime, cls: RetentionClass = D) -> list[LogicalFacts]:
    return [LogicalFacts(f"b{s:%m%d%H}", s, cls.value) for s in slots]


def test_the_newest_keep_last_carry_keep_whatever_their_class() -> None:
    items = facts(at(2026, 3, 3, 3), at(2026, 3, 4, 3), at(2026, 3, 5, 3))  # Tuesday to Thursday
    tags = retention_tags(items, RetentionPolicy(keep_last=2))
    assert tags == {"b030503": KEEP, "b030403": KEEP, "b030303": "daily"}
    on_demand = [LogicalFacts("test", at(2026, 3, 6, 9), RetentionClass.ONDEMAND.value, scheduled=False)]
    assert retention_tags(items + on_demand, POLICY)["test"] == KEEP  # whatever the class
    assert retention_tags([*on_demand, *facts(at(2026, 3, 7, 3))], POLICY)["test"] == "ondemand"


def test_a_backup_dropping_out_gets_its_class_back() -> None:
    items = [LogicalFacts("mar31", at(2026, 3, 31, 3), "monthly"), LogicalFacts("apr1", at(2026, 4, 1, 3), "daily")]
    assert retention_tags(items, POLICY) == {"apr1": KEEP, "mar31": "monthly"}


def test_the_newest_good_backup_of_a_month_keeps_it_when_the_last_slots_failed() -> None:
    # 30 March succeeded (recorded daily: its next slot was in March), 31 March failed, 1 April succeeded.
    items = [LogicalFacts("mar30", at(2026, 3, 30, 3), "daily"), LogicalFacts("apr1", at(2026, 4, 1, 3), "daily")]
    assert retention_tags(items, POLICY)["mar30"] == "monthly"
    # An on-demand backup in between does not take the month: it is not a scheduled one.
    items.append(LogicalFacts("mar31", at(2026, 3, 31, 9), "ondemand", scheduled=False))
    assert retention_tags(items, RetentionPolicy(keep_last=1)) == {
        "apr1": KEEP,
        "mar31": "ondemand",
        "mar30": "monthly",
    }


def test_lock_days_keep_is_its_class_and_at_least_a_rolling_month() -> None:
    days = class_days(POLICY)
    assert max(days.values()) == 1098
    assert lock_days(KEEP, POLICY) == lock_days(KEEP, POLICY, "daily") == 30  # not years for every daily backup
    assert lock_days(KEEP, POLICY, "yearly") == 1098 and lock_days(KEEP, POLICY, "monthly") == 372
    assert lock_days("daily", POLICY) == 7 and lock_days("monthly", POLICY) == 372
    assert lock_days("ondemand", POLICY) == 7
    assert lock_days("something-older", POLICY) == 1098  # unknown: as long as the longest


# --- a simulated year -------------------------------------------------------------------------------------------------


@dataclass
class Stored:
    """One backup in the simulated bucket: its recorded class and its current retention tag."""

    facts: LogicalFacts
    created: datetime
    tag: str


def expiry_days(policy: RetentionPolicy) -> dict[str, int]:
    """Days after creation at which the bucket's lifecycle rules expire each retention tag value."""
    rules = lifecycle_rules(Settings(bucket="acme-pg-backups", retention_policies={"default": policy}), "failed/")
    out = {}
    for rule in rules:
        tags = {t["Key"]: t["Value"] for t in rule["Filter"].get("And", {}).get("Tags", [])}
        if RETENTION_TAG in tags:
            out[tags[RETENTION_TAG]] = rule["Expiration"]["Days"]
    return out


def simulate_year(
    policy: RetentionPolicy, failing_from: datetime, keep_pass: bool = True, on_demand: tuple[datetime, ...] = ()
) -> tuple[dict[str, Stored], datetime]:
    """A daily schedule over 2026; every slot from `failing_from` on fails. Each day the lifecycle runs first (it
    expires a tagged object once its age reaches the rule's days), then the slot's backup, and after each success the
    worker's keep pass over the newest keep_last + 2 (as chalicelib.logical.protect does)."""
    days = expiry_days(policy)
    assert KEEP not in days
    bucket: dict[str, Stored] = {}
    slots = list(Schedule.parse(DAILY).slots(at(2025, 12, 31, 12), at(2026, 12, 31, 12)))
    events = sorted([(s, "schedule") for s in slots] + [(s, "on-demand") for s in on_demand])
    day = at(2026, 1, 1)
    end = at(2027, 1, 1)
    while day < end:
        for key in [k for k, b in bucket.items() if b.tag in days and day - b.created >= timedelta(days=days[b.tag])]:
            del bucket[key]
        for slot, trigger in [e for e in events if day <= e[0] < day + timedelta(days=1)]:
            if trigger == "schedule" and slot >= failing_from:
                continue
            cls = backup_class(slot, trigger, DAILY, policy)
            item = LogicalFacts(f"{slot:%Y%m%dT%H%M}", slot, cls.value, trigger == "schedule")
            bucket[item.id] = Stored(item, slot, cls.value)
            if keep_pass:
                window = sorted(bucket.values(), key=lambda b: b.facts.slot, reverse=True)[: policy.keep_last + 2]
                for key, tag in retention_tags([b.facts for b in window], policy).items():
                    bucket[key].tag = tag
        day += timedelta(days=1)
    return bucket, day


FAILING_FROM = at(2026, 11, 2)  # 2 November to 31 December: the last 60 daily slots fail
NEWEST_GOOD = "20261101T0300"


def test_sixty_failed_days_never_lose_the_newest_good_backup() -> None:
    assert len([s for s in Schedule.parse(DAILY).slots(FAILING_FROM - timedelta(hours=1), at(2026, 12, 31, 12))]) == 60
    bucket, _ = simulate_year(POLICY, FAILING_FROM)
    assert bucket[NEWEST_GOOD].tag == KEEP
    assert max(bucket) == NEWEST_GOOD
    assert [k for k, b in bucket.items() if b.tag == KEEP] == [NEWEST_GOOD]
    # Without the keep pass, S3 lifecycle would have expired it (it is a weekly one: 35 days) in early December.
    without, _ = simulate_year(POLICY, FAILING_FROM, keep_pass=False)
    assert NEWEST_GOOD not in without


def test_a_daily_only_policy_keeps_the_newest_good_backup_and_nothing_else() -> None:
    daily_only = RetentionPolicy(daily_days=7, weekly_weeks=0, monthly_months=0, yearly_years=0)
    bucket, _ = simulate_year(daily_only, FAILING_FROM)
    assert set(bucket) == {NEWEST_GOOD}
    assert simulate_year(daily_only, FAILING_FROM, keep_pass=False)[0] == {}  # what the issue found: nothing left


def test_keep_last_three_keeps_the_three_newest_good_ones() -> None:
    bucket, _ = simulate_year(RetentionPolicy(keep_last=3), FAILING_FROM)
    assert sorted((k for k, b in bucket.items() if b.tag == KEEP), reverse=True) == [
        NEWEST_GOOD,
        "20261031T0300",
        "20261030T0300",
    ]


def test_the_year_keeps_what_snapshot_pruning_would_keep() -> None:
    """At the end of the simulated year the surviving backups are exactly the set snapshots_to_keep chooses from the
    same successful slots: the newest of each month (12 months) and the newest good one."""
    bucket, now = simulate_year(POLICY, FAILING_FROM)
    good = [s for s in Schedule.parse(DAILY).slots(at(2025, 12, 31, 12), FAILING_FROM)]
    chosen = snapshots_to_keep([SnapshotFacts(f"{s:%Y%m%dT%H%M}", s) for s in good], POLICY, now - timedelta(hours=1))
    assert set(bucket) == set(chosen)
    assert {b.tag for b in bucket.values()} == {"monthly", KEEP}


def test_an_on_demand_test_backup_expires_like_a_daily_one() -> None:
    first_test = at(2026, 2, 10, 14)
    bucket, _ = simulate_year(POLICY, FAILING_FROM, on_demand=(first_test,))
    assert f"{first_test:%Y%m%dT%H%M}" not in bucket
    days = expiry_days(POLICY)
    assert days["ondemand"] == days["daily"] == 7
