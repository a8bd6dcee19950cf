"""Object Lock for base backups and the WAL they need, so that nobody with a function's or the task's rights can
delete them before the retention policy lets `wal-prune` do so (README "Point-in-time recovery without an agent").

- A base is locked (every object, by the VersionId its manifest recorded, and the manifest itself) until the end of
  the class it earns: the policy keeps it (prune.bases_to_keep, the snapshots' GFS rule) and it is the newest of the
  longest period whose end lies between it and the next base (scheduling.retention.newest_class, as snapshot locks
  decide), counted from its start: `class_days` of that class. The newest `keep_last` bases are locked at least
  KEEP_LOCK_DAYS from now, extended on every pass while they stay among the newest. The newest base is not yet
  the newest of any finished period, so it earns its class only when the next base exists: locking it for the
  longest class at once would keep every base for years (a lock cannot be shortened).
- An incremental base's ancestors are kept with it (prune.bases_to_keep) and each is locked at least as long as
  its longest-locked descendant: a locked incremental is worthless without its chain.
- WAL: each finished segment and history file is locked at upload for `wal_lock_days`, which follows the window
  `wal-prune` keeps (`wal.pitr_days`): a segment is needed for "any time" until a base that started after it is
  pitr_days old, i.e. for pitr_days plus the time between two bases (base_schedule's longest interval; without a
  schedule NO_SCHEDULE_MARGIN_DAYS, so bases taken less often than weekly leave the oldest window WAL unlocked for a
  while, never deleted early: prune decides by the bases, not by locks). Never longer than the longest class. WAL
  outside the window is needed only as a kept base's own WAL (a restore point): every pass extends the locks of each
  kept base's start..end segments (and its timeline's history file) to the base's lock, so a locked base is always
  restorable to its consistent point. A segment not yet uploaded when a pass runs (the end segment, right after the
  base) keeps its upload lock until the next pass (the next base or `wal-prune`, well within pitr_days).

A pass runs after every base backup and every `wal-prune`; it is idempotent and only ever extends locks. It reads
the bases as `recover` does (signed manifests only, with a signing key): a forged manifest is never locked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta

from chalicelib.adapters.s3 import BackupStore
from chalicelib.config import RetentionPolicy
from chalicelib.logical.protect import extend_lock
from chalicelib.observability import logger
from chalicelib.pitr.basebackup import MANIFEST, BaseBackup, BaseLayout, BaseRun, read_bases, run_base_backup
from chalicelib.pitr.prune import bases_to_keep
from chalicelib.pitr.settings import Wal
from chalicelib.pitr.versions import KeyVersions
from chalicelib.pitr.walnames import Segment, WalLayout
from chalicelib.scheduling.retention import KEEP_LOCK_DAYS, RetentionClass, class_days, newest_class

NO_SCHEDULE_MARGIN_DAYS = 7  # without wal.base_schedule: bases are assumed at least weekly (README "Locks")


def wal_lock_days(policy: RetentionPolicy, wal: Wal | None = None) -> int:
    """How long each finished WAL segment is locked at upload (the module's docstring): `wal.pitr_days` plus the
    base schedule's interval in whole days (NO_SCHEDULE_MARGIN_DAYS without one), at most the longest class (at
    least KEEP_LOCK_DAYS): without a `wal` section, that longest class. Pure."""
    longest = max(KEEP_LOCK_DAYS, *class_days(policy).values())
    if wal is None:
        return longest
    schedule = wal.schedule()
    between = math.ceil(schedule.interval_hint / timedelta(days=1)) if schedule else NO_SCHEDULE_MARGIN_DAYS
    return min(longest, wal.pitr_days + between)


def base_locks(bases: Sequence[BaseBackup], policy: RetentionPolicy, now: datetime) -> dict[str, datetime]:
    """Each kept base's lock end (the module's docstring); a base the policy no longer keeps gets none. Pure."""
    keep = bases_to_keep(bases, policy, now)
    ordered = sorted(bases, key=lambda b: (b.started_at, b.backup_id))
    newest = {b.backup_id for b in ordered[-policy.keep_last :]} if policy.keep_last else set()
    days = class_days(policy)
    locks = {}
    for index, base in enumerate(ordered):
        if base.backup_id not in keep:
            continue
        following = ordered[index + 1].started_at if index + 1 < len(ordered) else None
        earned = newest_class(base.started_at, following, policy) if following else RetentionClass.DAILY
        until = base.started_at + timedelta(days=days.get(earned, 0))
        if base.backup_id in newest:
            until = max(until, now + timedelta(days=KEEP_LOCK_DAYS))
        locks[base.backup_id] = until.replace(microsecond=0)
    return _locked_with_descendants(locks, ordered)


def _locked_with_descendants(locks: dict[str, datetime], bases: Sequence[BaseBackup]) -> dict[str, datetime]:
    """Each ancestor of a locked incremental locked at least as long as it (the chain goes whole or not at all)."""
    extended, listed = dict(locks), {b.backup_id for b in bases}
    for base in bases:
        until = locks.get(base.backup_id)
        if until is None:
            continue
        for ancestor in {*base.chain, *([base.parent] if base.parent else [])} & listed:
            extended[ancestor] = max(extended.get(ancestor, until), until)
    return extended


def _wal_keys(base: BaseBackup, wal: WalLayout) -> list[str]:
    segments = range(base.start_segment.number, base.end_segment.number + 1)
    keys = [wal.segment_key(Segment(base.timeline, n, base.segment_size)) for n in segments]
    return keys + ([wal.history_key(base.timeline)] if base.timeline > 1 else [])


def protect_bases(
    store: BackupStore,
    prefix: str,
    target: str,
    policy: RetentionPolicy,
    mode: str,
    now: datetime,
    bases: Sequence[BaseBackup] | None = None,
) -> dict[str, datetime]:
    """One pass: lock every kept base and its own WAL until its lock end; {backup id: lock end}. `bases`: as
    read_bases believed them (None: read here, unsigned manifests believed: pass the checked ones)."""
    layout, wal = BaseLayout(prefix, target), WalLayout(prefix, target)
    known = list(bases) if bases is not None else read_bases(store, layout)[0]
    locks = base_locks(known, policy, now)
    versions = KeyVersions.of(store)
    changed = []
    for base in known:
        until = locks.get(base.backup_id)
        if until is None or until <= now:
            continue
        objects = [(o.key, o.version_id) for o in base.objects]
        objects.append((layout.folder(base.backup_id) + MANIFEST, base.stored_version))  # the manifest last
        for key in _wal_keys(base, wal):  # the first version: the one wal-fetch serves
            first = versions.first(key)[0] if versions is not None else None
            objects.insert(0, (key, first.version_id if first else None))
        if sum(extend_lock(store, key, version, mode, until) for key, version in objects):
            changed.append({"base": base.backup_id, "until": until.isoformat()})
    if changed:
        logger.info("base backups locked", extra={"target": target, "locks": changed})
    return locks


def protected_base_backup(run: BaseRun, policy: RetentionPolicy, mode: str | None) -> BaseBackup:
    """A base backup, then (with an Object Lock mode) a lock pass over the target's bases, the new one included."""
    base = run_base_backup(run)
    if mode:
        bases = read_bases(run.store, run.layout, run.sealer)[0]
        protect_bases(run.store, run.layout.prefix, run.target, policy, mode, run.clock(), bases)
    return base
