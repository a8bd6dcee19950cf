"""`lifeboat wal-prune TARGET`: base backups the retention policy no longer keeps go, and the WAL only they needed.

Base backups are judged like snapshots (scheduling.retention.snapshots_to_keep): the target's GFS policy by each
base's start time, its `keep_last` newest always kept. Nothing expires them by lifecycle (they carry no retention
tag), so this pass is their only end. An incremental base (PostgreSQL 17+) is restorable only with its whole chain,
so every ancestor of a kept or locked incremental stays as long as it does (chains.chain_closure), and the window
base is a restorable one.

WAL is kept for two different promises (`wal.pitr_days`, default 7):
- The window: any time from the *window base* on is restorable. The window base is the newest kept base that started
  at or before now - pitr_days (so the window covers at least pitr_days; none that old: the oldest kept base). Every
  segment (finished or `.partial`) from its start segment on stays, on every timeline.
- Restore points: each older kept base (a weekly, monthly or yearly one) keeps only its own WAL, its start to its
  end segment, so it stays restorable to its end (its consistent point), not to any time after it. A yearly base no
  longer keeps a year of WAL.
Everything else before the window base's start segment goes, on every timeline (LSNs grow across timelines, so no
kept base replays WAL before its own start). Without pitr_days (None) the window base is the oldest kept base: all
WAL after it stays. A timeline's history file stays while a needed timeline (a kept base's, one that still holds
WAL, or their ancestors named in their history files) references it. Gap records wholly before the window base's
start go too: the window does not replay across them, and the restore points end before any WAL they miss.

Object Lock: an object is deleted only once its lock has expired (HEAD shows the lock to a caller with
s3:GetObjectRetention); a locked one is reported as kept. A base with any locked object is kept whole, and the WAL
it needs with it. Deletes are plain (a delete marker): the versions stay until the lifecycle's noncurrent-version
expiry; nothing here needs or uses s3:DeleteObjectVersion. A base's manifest.json goes first, so a half-deleted
base is never listed as complete. With no complete base nothing is pruned: the WAL may be for a base in progress.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from chalicelib.adapters.s3 import BackupStore
from chalicelib.config import RetentionPolicy
from chalicelib.errors import LifeboatError
from chalicelib.observability import logger
from chalicelib.pitr.basebackup import MANIFEST, BaseBackup, BaseLayout, list_bases
from chalicelib.pitr.chains import chain_closure, restorable
from chalicelib.pitr.sealing import Sealer
from chalicelib.pitr.walarchive import WalArchive, WalEntry
from chalicelib.pitr.walnames import DEFAULT_SEGMENT_SIZE, Segment, WalLayout
from chalicelib.scheduling.retention import SnapshotFacts, snapshots_to_keep


def bases_to_keep(bases: Iterable[BaseBackup], policy: RetentionPolicy, now: datetime) -> dict[str, str]:
    """The bases the GFS policy keeps, each with its reason(s), and every ancestor a kept incremental base needs
    (chains.chain_closure: its chain is restorable only whole); every other may go. Pure."""
    listed = list(bases)
    keep = snapshots_to_keep((SnapshotFacts(b.backup_id, b.started_at) for b in listed), policy, now)
    return keep | chain_reasons(keep, listed)


def chain_reasons(kept_ids: Iterable[str], bases: Sequence[BaseBackup]) -> dict[str, str]:
    """The listed ancestors the kept incrementals need beyond `kept_ids`, each with the kept base(s) that need it.
    Pure."""
    kept = set(kept_ids)
    listed = {b.backup_id for b in bases}
    needed = (chain_closure(kept, bases) - kept) & listed
    needers: dict[str, list[str]] = {}
    for base in bases:
        if base.backup_id in kept:
            for ancestor in needed & {*base.chain, *([base.parent] if base.parent else [])}:
                needers.setdefault(ancestor, []).append(base.backup_id)
    return {a: f"in the chain of kept incremental base(s) {', '.join(sorted(needers[a]))}" for a in sorted(needed)}


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
    # The lowest start of the window base and the newer bases: WAL before it goes unless a restore point needs it.
    cutoff: Segment | None  # None: no kept base, nothing goes
    wal: list[WalEntry]  # segments and .partial objects to delete
    history: list[WalEntry]  # history files to delete
    gaps: list[str]  # gap records (as "after-before") to delete
    window_base: str | None = None  # the base the whole WAL is kept from
    restore_points: list[str] = field(default_factory=list)  # older kept bases: only their own WAL is kept


def window_base(kept: Sequence[BaseBackup], window_from: datetime | None) -> BaseBackup:
    """The kept base all WAL is kept from: the newest that started at or before `window_from` (none: the oldest;
    `window_from` None: the oldest). Only a restorable one (an incremental with a broken chain cannot start the
    window: recovery would start from an older base, whose WAL after its end must stay) unless none is. Pure."""
    usable = restorable(kept)[0] or list(kept)
    ordered = sorted(usable, key=lambda b: (b.started_at, b.backup_id))
    old_enough = [b for b in ordered if window_from is not None and b.started_at <= window_from]
    return old_enough[-1] if old_enough else ordered[0]


def plan_wal(
    kept: Sequence[BaseBackup],
    entries: Sequence[WalEntry],
    parents: dict[int, list[int]],
    gaps: Sequence[dict[str, Any]],
    window_from: datetime | None = None,
) -> WalPrunePlan:
    """What WAL the kept bases no longer need (see the module's docstring); `window_from`: now - pitr_days. Pure."""
    if not kept:
        return WalPrunePlan(None, [], [], [])
    first = window_base(kept, window_from)
    inside = [b for b in kept if (b.started_at, b.backup_id) >= (first.started_at, first.backup_id)]
    # The lowest start, not the window base's: after a restored server the numbers go back (a newer base, lower ones).
    cutoff = min((b.start_segment for b in inside), key=lambda s: s.number)
    older = [b for b in kept if b.backup_id not in {i.backup_id for i in inside}]
    own = {n for b in older for n in range(b.start_segment.number, b.end_segment.number + 1)}
    segments = [e.segment for e in entries if e.segment is not None]
    newest = max(segments, key=lambda s: s.position).number if segments else 0
    # The newest segment always stays: the receiver resumes from it and checks continuity against it.
    below = min(cutoff.number, newest)
    wal = [e for e in entries if e.segment is not None and e.segment.number < below and e.segment.number not in own]
    gone = {e.key for e in wal}
    holding = {e.timeline for e in entries if e.segment is not None and e.key not in gone}
    needed = needed_timelines(holding | {b.timeline for b in kept}, parents)
    history = [e for e in entries if e.segment is None and e.timeline not in needed]

    def number(name: object) -> int:
        return Segment.parse(str(name), cutoff.segment_size).number if name else -1

    old_gaps = [g for g in gaps if max(number(g.get("after")), number(g.get("before"))) < cutoff.number]
    return WalPrunePlan(
        cutoff,
        wal,
        history,
        [f"{g.get('after') or 'start'}-{g.get('before')}" for g in old_gaps],
        first.backup_id,
        sorted(b.backup_id for b in older),
    )


@dataclass
class WalPruneReport:
    target: str
    dry_run: bool
    kept_bases: dict[str, str] = field(default_factory=dict)  # id -> why
    deleted_bases: list[str] = field(default_factory=list)  # "would delete" when dry_run
    cutoff: str | None = None
    window_base: str | None = None  # all WAL kept from this base's start (pitr_days)
    restore_points: list[str] = field(default_factory=list)  # older kept bases: only their own WAL kept
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
    """Delete the bases the policy drops (manifest first), never an ancestor of a base that stays (kept or locked);
    the bases that stay."""
    keep = bases_to_keep(bases, policy, now)
    objects: dict[str, list[str]] = {}
    for base in bases:
        if base.backup_id in keep:
            continue
        objects[base.backup_id] = keys = [info.key for info in store.list_objects(layout.folder(base.backup_id))]
        locks = {k: why for k in keys if (why := _lock(store, k, now))}
        if locks:
            keep[base.backup_id] = next(iter(locks.values()))
            report.locked.update(locks)
    keep |= chain_reasons(keep, bases)  # the chains of locked incrementals too
    staying = []
    for base in bases:
        folder = layout.folder(base.backup_id)
        if base.backup_id in keep:
            report.kept_bases[base.backup_id] = keep[base.backup_id]
            staying.append(base)
            continue
        keys = objects[base.backup_id]
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
    pitr_days: int | None = None,
) -> WalPruneReport:
    """One pass over a target's bases and WAL (see the module's docstring); `now` from the caller's clock. With
    `sealer` only bases whose manifest is signed count (a forged newer base never pushes a real one out of the
    newest keep_last); a refused manifest's folder is left alone. `pitr_days` (wal.pitr_days): older kept bases
    keep only their own WAL; None keeps all WAL from the oldest kept base."""
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
    window_from = now - timedelta(days=pitr_days) if pitr_days is not None else None
    plan = plan_wal(kept, entries, parents, archive.gaps(), window_from)
    report.cutoff = plan.cutoff.name if plan.cutoff else None
    report.window_base, report.restore_points = plan.window_base, plan.restore_points
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
            "window_base": report.window_base,
            "restore_points": len(report.restore_points),
        },
    )
    return report
