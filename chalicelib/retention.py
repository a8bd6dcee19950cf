"""Grandfather-father-son retention: which class a backup belongs to, and how long each class lives.

Pure functions: the class of a run is decided from its slot and the previous successful backup; S3
lifecycle rules (not Lambda code) then expire logical backups by their `retention` tag.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

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
