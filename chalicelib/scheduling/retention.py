"""Grandfather-father-son retention: which class a backup belongs to, and how long each class lives.

Pure functions: the class of a run is decided from its slot and the previous successful backup; S3
lifecycle rules (not Lambda code) then expire logical backups by their `retention` tag.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple

from chalicelib.config import RetentionPolicy, Settings

RETENTION_TAG = "retention"
POLICY_TAG = "retention-policy"
FAILED_RECORD_DAYS = 30


class RetentionClass(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    YEARLY = "yearly"


def classify(slot: datetime, previous: datetime | None, policy: RetentionPolicy) -> RetentionClass:
    """The first successful backup of a year, month or ISO week is promoted to that class.

    Deciding from the previous success (not from the calendar day of the slot) works for any schedule:
    a weekly schedule on Sundays still yields one monthly backup per month.
    """
    if policy.yearly_years and (previous is None or previous.year != slot.year):
        return RetentionClass.YEARLY
    if policy.monthly_months and (previous is None or (previous.year, previous.month) != (slot.year, slot.month)):
        return RetentionClass.MONTHLY
    if policy.weekly_weeks and (previous is None or previous.isocalendar()[:2] != slot.isocalendar()[:2]):
        return RetentionClass.WEEKLY
    return RetentionClass.DAILY


def class_days(policy: RetentionPolicy) -> dict[RetentionClass, int]:
    """Days to keep each enabled class; longer classes never expire before shorter ones."""
    days = {
        RetentionClass.DAILY: policy.daily_days,
        RetentionClass.WEEKLY: policy.weekly_weeks * 7,
        RetentionClass.MONTHLY: policy.monthly_months * 31,
        RetentionClass.YEARLY: policy.yearly_years * 366,
    }
    floor = 0
    for cls in RetentionClass:
        if days[cls]:
            days[cls] = max(days[cls], floor)
            floor = days[cls]
    return {cls: d for cls, d in days.items() if d}


def lifecycle_rules(settings: Settings, failed_prefix: str, abort_multipart_days: int = 1) -> list[dict[str, Any]]:
    """S3 lifecycle rules for the backup bucket, one per (policy, class): tags never overlap."""
    rules: list[dict[str, Any]] = [
        {
            "ID": "lifeboat-abort-incomplete-uploads",
            "Status": "Enabled",
            "Filter": {"Prefix": settings.prefix},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": abort_multipart_days},
        },
        {
            "ID": "lifeboat-failed-records",
            "Status": "Enabled",
            "Filter": {"Prefix": failed_prefix},
            "Expiration": {"Days": FAILED_RECORD_DAYS},
        },
    ]
    for name, policy in sorted(settings.retention_policies.items()):
        for cls, days in class_days(policy).items():
            rules.append({
                "ID": f"lifeboat-{name}-{cls.value}"[:255],
                "Status": "Enabled",
                "Filter": {"And": {
                    "Prefix": settings.prefix,
                    "Tags": [{"Key": RETENTION_TAG, "Value": cls.value}, {"Key": POLICY_TAG, "Value": name}],
                }},
                "Expiration": {"Days": days},
                "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
            })
    if len(rules) > 1000:
        raise ValueError(f"{len(rules)} lifecycle rules exceed S3's limit of 1,000: use fewer retention policies")
    return rules


# --- Snapshots: grandfather-father-son by slot time -------------------------------------------------------------

class SnapshotFacts(NamedTuple):
    """What the snapshot pruner knows about one backup (an RDS snapshot, or one EBS set of volume snapshots)."""

    id: str
    slot: datetime
    retention_class: str = ""
    pinned: bool = False
    succeeded: bool = True


def _day(when: datetime) -> int:
    return when.astimezone(UTC).date().toordinal()


def _iso_week(when: datetime) -> int:
    """Weeks since a fixed Monday: consecutive ISO weeks differ by exactly 1, across year ends too."""
    day = when.astimezone(UTC).date()
    return (day.toordinal() - day.weekday()) // 7


def _month(when: datetime) -> int:
    u = when.astimezone(UTC)
    return u.year * 12 + u.month - 1


def _year(when: datetime) -> int:
    return when.astimezone(UTC).year


def _bucket_label(kind: str, when: datetime) -> str:
    u = when.astimezone(UTC)
    if kind == "daily":
        return f"{u:%Y-%m-%d}"
    if kind == "weekly":
        year, week, _ = u.isocalendar()
        return f"{year}-W{week:02d}"
    if kind == "monthly":
        return f"{u:%Y-%m}"
    return f"{u:%Y}"


def snapshots_to_keep(snapshots: Iterable[SnapshotFacts], policy: RetentionPolicy, now: datetime) -> dict[str, str]:
    """The snapshots a GFS policy keeps, each with the reason(s); every id not returned may be deleted.

    A successful snapshot is kept when any of these holds:
    - it is pinned (tag `pinned=true`) — pinned snapshots are kept even when they failed;
    - it is among the `keep_last` newest successful snapshots (so always at least the newest one);
    - it is the newest successful snapshot of its UTC day, and that day is one of the `daily_days` calendar days
      ending with the day of `now`; likewise per ISO week (`weekly_weeks` weeks ending with the current one),
      per month (`monthly_months`) and per year (`yearly_years`). A count of 0 disables a class.

    Membership is decided from each snapshot's own slot time, not from its `retention` tag. The tag records how
    the snapshot was classified when it was taken (the first backup of a period after the previous *known*
    success), and that can be wrong later: the first snapshot of a month may have failed or been deleted by
    hand, a duplicate delivery may have run out of order, or the policy may have changed since. Choosing the
    newest survivor of every bucket heals all of these: each period in the window always keeps exactly one
    snapshot while it has any, and a period is never left empty because its tagged representative is gone.
    The tag stays useful for people (`lifeboat list`) and for S3 lifecycle rules on logical backups.

    Failed snapshots (and those still being created, which callers should not pass) never represent a bucket
    and do not count towards `keep_last`; the newest successful snapshot is never deleted, whatever the policy.
    Pure: the same inputs always give the same answer; `now` comes from the caller's clock.
    """
    items = list(snapshots)
    reasons: dict[str, list[str]] = {}

    def keep(item: SnapshotFacts, reason: str) -> None:
        reasons.setdefault(item.id, []).append(reason)

    for item in items:
        if item.pinned:
            keep(item, "pinned")
    good = sorted((s for s in items if s.succeeded), key=lambda s: (s.slot, s.id), reverse=True)
    if not good:
        return {k: ", ".join(v) for k, v in reasons.items()}
    keep(good[0], "newest successful")
    for item in good[:policy.keep_last]:
        keep(item, f"last {policy.keep_last}")
    classes: list[tuple[str, int, Callable[[datetime], int]]] = [
        ("daily", policy.daily_days, _day),
        ("weekly", policy.weekly_weeks, _iso_week),
        ("monthly", policy.monthly_months, _month),
        ("yearly", policy.yearly_years, _year),
    ]
    for kind, count, bucket in classes:
        if count <= 0:
            continue
        current = bucket(now)
        seen: set[int] = set()
        for item in good:  # newest first: the first one met in a bucket is that bucket's newest
            b = bucket(item.slot)
            if b in seen or current - b >= count:
                continue
            seen.add(b)
            keep(item, f"{kind} {_bucket_label(kind, item.slot)}")
    return {k: ", ".join(dict.fromkeys(v)) for k, v in reasons.items()}
