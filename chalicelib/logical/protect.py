"""After a logical backup completes: the retention tags of the target's newest backups (keep_last) and S3 Object Lock.

S3 lifecycle rules expire a backup's objects by their `retention` tag and cannot express "the newest N", so the
worker re-tags when a backup completes (chalicelib.scheduling.retention.retention_tags decides, purely): the newest
`keep_last` complete backups of the target (and database) carry `keep`, which no rule expires; a backup that drops
out gets its class back. The window looked at: the newest keep_last backups, then older ones until WINDOW_EXTRA
scheduled backups more were seen (on-demand ones in between do not count: they never represent a period), at most
MAX_WINDOW. A backup whose slot is in the future (catalog.is_future) is left out of every decision, and logged.

Then, with `settings.object_lock_mode`, *every* backup of the window is checked, whether or not its tag changed (a
backup whose own pass never finished is locked by the next one): each object the manifest lists is HEADed (the
version the manifest recorded, when it did) and locked, by that version, until its tag's days end (lock_days;
counted from the backup's completion, from now for the new backup and the rolling lock of a `keep` one) when its own
lock is shorter; the manifest last. Each object is judged by its own lock, never by another's: a lock extended by
hand on one object does not excuse the others, and a newer version written over an object does not take the lock
meant for the one the backup recorded. Locks are only ever extended, never shortened (nobody may shorten one: see
README, "What an attacker with a function's credentials can and cannot do").

Idempotent: a redelivery of a complete backup runs it again, which repairs a pass that was interrupted.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from chalicelib.adapters.s3 import BackupStore
from chalicelib.config import Config
from chalicelib.logical.catalog import BackupId, Catalog, Manifest, is_future
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

# Beyond the newest keep_last, this many more scheduled backups are looked at: the one that drops out of the newest N,
# and its older neighbour (whose class may rise when a newer slot failed). Each costs a GET, a GetObjectTagging and,
# with Object Lock, a HEAD per object.
WINDOW_EXTRA = 2
HEAD_CONCURRENCY = 8
MAX_WINDOW = 40  # manifests read at most, however many on-demand backups lie between scheduled ones


@dataclass(frozen=True)
class Change:
    backup_id: str
    old: str
    new: str
    locked_until: datetime | None = None


def protect(store: BackupStore, catalog: Catalog, config: Config, manifest: Manifest, now: datetime) -> list[Change]:
    """Re-tag the newest backups of the manifest's target and database, and lock every one of them that is locked
    for less than its tag asks (see the module's docstring). Returns what changed, the new backup first. Raises
    StorageError when S3 refuses a call: the backup stays complete; a redelivery repeats the pass."""
    target = config.target(manifest.target)
    policy = config.policy_for(target)
    mode = config.settings.object_lock_mode
    bid = BackupId.parse(manifest.backup_id)
    manifests = _window(catalog, manifest, bid, policy.keep_last, now)
    facts = [LogicalFacts(m.backup_id, m.slot, m.retention_class, m.trigger == SCHEDULED) for m in manifests.values()]
    wanted = retention_tags(facts, policy)
    current = {
        key: store.tags(catalog.layout.manifest_key(BackupId.parse(key)), manifests[key].stored_version).get(
            RETENTION_TAG, ""
        )
        for key in wanted
    }
    # Keep first: while tags change, the target never has fewer than keep_last backups that no rule expires.
    order = sorted(wanted, key=lambda key: (key != str(bid), wanted[key] != KEEP))
    changes = []
    for key in order:
        new, old = wanted[key], current[key]
        m = manifests[key]
        manifest_key = catalog.layout.manifest_key(BackupId.parse(key))
        if new != old:
            tags = {RETENTION_TAG: new, POLICY_TAG: m.retention_policy, "target": m.target}
            for obj in m.objects:
                store.put_tags(obj.key, tags, version_id=obj.version_id)
            store.put_tags(manifest_key, tags, version_id=m.stored_version)  # its first version, even if hidden
        until = None
        if mode:
            rolling = new == KEEP or key == str(bid)  # counted from now; any other: from the backup's completion
            since = now if rolling else min(m.finished_at, now)
            until = (since + timedelta(days=lock_days(new, policy, m.retention_class))).replace(microsecond=0)
            until = until if until > now and _lock(store, m, manifest_key, mode, until) else None
        if new != old or until is not None or key == str(bid):
            changes.append(Change(key, old, new, until))
    if changes:
        logger.info("retention tags and locks", extra={"changes": [c.__dict__ for c in changes]})
    return changes


def _window(catalog: Catalog, manifest: Manifest, bid: BackupId, keep_last: int, now: datetime) -> dict[str, Manifest]:
    """The complete backups the pass decides for, by id: the new one, the newest keep_last, and older ones until
    WINDOW_EXTRA scheduled ones more (on-demand ones do not count); none whose slot is in the future."""
    listing = catalog.listing(bid.target)  # from the versions: a backup a delete marker hides is still seen
    ids = [b for b in catalog.backup_ids(bid.target, listing) if b.database == bid.database]
    manifests: dict[str, Manifest] = {}
    if is_future(manifest.slot, now):
        logger.warning("a backup's slot is in the future: left out of retention", extra={"backup_id": str(bid)})
    else:
        manifests[str(bid)] = manifest
    seen, scheduled_extra, reads = 0, 0, 0
    for other in ids:  # newest first: a manifest that is invalid or whose objects are missing is not a backup
        if (seen >= keep_last and scheduled_extra >= WINDOW_EXTRA) or reads >= MAX_WINDOW:
            break
        found = manifests.get(str(other))
        if found is None and str(other) != str(bid):
            reads += 1
            found = catalog.read_manifest(other, listing.history(catalog.layout.manifest_key(other)))
            if found is None or catalog.missing_objects(found, listing):
                continue
            if is_future(found.slot, now):
                logger.warning(
                    "a backup's slot is in the future: left out of retention", extra={"backup_id": str(other)}
                )
                continue
            manifests[str(other)] = found
        if found is None:
            continue
        seen += 1
        if seen > keep_last and found.trigger == SCHEDULED:
            scheduled_extra += 1
    return manifests


def _lock(store: BackupStore, m: Manifest, manifest_key: str, mode: str, until: datetime) -> bool:
    """Lock each object of the backup, and its manifest last (the version read: its first), until `until` where its
    own lock (HEAD of the version the manifest recorded, else of the current one) is shorter; by that version.
    Whether any lock was set."""
    objects = [(o.key, o.version_id) for o in m.objects]
    with ThreadPoolExecutor(max_workers=HEAD_CONCURRENCY) as pool:  # a directory dump: hundreds of files
        locked = list(pool.map(lambda o: extend_lock(store, o[0], o[1], mode, until), objects))
    return extend_lock(store, manifest_key, m.stored_version, mode, until) or any(locked)  # the manifest last


def extend_lock(store: BackupStore, key: str, version_id: str | None, mode: str, until: datetime) -> bool:
    """Lock that version of `key` (else its current one) until `until` unless it is locked as long already; whether
    a lock was set. Also for point-in-time bases and WAL (chalicelib.pitr.protect)."""
    head = store.head(key, version_id=version_id)
    if head is None:
        logger.warning("cannot lock: not in the bucket", extra={"key": key, "version_id": version_id})
        return False
    if head.retain_until is not None and head.retain_until >= until:
        return False
    store.lock(key, mode, until, version_id=version_id or head.version_id)
    return True
