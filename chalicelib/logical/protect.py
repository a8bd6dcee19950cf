"""After a logical backup completes: the retention tags of the target's newest backups (keep_last) and S3 Object Lock.

S3 lifecycle rules expire a backup's objects by their `retention` tag and cannot express "the newest N", so the
worker re-tags when a backup completes (chalicelib.scheduling.retention.retention_tags decides, purely): the newest
`keep_last` complete backups of the target (and database) carry `keep`, which no rule expires; a backup that drops
out gets its class back. Then, with `settings.object_lock_mode`, the new backup's objects and manifest are locked
until its retention tag's days end (`keep`: its class's days, at least a rolling 30; see lock_days), and a
backup whose tag now asks for a longer lock
has its lock extended (the manifest's current lock, read by HEAD, says how long it already is). Locks are only
ever extended, never shortened (nobody may shorten one: see README, "What an attacker with a function's
credentials can and cannot do").

Idempotent: a redelivery of a complete backup runs it again, which repairs a pass that was interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from chalicelib.adapters.s3 import BackupStore
from chalicelib.config import Config
from chalicelib.logical.catalog import BackupId, Catalog, Manifest
from chalicelib.observability import logger
from chalicelib.scheduling.retention import (
    KEEP,
    POLICY_TAG,
    RETENTION_TAG,
    SCHEDULED,
    LogicalFacts,
    lock_days,
    retention_tags,
)

# Beyond the newest keep_last, this many more are looked at: the backup that drops out of the newest N, and its older
# neighbour (whose class may rise when a newer slot failed). Each costs a GET and a GetObjectTagging.
WINDOW_EXTRA = 2


@dataclass(frozen=True)
class Change:
    backup_id: str
    old: str
    new: str
    locked_until: datetime | None = None


def protect(store: BackupStore, catalog: Catalog, config: Config, manifest: Manifest, now: datetime) -> list[Change]:
    """Re-tag the newest backups of the manifest's target and database, and lock the new backup (see the module's
    docstring). Returns what changed, the new backup first. Raises StorageError when S3 refuses a call: the backup
    stays complete; a redelivery repeats the pass."""
    target = config.target(manifest.target)
    policy = config.policy_for(target)
    mode = config.settings.object_lock_mode
    bid = BackupId.parse(manifest.backup_id)
    listing = catalog.listing(target.name)
    ids = [b for b in catalog.backup_ids(target.name, listing) if b.database == bid.database]
    manifests = {str(bid): manifest}
    for other in ids:  # the newest complete ones: a manifest whose objects are missing is not a backup
        if len(manifests) >= policy.keep_last + WINDOW_EXTRA:
            break
        found = catalog.read_manifest(other) if str(other) not in manifests else None
        if found is not None and not catalog.missing_objects(found, listing):
            manifests[str(other)] = found
    facts = [LogicalFacts(m.backup_id, m.slot, m.retention_class, m.trigger == SCHEDULED) for m in manifests.values()]
    wanted = retention_tags(facts, policy)
    current = {
        key: store.tags(catalog.layout.manifest_key(BackupId.parse(key))).get(RETENTION_TAG, "") for key in wanted
    }
    # Keep first: while tags change, the target never has fewer than keep_last backups that no rule expires.
    order = sorted(wanted, key=lambda key: (key != str(bid), wanted[key] != KEEP))
    changes = []
    for key in order:
        new, old = wanted[key], current[key]
        is_new = key == str(bid)
        if new == old and not is_new and new != KEEP:  # a kept backup's rolling lock is extended on every pass
            continue
        m = manifests[key]
        keys = [o.key for o in m.objects] + [catalog.layout.manifest_key(BackupId.parse(key))]
        if new != old:
            tags = {RETENTION_TAG: new, POLICY_TAG: m.retention_policy, "target": m.target}
            for object_key in keys:
                store.put_tags(object_key, tags)
        days = lock_days(new, policy, m.retention_class)
        until = (now + timedelta(days=days)).replace(microsecond=0) if mode else None
        if mode and until and _needs_longer_lock(store, keys[-1], until):
            for object_key in keys:  # the manifest last: its lock says the whole backup is locked that long
                store.lock(object_key, mode, until)
        else:
            until = None
        changes.append(Change(key, old, new, until))
    if changes:
        logger.info("retention tags and locks", extra={"changes": [c.__dict__ for c in changes]})
    return changes


def _needs_longer_lock(store: BackupStore, manifest_key: str, until: datetime) -> bool:
    """Whether the backup is locked for less than `until` (or not at all): a lock is only ever extended, so a pass
    that runs again (a redelivery) or a tag that asks for less than the backup already has changes nothing."""
    head = store.head(manifest_key)
    return head is not None and (head.retain_until is None or head.retain_until < until)
