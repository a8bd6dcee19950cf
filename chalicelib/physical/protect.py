"""Protecting a finished snapshot: an EBS snapshot lock for its retention, and a share with the vault account.

The sweep calls `protect` when it sees a managed snapshot (a source or its cross-region copy) available, before it
marks it observed; if protecting fails, the snapshot stays unmarked and the next sweep tries again.

- Lock (EBS only): `lock_mode(settings)` (governance by default, compliance as an option), for `lock_days`: the
  retention the set earns under the GFS policy, and at least KEEP_LOCK_DAYS, since at completion it is the target's
  newest backup. The lock's end is recorded in the tag `lifeboat:locked-until`, so the pruner does not try to delete
  the set before it (EC2 would refuse anyway). RDS and Aurora snapshots have no lock (AWS offers none): only IAM
  protects them (only the pruner's role deletes, and only snapshots tagged managed; stack/capabilities.py).
- Share (`settings.vault_account_id`): EBS `createVolumePermission` (only added: IAM forbids a group and any
  Remove), RDS `restore` (encrypted snapshots only: IAM cannot limit RDS share values). A share is not a copy: the vault
  account must copy the snapshot into its own account (and, when encrypted, under its own key) for the copy to
  outlive this account's compromise. An encrypted snapshot is usable there only when its key is a customer managed
  key whose key policy grants that account kms:Decrypt, kms:DescribeKey, kms:CreateGrant and kms:ReEncrypt*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from chalicelib.config import Physical, RetentionPolicy, Settings
from chalicelib.physical.driver import Driver
from chalicelib.physical.model import SnapshotServices, SnapshotSet
from chalicelib.physical.names import LOCKED_UNTIL_TAG, format_slot_tag
from chalicelib.scheduling.retention import KEEP, SCHEDULED, backup_class, lock_days

MAX_EBS_LOCK_DAYS = 36_500  # LockDuration's upper bound


@dataclass(frozen=True)
class Protection:
    """What `protect` did to a set: the lock's end (None: not locked) and the account it was shared with."""

    locked_until: datetime | None = None
    shared_with: str | None = None
    tags: dict[str, str] = field(default_factory=dict)  # to set with the observation mark


def lock_mode(settings: Settings) -> str | None:
    """The EBS lock mode as EC2 spells it (`governance`, `compliance`), or None: no lock."""
    mode = settings.snapshot_lock_mode or settings.object_lock_mode
    return None if mode in (None, "NONE") else mode.lower()


def snapshot_lock_days(snap: SnapshotSet, physical: Physical, policy: RetentionPolicy) -> int:
    """How long a set is locked from when it completes: the days of the class it earns as the newest of its periods
    when the schedule's next slot succeeds (`backup_class`, the semantic the pruner keeps by), at least KEEP_LOCK_DAYS
    (`lock_days` of a `keep` backup: at completion it is the target's newest). On-demand sets: `ondemand_days`. A
    scheduled set of a target without a schedule (it had one once) goes by its `retention` tag."""
    if physical.schedule or snap.trigger != SCHEDULED:
        retention_class = backup_class(snap.slot, snap.trigger, physical.schedule, policy).value
    else:
        retention_class = snap.retention_class
    return min(MAX_EBS_LOCK_DAYS, lock_days(KEEP, policy, retention_class or None))


def protect(
    svc: SnapshotServices, driver: Driver, snap: SnapshotSet, physical: Physical, policy: RetentionPolicy
) -> Protection:
    """Lock (EBS) and share (vault) an available set; raises SnapshotError (saying what to fix) when AWS refuses."""
    settings = svc.config.settings
    mode = lock_mode(settings)
    locked_until: datetime | None = None
    tags: dict[str, str] = {}
    if mode and driver.lockable:  # RDS and Aurora: no snapshot lock exists
        days = snapshot_lock_days(snap, physical, policy)
        fallback = svc.clock() + timedelta(days=days)  # should EC2 not say when the lock ends
        locked_until = max(driver.lock(svc, m, mode, days) or fallback for m in snap.members)
        tags[LOCKED_UNTIL_TAG] = format_slot_tag(locked_until)
    if settings.vault_account_id:
        driver.share(svc, snap.members, settings.vault_account_id)
    return Protection(locked_until, settings.vault_account_id, tags)
