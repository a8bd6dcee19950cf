"""Grandfather-father-son retention: which class a backup belongs to, and how long each class lives.

Pure functions. One GFS semantic for dumps and snapshots: a period (ISO week, month, year) is represented by its
*newest* successful backup. Snapshots are pruned by that rule directly (`snapshots_to_keep`). Logical backups are
expired by S3 lifecycle rules on their `retention` tag, which cannot see "newest", so:
- when a logical backup completes, its class is decided by looking ahead to the schedule's next slot (the newest
  backup of a month is the one whose next slot falls in another month), and recorded in its manifest;
- the newest `keep_last` complete backups of a target carry the tag `keep`, which no lifecycle rule expires: a
  target never loses its newest good backup, whatever months of failures follow;
- when a backup drops out of the newest `keep_last` it gets its class back, raised to the longest period whose end
  lies between it and the next newer scheduled backup (so when the last slots of a month failed, the newest backup
  that did succeed still represents the month, as snapshots_to_keep would choose).
On-demand backups (any trigger but `schedule`) have their own class `ondemand`, kept `ondemand_days` (default: like
daily), so a first test backup is not kept as a yearly one for three years.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

from chalicelib.config import RetentionPolicy, Settings
from chalicelib.scheduling.schedules import Schedule

RETENTION_TAG = "retention"
POLICY_TAG = "retention-policy"
KEEP = "keep"  # the retention tag of a target's newest keep_last backups: no lifecycle rule expires it
FAILED_RECORD_DAYS = 30
# Versions made noncurrent (a deleted or overwritten object, a failed attempt's objects) stay this long by default:
# the window to undo a deletion. Locked versions stay locked whatever this says.
NONCURRENT_VERSION_DAYS = 30
KEEP_LOCK_DAYS = NONCURRENT_VERSION_DAYS  # the rolling lock of the newest keep_last backups (lock_days)
SCHEDULED = "schedule"  # the trigger of scheduled backups; any other trigger is on-demand
# The open WAL segment's object (chalicelib.pitr.walarchive): re-uploaded every flush_seconds, each upload leaving the
# previous one as a noncurrent version, 1,440 a day per target at the default 60 s. Those versions are worthless
# once superseded (each is a prefix of the next), so they expire after a day, not NONCURRENT_VERSION_DAYS.
KIND_TAG = "kind"
WAL_PARTIAL_KIND = "wal-partial"
WAL_PARTIAL_NONCURRENT_DAYS = 1


class RetentionClass(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    YEARLY = "yearly"
    ONDEMAND = "ondemand"


GFS = (RetentionClass.DAILY, RetentionClass.WEEKLY, RetentionClass.MONTHLY, RetentionClass.YEARLY)  # by rank


def classify(slot: datetime, previous: datetime | None, policy: RetentionPolicy) -> RetentionClass:
    """The first successful backup of a year, month or ISO week is promoted to that class.

    Only the tag snapshots carry for people to read (`lifeboat list`): the snapshot pruner decides from slots
    (snapshots_to_keep), and logical backups are classified by `backup_class`.
    """
    if policy.yearly_years and (previous is None or previous.year != slot.year):
        return RetentionClass.YEARLY
    if policy.monthly_months and (previous is None or (previous.year, previous.month) != (slot.year, slot.month)):
        return RetentionClass.MONTHLY
    if policy.weekly_weeks and (previous is None or previous.isocalendar()[:2] != slot.isocalendar()[:2]):
        return RetentionClass.WEEKLY
    return RetentionClass.DAILY


def newest_class(slot: datetime, following: datetime | None, policy: RetentionPolicy) -> RetentionClass:
    """The class a backup earns as the newest of its periods: the longest enabled period (year, month, ISO week)
    whose end lies between it and the backup that follows it; daily otherwise. Nothing following: it is the
    newest of every period."""
    periods: tuple[tuple[RetentionClass, int, Callable[[datetime], int]], ...] = (
        (RetentionClass.YEARLY, policy.yearly_years, _year),
        (RetentionClass.MONTHLY, policy.monthly_months, _month),
        (RetentionClass.WEEKLY, policy.weekly_weeks, _iso_week),
    )
    for cls, count, period in periods:
        if count and (following is None or period(following) != period(slot)):
            return cls
    return RetentionClass.DAILY


def next_slot(schedule: str | None, slot: datetime) -> datetime | None:
    """The schedule's first slot after `slot` (None: no schedule, or none within 400 days)."""
    if not schedule:
        return None
    return next(Schedule.parse(schedule).slots(slot, slot + timedelta(days=400), limit=1), None)


def backup_class(slot: datetime, trigger: str, schedule: str | None, policy: RetentionPolicy) -> RetentionClass:
    """The class recorded in a logical backup's manifest when it completes."""
    if trigger != SCHEDULED:
        return RetentionClass.ONDEMAND
    return newest_class(slot, next_slot(schedule, slot), policy)


def class_days(policy: RetentionPolicy) -> dict[RetentionClass, int]:
    """Days to keep each enabled class; longer classes never expire before shorter ones. On-demand backups are
    kept `ondemand_days` (default: daily_days)."""
    days = {
        RetentionClass.DAILY: policy.daily_days,
        RetentionClass.WEEKLY: policy.weekly_weeks * 7,
        RetentionClass.MONTHLY: policy.monthly_months * 31,
        RetentionClass.YEARLY: policy.yearly_years * 366,
    }
    floor = 0
    for cls in GFS:
        if days[cls]:
            days[cls] = max(days[cls], floor)
            floor = days[cls]
    days[RetentionClass.ONDEMAND] = policy.ondemand_days or policy.daily_days
    return {cls: d for cls, d in days.items() if d}


# --- Logical backups: keep_last and Object Lock ------------------------------------------------------------------


class LogicalFacts(NamedTuple):
    """What the keep pass knows about one complete logical backup (of one target and database)."""

    id: str
    slot: datetime
    retention_class: str  # recorded in its manifest when it completed
    scheduled: bool = True  # trigger == schedule


def retention_tags(backups: Iterable[LogicalFacts], policy: RetentionPolicy) -> dict[str, str]:
    """The retention tag each complete backup should carry: `keep` for the newest keep_last (whatever their class),
    every other backup its class: an on-demand one `ondemand`, a scheduled one its recorded class raised to the
    longest period whose end lies between it and the next newer scheduled backup. Pure; any order in."""
    ordered = sorted(backups, key=lambda b: (b.slot, b.id), reverse=True)
    tags: dict[str, str] = {}
    newer_scheduled: datetime | None = None
    for index, item in enumerate(ordered):
        if index < policy.keep_last:
            tags[item.id] = KEEP
        elif not item.scheduled:
            tags[item.id] = RetentionClass.ONDEMAND.value
        else:
            tags[item.id] = _raised(item, newer_scheduled, policy).value
        if item.scheduled:
            newer_scheduled = item.slot
    return tags


def _raised(item: LogicalFacts, newer: datetime | None, policy: RetentionPolicy) -> RetentionClass:
    recorded = RetentionClass(item.retention_class) if item.retention_class in set(GFS) else RetentionClass.DAILY
    if newer is None:  # no newer scheduled backup is known: keep what was decided at completion
        return recorded
    earned = newest_class(item.slot, newer, policy)
    return max(recorded, earned, key=GFS.index)


def lock_days(tag: str, policy: RetentionPolicy, retention_class: str | None = None) -> int:
    """How long a backup carrying this retention tag is locked (S3 Object Lock), counted from when the lock is set:
    its class's days (a tag this version does not know: the longest class). A `keep` backup is locked for its own
    class's days (`retention_class`, from its manifest) and at least KEEP_LOCK_DAYS, extended on every completed
    backup while it stays among the newest. Locking every `keep` backup for the longest class instead would keep
    every daily backup (each was once the newest) for years; 30 days costs nothing more than lifecycle already
    keeps (a daily backup lives its days plus NONCURRENT_VERSION_DAYS as a noncurrent version) and outlasts a
    month of failed backups (the dead-man alarm fires after one missed slot)."""
    days = class_days(policy)
    longest = max(days.values())
    if tag == KEEP:
        return max(KEEP_LOCK_DAYS, lock_days(retention_class, policy) if retention_class else 0)
    try:
        return days.get(RetentionClass(tag), longest)
    except ValueError:
        return longest


def wal_partial_rule(settings: Settings) -> dict[str, Any]:
    """Expire the noncurrent versions of the open WAL segments' `.partial` objects (tag kind=wal-partial) after
    WAL_PARTIAL_NONCURRENT_DAYS. The current version is never expired here: it is the newest WAL (the RPO's end)."""
    return {
        "ID": "lifeboat-wal-partial-versions",
        "Status": "Enabled",
        "Filter": {"And": {"Prefix": f"{settings.prefix}wal/", "Tags": [{"Key": KIND_TAG, "Value": WAL_PARTIAL_KIND}]}},
        "NoncurrentVersionExpiration": {"NoncurrentDays": WAL_PARTIAL_NONCURRENT_DAYS},
    }


def lifecycle_rules(settings: Settings, failed_prefix: str, abort_multipart_days: int = 1) -> list[dict[str, Any]]:
    """S3 lifecycle rules for the backup bucket, one per (policy, class): tags never overlap. No rule matches the
    tag `keep`: a target's newest keep_last backups never expire. Always with wal_partial_rule after the two fixed
    rules (its tag never meets a retention rule's): the rules depend on the settings only, so the stack, `lifeboat
    lifecycle` and `lifeboat check` derive the same list, whether or not a target streams WAL today."""
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
    rules.append(wal_partial_rule(settings))
    for name, policy in sorted(settings.retention_policies.items()):
        for cls, days in class_days(policy).items():
            rules.append(
                {
                    "ID": f"lifeboat-{name}-{cls.value}"[:255],
                    "Status": "Enabled",
                    "Filter": {
                        "And": {
                            "Prefix": settings.prefix,
                            "Tags": [{"Key": RETENTION_TAG, "Value": cls.value}, {"Key": POLICY_TAG, "Value": name}],
                        }
                    },
                    "Expiration": {"Days": days},
                    "NoncurrentVersionExpiration": {"NoncurrentDays": NONCURRENT_VERSION_DAYS},
                }
            )
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
    for item in good[: policy.keep_last]:
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
