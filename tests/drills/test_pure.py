"""Pure parts of the drills, without AWS or PostgreSQL: the drill section's validation, the pick (fixed clock, fixed
seed), the check verdict, overdue targets, and drills dispatched like backups."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chalicelib.config import parse_config
from chalicelib.drills.checks import judge
from chalicelib.drills.model import DrillRecord
from chalicelib.drills.selection import Candidate, overdue, pick_backup
from chalicelib.errors import ConfigError
from chalicelib.scheduling.dispatch import DueBackup, due_backups, message_group

NOW = datetime(2026, 10, 20, 6, tzinfo=UTC)
CONN = {"host": "db.internal", "user": "lifeboat", "sslmode": "verify-full"}


def config(drill: dict[str, Any], physical: dict[str, Any] | None = None, logical: bool = True) -> Any:
    shop: dict[str, Any] = {"name": "shop", "connection": CONN, "drill": drill, "restore_into": ["scratch"]}
    if logical:
        shop["logical"] = {"schedule": "cron(0 3 * * ? *)"}
    if physical:
        shop["physical"] = physical
    targets = [
        shop,
        {"name": "scratch", "connection": {**CONN, "host": "scratch.internal"}},
        {"name": "other", "connection": {**CONN, "host": "other.internal"}},
    ]
    return parse_config({"settings": {"bucket": "lifeboat-test"}, "targets": targets}, "test configuration")


GOOD = {"schedule": "cron(0 6 ? * MON *)", "into": {"target": "scratch"}}


@pytest.mark.parametrize(
    ("drill", "physical", "logical", "message"),
    [
        ({**GOOD, "schedule": "every monday"}, None, True, "target 'shop': drill.schedule: 'every monday': expected"),
        ({**GOOD, "pick": "newest"}, None, True, "drill.pick: Input should be 'latest', 'random' or 'oldest-kept'"),
        ({**GOOD, "into": {}}, None, True, "drill.into.target: name the configured target"),
        ({**GOOD, "into": {"target": "nowhere"}}, None, True, "names 'nowhere', which is not a target"),
        # a scratch server is never the production one, and always one the target may restore into
        ({**GOOD, "into": {"target": "shop"}}, None, True, "drill.into.target is the drilled target itself"),
        (
            {**GOOD, "into": {"target": "other"}},
            None,
            True,
            "drill.into.target 'other' is not in the target's restore_into (scratch): add 'other' to restore_into",
        ),
        ({**GOOD, "max_age_days": 0}, None, True, "drill.max_age_days: Input should be greater than or equal to 1"),
        (
            {**GOOD, "checks": [{"name": "a", "sql": "SELECT true"}, {"name": "a", "sql": "SELECT true"}]},
            None,
            True,
            "check names must be unique; 'a' appear",
        ),
        ({**GOOD, "checks": [{"name": "", "sql": "SELECT 1"}]}, None, True, "a check name is 1-80"),
        ({"schedule": "rate(7 days)", "kind": "snapshot"}, None, True, "the target has no physical section"),
        (
            {"schedule": "rate(7 days)", "into": {"instance_class": "db.r6g.2xlarge"}},
            {"method": "rds_instance", "db_instance_id": "shop-db", "restore": {"instance_classes": ["db.t3.small"]}},
            False,
            "drill.into.instance_class 'db.r6g.2xlarge' is not in physical.restore.instance_classes (db.t3.small)",
        ),
        (
            {"schedule": "rate(7 days)"},
            {"method": "ebs", "volume_ids": ["vol-1"]},
            False,
            "snapshot drills restore RDS instances and Aurora clusters, not 'ebs'",
        ),
    ],
)
def test_bad_drill_sections_say_what_to_fix(
    drill: dict[str, Any], physical: dict[str, Any] | None, logical: bool, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        config(drill, physical, logical)
    assert message in str(err.value)


def test_a_good_drill_section() -> None:
    cfg = config({**GOOD, "checks": [{"name": "orders are recent", "sql": "SELECT true"}], "rto_seconds": 900})
    drill = cfg.target("shop").drill
    assert drill is not None and drill.pick == "latest" and drill.max_age_days == 8 and drill.rto_seconds == 900


CANDIDATES = [
    Candidate(f"logical:shop:202610{d:02d}T030000Z", datetime(2026, 10, d, 3, tzinfo=UTC)) for d in (19, 3, 12, 21)
]


def test_pick_with_a_fixed_clock_and_seed() -> None:
    rng = random.Random(42)  # noqa: S311
    assert pick_backup(CANDIDATES, "latest", NOW, rng) == CANDIDATES[0]  # the 21st is in the future
    assert pick_backup(CANDIDATES, "oldest-kept", NOW, rng) == CANDIDATES[1]
    picks = [pick_backup(CANDIDATES, "random", NOW, random.Random(seed)) for seed in range(30)]  # noqa: S311
    assert {p.backup_id for p in picks if p} == {c.backup_id for c in CANDIDATES[:3]}
    again = [pick_backup(CANDIDATES, "random", NOW, random.Random(seed)) for seed in range(30)]  # noqa: S311
    assert picks == again
    assert pick_backup([], "latest", NOW, rng) is None
    assert pick_backup(CANDIDATES[3:], "random", NOW, rng) is None


def test_a_check_passes_only_on_one_true() -> None:
    assert judge([(True,)]) == (True, "returned true")
    assert judge([(False,)])[0] is False and judge([(1,)])[0] is False and judge([(None,)])[0] is False
    assert judge([])[0] is False and judge([(True,), (True,)])[0] is False and judge([(True, True)])[0] is False


def test_overdue_targets() -> None:
    cfg = config(GOOD)

    def rec(days_ago: int, status: str) -> DrillRecord:
        t = NOW - timedelta(days=days_ago)
        return DrillRecord(
            drill_id="d-" + "0" * 16,
            target="shop",
            kind="logical",
            pick="latest",
            started_at=t,
            finished_at=t,
            status=status,
        )  # type: ignore[arg-type]

    assert overdue(cfg, [rec(2, "SUCCEEDED")], NOW) == {}
    assert "over 8 days ago" in overdue(cfg, [rec(9, "SUCCEEDED"), rec(1, "FAILED")], NOW)["shop"]
    assert "none recorded" in overdue(cfg, [], NOW)["shop"]


def test_drills_are_dispatched_like_backups() -> None:
    cfg = config(GOOD)
    due = due_backups(cfg, datetime(2026, 10, 18, tzinfo=UTC), datetime(2026, 10, 20, 7, tzinfo=UTC))
    assert [(d.kind, d.slot.isoformat()) for d in due] == [
        ("logical", "2026-10-18T03:00:00+00:00"),
        ("logical", "2026-10-19T03:00:00+00:00"),
        ("drill", "2026-10-19T06:00:00+00:00"),  # Monday
        ("logical", "2026-10-20T03:00:00+00:00"),
    ]
    drill = next(d for d in due if d.kind == "drill")
    assert DueBackup.from_message(drill.message()) == drill
    assert message_group(cfg, drill) == "drills#shop"
