"""Pure parts of physical backups: names, tags, instance specifications and GFS retention (no AWS)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from chalicelib.config import RetentionPolicy
from chalicelib.errors import SnapshotError
from chalicelib.physical.backup_mode import backup_mode_sql
from chalicelib.physical.ebs import instance_specification
from chalicelib.physical.names import copy_tags, label_key, parse_slot_tag, snapshot_identifier, validate_rds_identifier
from chalicelib.scheduling.retention import SnapshotFacts, snapshots_to_keep

SLOT = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


def test_identifier_is_deterministic_and_valid() -> None:
    assert snapshot_identifier("shop", SLOT) == "lifeboat-shop-20261129-030000"
    # the same instant in another zone names the same snapshot
    eastern = SLOT.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))
    assert snapshot_identifier("shop", eastern) == "lifeboat-shop-20261129-030000"
    longest = snapshot_identifier("a" + "-b" * 23 + "c", SLOT)
    assert len(longest) <= 255 and validate_rds_identifier(longest) == longest


@pytest.mark.parametrize(
    "bad, needs",
    [
        ("", "1 to 255"),
        ("1abc", "starting with a letter"),
        ("a--b", "consecutive"),
        ("abc-", "trailing"),
        ("a_b", "letters, digits and hyphens"),
        ("a" * 256, "1 to 255"),
        ("abc\n", "letters, digits and hyphens"),
    ],
)
def test_identifier_rules(bad: str, needs: str) -> None:
    with pytest.raises(SnapshotError, match=needs):
        validate_rds_identifier(bad)


def test_label_key_and_slot_tag() -> None:
    assert label_key("pg/", "shop", SLOT) == "pg/snapshots/shop/20261129T030000Z/backup_label.json"
    assert parse_slot_tag("2026-11-29T03:00:00Z") == SLOT
    assert parse_slot_tag("yesterday") is None and parse_slot_tag(None) is None


def test_copy_tags_drop_the_observation_mark() -> None:
    tags = copy_tags({"lifeboat:observed": "done", "retention": "daily", "aws:cloudformation:x": "y"}, "arn:src")
    assert tags == {"retention": "daily", "lifeboat:copy-of": "arn:src"}


def test_instance_specification() -> None:
    assert instance_specification("i-1", "vol-boot", ["vol-boot", "vol-a"], [], True) == {
        "InstanceId": "i-1",
        "ExcludeBootVolume": True,
    }
    spec = instance_specification("i-1", "vol-boot", ["vol-boot", "vol-a", "vol-b", "vol-c"], ["vol-b"], True)
    assert spec == {"InstanceId": "i-1", "ExcludeBootVolume": True, "ExcludeDataVolumeIds": ["vol-a", "vol-c"]}
    spec = instance_specification("i-1", "vol-boot", ["vol-boot", "vol-a"], ["vol-boot", "vol-a"], True)
    assert spec == {"InstanceId": "i-1", "ExcludeBootVolume": False}
    with pytest.raises(SnapshotError, match="vol-x are not attached"):
        instance_specification("i-1", "vol-boot", ["vol-boot"], ["vol-x"], True)


def test_backup_mode_sql_by_version() -> None:
    start, stop, name = backup_mode_sql(150004)
    assert "pg_backup_start(%s, fast => true)" in start and "pg_backup_stop(wait_for_archive => false)" in stop
    start, stop, name = backup_mode_sql(140022)
    assert "pg_start_backup(%s, true, false)" in start and "pg_stop_backup(false, false)" in stop
    assert name == "pg_start_backup"


# --- GFS ---------------------------------------------------------------------------------------------------------


def at(d: str) -> datetime:
    return datetime.fromisoformat(d).replace(hour=3, tzinfo=UTC)


def daily_facts(first: date, last: date) -> list[SnapshotFacts]:
    days = (last - first).days + 1
    return [SnapshotFacts(f"s{first + timedelta(n)}", at(str(first + timedelta(n))), "daily") for n in range(days)]


def test_gfs_over_a_year_keeps_exactly_the_expected_set() -> None:
    facts = daily_facts(date(2025, 11, 15), date(2026, 12, 31))
    now = datetime(2026, 12, 31, 12, 0, tzinfo=UTC)
    keep = snapshots_to_keep(facts, RetentionPolicy(), now)  # daily 7, weekly 5, monthly 12, yearly 3, last 1
    expected = {
        # daily: the 7 calendar days ending today
        "2026-12-25",
        "2026-12-26",
        "2026-12-27",
        "2026-12-28",
        "2026-12-29",
        "2026-12-30",
        "2026-12-31",
        # weekly: newest of ISO weeks 2026-W53 (today), W52 (Sun 27th), W51, W50, W49
        "2026-12-20",
        "2026-12-13",
        "2026-12-06",
        # monthly: newest of each of the 12 months ending with December 2026
        "2026-01-31",
        "2026-02-28",
        "2026-03-31",
        "2026-04-30",
        "2026-05-31",
        "2026-06-30",
        "2026-07-31",
        "2026-08-31",
        "2026-09-30",
        "2026-10-31",
        "2026-11-30",
        # yearly: newest of 2026 (today) and of 2025 (2024 has none)
        "2025-12-31",
    }
    assert set(keep) == {f"s{d}" for d in expected}
    assert keep["s2026-12-31"] == (
        "newest successful, last 1, daily 2026-12-31, weekly 2026-W53, monthly 2026-12, yearly 2026"
    )
    assert keep["s2026-12-27"] == "daily 2026-12-27, weekly 2026-W52"
    assert keep["s2025-12-31"] == "yearly 2025"


def test_gfs_ignores_the_tag_and_heals_gaps() -> None:
    """The tagged 'monthly' snapshot of March is gone and another is tagged wrongly: buckets still fill."""
    facts = [f for f in daily_facts(date(2026, 3, 1), date(2026, 4, 30)) if f.slot.date() != date(2026, 3, 31)]
    facts = [f._replace(retention_class="monthly") if f.id == "s2026-03-02" else f for f in facts]
    keep = snapshots_to_keep(
        facts, RetentionPolicy(daily_days=1, weekly_weeks=0, monthly_months=3, yearly_years=0), at("2026-04-30")
    )
    assert set(keep) == {"s2026-04-30", "s2026-03-30"}


def test_pinned_failed_and_newest() -> None:
    facts = [
        SnapshotFacts("old-pinned", at("2024-05-01"), "daily", pinned=True),
        SnapshotFacts("old", at("2026-01-01"), "yearly"),
        SnapshotFacts("newest-good", at("2026-02-01"), "monthly"),
        SnapshotFacts("newest-failed", at("2026-02-02"), "daily", succeeded=False),
    ]
    tight = RetentionPolicy(daily_days=1, weekly_weeks=0, monthly_months=0, yearly_years=0, keep_last=1)
    # a year later no window holds anything: the newest *successful* one stays, whatever the policy
    keep = snapshots_to_keep(facts, tight, at("2027-03-01"))
    assert keep == {"old-pinned": "pinned", "newest-good": "newest successful, last 1"}
    assert snapshots_to_keep([], tight, at("2027-03-01")) == {}
    assert snapshots_to_keep([facts[3]], tight, at("2027-03-01")) == {}  # a failed one is never kept for itself


def test_keep_last_counts_successes_only() -> None:
    facts = [SnapshotFacts(f"s{n}", at("2026-01-01") + timedelta(hours=n), succeeded=n != 4) for n in range(5)]
    keep = snapshots_to_keep(
        facts,
        RetentionPolicy(daily_days=1, weekly_weeks=0, monthly_months=0, yearly_years=0, keep_last=3),
        at("2026-06-01"),
    )
    assert set(keep) == {"s3", "s2", "s1"}
