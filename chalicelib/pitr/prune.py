"""`lifeboat wal-prune TARGET`: base backups the retention policy no longer keeps go, and the WAL only they needed.

Base backups are judged like snapshots (scheduling.retention.snapshots_to_keep): the target's GFS policy by each
base's start time, its `keep_last` newest always kept. Nothing expires them by lifecycle (they carry no retention
tag), so this pass is their only end. WAL is kept exactly as long as a base that needs it: every segment (finished
or `.partial`) older than the oldest kept base's start segment goes, on every timeline (LSNs grow across timelines,
so no kept base replays WAL before its own start). A timeline's history file stays while a needed timeline (a kept
base's, one that still holds WAL, or their ancestors named in their history files) references it. Gap records
wholly before the oldest kept base go too: no kept base replays across them.

Object Lock: an object is deleted only once its lock has expired (HEAD shows the lock to a caller with
s3:GetObjectRetention); a locked one is reported as kept. A base with any locked object is kept whole, and the WAL
it needs with it. Deletes are plain (a delete marker): the versions stay until the lifecycle's noncurrent-version
expiry; nothing here needs or uses s3:DeleteObjectVersion. A base's manifest.json goes first, so a half-deleted
base is never listed as complete. With no complete base nothing is pruned: the WAL may be for a base in progress.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chalicelib.adapters.s3 import BackupStore
from chalicelib.config import RetentionPolicy
from chalicelib.errors import LifeboatError
from chalicelib.observability import logger
from chalicelib.pitr.basebackup import MANIFEST, BaseBackup, BaseLayout, list_bases
from chalicelib.pitr.sealing import Sealer
from chalicelib.pitr.walarchive import WalArchive, WalEntry
from chalicelib.pitr.walnames import DEFAULT_SEGMENT_SIZE, Segment, WalLayout
from chalicelib.scheduling.retention import SnapshotFacts, snapshots_to_keep


def bases_to_keep(bases: Iterable[BaseBackup], policy: RetentionPolicy, now: datetime) -> dict[str, str]:
    """The bases the GFS policy keeps, each with its reason(s); every other may go. Pure."""
    return snapshots_to_keep((SnapshotFacts(b.backup_id, b.started_at) for b in bases), policy, now)


def history_parents(text: str) -> list[int]:
    """The ancestor timelines a history file names (each line: parent timeline, switch LSN, reason). Pure."""
    parents = []
    for line in text.splitlines():
        first = line.split("#", 1)[0].split()
        if first and first[0].isdigit():
            parents.append(int(first[0]))
    return parents


def needed_timelines(roots: Iterable[int], parents: dict[int, list[int]]) -> set[int]:
    """The roots and every ancestor their history files name. Pure."""
    needed = set(roots)
    for timeline in list(needed):
        needed.update(parents.get(timeline, []))
    return needed


@dataclass(frozen=True)
class WalPrunePlan:
    cutoff: Segment | None  # segments before this one's number go (None: keep all WAL)
    wal: list[WalEntry]  # segments and .partial objects to delete
    history: list[WalEntry]  # history files to delete
    gaps: list[str]  # gap records (as "after-before") to delete


def plan_wal(
    kept: Sequence[BaseBackup],
    entries: Sequence[WalEntry],
    parents: dict[int, list[int]],
    gaps: Sequence[dict[str, Any]],
) -> WalPrunePlan:
    """What WAL the kept bases no longer need (see the module's docstring). Pure."""
    if not kept:
        return WalPrunePlan(None, [], [], [])
    cutoff = min((b.start_segment for b in kept), key=lambda s: s.number)
    segments = [e.segment for e in entries if e.segment is not None]
    newest = max(segments, key=lambda s: s.position).number if segments else 0
    # The newest segment always stays: the receiver resumes from it and checks continuity against it.
    below = min(cutoff.number, newest)
    wal = [e for e in entries if e.segment is not None and e.segment.number < below]
    gone = {e.key for e in wal}
    holding = {e.timeline for e in entries if e.segment is not None and e.key not in gone}
    needed = needed_timelines(holding | {b.timeline for b in kept}, parents)
    history = [e for e in entries if e.segment is None and e.timeline not in needed]

    def number(name: object) -> int:
        return Segment.parse(str(name), cutoff.segment_size).number if name else -1

    old_gaps = [g for g in gaps if max(number(g.get("after")), number(g.get("before"))) < cutoff.number]
    return WalPrunePlan(cutoff, wal, history, [f"{g.get('after') or 'start'}-{g.get('before')}" for g in old_gaps])


@dataclass
class WalPruneReport:
    target: str
    dry_run: bool
    kept_bases: dict[str, str] = field(default_factory=dict)  # id -> why
    deleted_bases: list[str] = field(default_factory=list)  # "would delete" when dry_run
    cutoff: str | None = None
    deleted_wal: list[str] = field(default_factory=list)  # keys
    locked: dict[str, str] = field(default_factory=dict)  # key -> "locked until ..."
    deleted_gaps: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _lock(store: BackupStore, key: str, now: datetime) -> str | None:
    """ "locked until ..." while the object's current version is locked; None when it may go."""
    head = store.head(key)
    until = head.retain_until if head else None
    return f"locked until {until.isoformat()}" if until is not None and until > now else None


def _delete(store: BackupStore, keys: list[str], report: WalPruneReport, what: str) -> bool:
    if report.dry_run or not keys:
        return True
    try:
        store.delete(keys)
    except LifeboatError as exc:
        report.errors.append(f"deleting {what}: {exc}")
        return False
    return True


def _prune_bases(
    store: BackupStore,
    layout: BaseLayout,
    bases: list[BaseBackup],
    policy: RetentionPolicy,
    report: WalPruneReport,
    now: datetime,
) -> list[BaseBackup]:
    """Delete the bases the policy drops (manifest first); the bases that stay."""
    keep = bases_to_keep(bases, policy, now)
    staying = []
    for base in bases:
        folder = layout.folder(base.backup_id)
        if base.backup_id in keep:
            report.kept_bases[base.backup_id] = keep[base.backup_id]
            staying.append(base)
            continue
        keys = [info.key for info in store.list_objects(folder)]
        locks = {k: why for k in keys if (why := _lock(store, k, now))}
        if locks:
            report.kept_bases[base.backup_id] = next(iter(locks.values()))
            report.locked.update(locks)
            staying.append(base)
            continue
        manifest = [k for k in keys if k == folder + MANIFEST]
        if _delete(store, manifest, report, base.backup_id) and _delete(
            store, [k for k in keys if k not in manifest], report, base.backup_id
        ):
            report.deleted_bases.append(base.backup_id)
        else:
            staying.append(base)  # its manifest may still be there: keep its WAL
    return staying


def prune_wal(
    store: BackupStore,
    prefix: str,
    target: str,
    policy: RetentionPolicy,
    now: datetime,
    dry_run: bool = False,
    sealer: Sealer | None = None,
) -> WalPruneReport:
    """One pass over a target's bases and WAL (see the module's docstring); `now` from the caller's clock. With
    `sealer` only bases whose manifest is signed count (a forged newer base never pushes a real one out of the
    newest keep_last); a refused manifest's folder is left alone."""
    report = WalPruneReport(target, dry_run)
    base_layout = BaseLayout(prefix, target)
    bases = list_bases(store, base_layout, sealer)
    kept = _prune_bases(store, base_layout, bases, policy, report, now)
    archive = WalArchive(store, WalLayout(prefix, target))
    segment_size = bases[-1].segment_size if bases else DEFAULT_SEGMENT_SIZE
    entries = archive.entries(segment_size)
    parents: dict[int, list[int]] = {}
    for entry in entries:
        if entry.segment is None:
            found = archive.fetch(f"{entry.timeline:08X}.history")
            parents[entry.timeline] = history_parents(found[0].decode(errors="replace")) if found else []
    plan = plan_wal(kept, entries, parents, archive.gaps())
    report.cutoff = plan.cutoff.name if plan.cutoff else None
    deletable = []
    for entry in [*plan.wal, *plan.history]:
        why = _lock(store, entry.key, now)
        if why:
            report.locked[entry.key] = why
        else:
            deletable.append(entry.key)
    if _delete(store, deletable, report, "WAL"):
        report.deleted_wal = deletable
    gap_keys = [f"{archive.layout.gaps_prefix}{name}.json" for name in plan.gaps]
    if _delete(store, gap_keys, report, "gap records"):
        report.deleted_gaps = plan.gaps
    logger.info(
        "wal-prune",
        extra={
            "target": target,
            "dry_run": dry_run,
            "bases_deleted": len(report.deleted_bases),
            "wal_deleted": len(report.deleted_wal),
            "locked": len(report.locked),
            "cutoff": report.cutoff,
        },
    )
    return report
