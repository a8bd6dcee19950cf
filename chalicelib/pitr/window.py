"""The recoverable window of a streaming target: from when to when `lifeboat recover` can restore it, and where not.

Each complete base backup whose own WAL (start to end segment) is archived opens a span at its `finished_at` (the
earliest time recovery from it is consistent). The span runs to the newest archived WAL (a finished segment or the
open segment's `.partial`, by upload time), unless a recorded gap lies after the base's start: recovery cannot
replay across missing WAL, so the span ends where the archive last had WAL before the gap (the upload time of the
gap's `after` segment; its detection time when that segment is gone). Times after a gap are restorable again only
from a base backup taken after it: until one exists the window is *broken*. The same rules as `recover`
(recover.wal_problems), so the window never promises what recover refuses.

WAL missing without a gap record is a hole too: `wal-prune` keeps only their own WAL (start to end segment) for
kept bases older than `wal.pitr_days` (chalicelib.pitr.prune). A base whose WAL stops right after its end segment
is a *restore point*: restorable to its end (`recover --lsn <its end_lsn>`), not to times after it, so it opens no
span. A hole further on ends the span at the upload of the last segment before it, like a gap. The continuous
window is `earliest` .. `latest`; `restore_points` lists the older bases. An incremental base whose chain is not
whole (chains.restorable) is no usable base: it is listed in `unusable_bases` with the reason.

`recoverable_window` is pure; `gather_window` reads the bucket; `describe_window` says it in a few lines (for
`lifeboat list`/`status` and `wal-window`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chalicelib.adapters.s3 import BackupStore
from chalicelib.pitr.basebackup import BaseBackup, BaseLayout, list_bases
from chalicelib.pitr.chains import restorable
from chalicelib.pitr.recover import RecoveryTarget, gap_affects, wal_problems
from chalicelib.pitr.walarchive import WalArchive, WalEntry
from chalicelib.pitr.walnames import DEFAULT_SEGMENT_SIZE, Segment, WalLayout


@dataclass(frozen=True)
class Span:
    """Restorable from `start` to `end` from base `base_id` (end: `ended_by` a gap, or None: the newest WAL)."""

    base_id: str
    start: datetime
    end: datetime
    ended_by: str | None = None  # the gap's `after-before` when a gap ends it

    def as_dict(self) -> dict[str, Any]:
        return {
            "base": self.base_id,
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "ended_by_gap": self.ended_by,
        }


@dataclass(frozen=True)
class RestorePoint:
    """A base restorable only to its end (its WAL after the end segment was pruned): `at` its finished_at."""

    base_id: str
    at: datetime
    lsn: str  # its end LSN: `lifeboat recover TARGET --lsn <lsn>`

    def as_dict(self) -> dict[str, Any]:
        return {"base": self.base_id, "at": self.at.isoformat(), "lsn": self.lsn}


@dataclass(frozen=True)
class RecoverableWindow:
    target: str
    earliest: datetime | None  # the oldest usable base's end: nothing earlier is restorable
    latest: datetime | None  # the newest archived WAL's upload time (the .partial included)
    broken: bool  # a gap lies after the newest usable base: times after it cannot be restored until a new base
    restorable_until: datetime | None  # the end of the newest span (== latest unless broken)
    spans: list[Span] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)  # the gap records inside the window
    unusable_bases: dict[str, str] = field(default_factory=dict)  # base id -> why (its WAL is not archived)
    newest_wal: str | None = None
    restore_points: list[RestorePoint] = field(default_factory=list)  # older bases, each restorable to its end only

    @property
    def empty(self) -> bool:
        return not self.spans

    def as_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "target": self.target,
            "earliest": iso(self.earliest),
            "latest": iso(self.latest),
            "broken": self.broken,
            "restorable_until": iso(self.restorable_until),
            "spans": [s.as_dict() for s in self.spans],
            "gaps": self.gaps,
            "unusable_bases": self.unusable_bases,
            "newest_wal": self.newest_wal,
            "restore_points": [p.as_dict() for p in self.restore_points],
        }


def _number(name: str | None, segment_size: int) -> int | None:
    return None if name is None else Segment.parse(name, segment_size).number


def _gap_end(gap: dict[str, Any], uploaded: dict[int, datetime], segment_size: int) -> datetime:
    """When the archive last had WAL before the gap: the `after` segment's upload, else the gap's detection."""
    after = _number(gap.get("after"), segment_size)
    detected = datetime.fromisoformat(str(gap["detected_at"]))
    at = uploaded.get(after) if after is not None else None
    return min(at, detected) if at else detected


def _contiguous_until(start: int, have: set[int], newest: int) -> int | None:
    """The last segment number before the first hole after `start` (any timeline); None when none up to `newest`."""
    number = start
    while number < newest and number + 1 in have:
        number += 1
    return number if number < newest else None


@dataclass(frozen=True)
class _Archive:
    """What the WAL listing says, once for every base."""

    segment_size: int
    latest: datetime | None
    uploaded: dict[int, datetime]  # segment number -> its newest upload (any timeline, .partial included)
    newest: Segment | None

    @classmethod
    def of(cls, entries: Sequence[WalEntry], segment_size: int) -> _Archive:
        wal = [e for e in entries if e.segment is not None]
        uploaded: dict[int, datetime] = {}
        for e in wal:
            if e.segment is not None and e.info.last_modified is not None:
                at = e.info.last_modified
                uploaded[e.segment.number] = max(uploaded.get(e.segment.number, at), at)
        newest = max((e.segment for e in wal if e.segment), key=lambda s: s.position, default=None)
        return cls(segment_size, max(uploaded.values(), default=None), uploaded, newest)


def _span_of(base: BaseBackup, archive: _Archive, gaps: Sequence[dict[str, Any]]) -> Span | RestorePoint:
    """Where recovery from a usable base can go: a span to the newest WAL, to a gap or a hole, or its end only."""
    assert archive.latest is not None and archive.newest is not None
    end, ended_by = archive.latest, None
    for gap in gaps:
        if not gap_affects(base, gap):
            continue  # before this base: recover skips it too
        at = _gap_end(gap, archive.uploaded, archive.segment_size)
        if ended_by is None or at < end:  # also when it ends at the newest WAL (the one after it not uploaded yet)
            end, ended_by = min(at, end), f"{gap.get('after')}-{gap.get('before')}"
    last = _contiguous_until(base.end_segment.number, set(archive.uploaded), archive.newest.number)
    if last is not None and (ended_by is None or archive.uploaded[last] < end):  # a hole no gap record explains
        if last == base.end_segment.number:
            return RestorePoint(base.backup_id, base.finished_at, base.end_lsn)
        following = min((n for n in archive.uploaded if n > last), default=archive.newest.number)
        size = archive.segment_size
        end = archive.uploaded[last]
        ended_by = f"{Segment(base.timeline, last, size).name}-{Segment(base.timeline, following, size).name}"
    # Its WAL is all archived, so the archive reaches its end (S3's times are whole seconds, finished_at not).
    return Span(base.backup_id, base.finished_at, max(end, base.finished_at), ended_by)


def recoverable_window(
    target: str, bases: Sequence[BaseBackup], entries: Sequence[WalEntry], gaps: Sequence[dict[str, Any]]
) -> RecoverableWindow:
    """The window (see the module's docstring). Pure: the same bases, WAL listing and gap records, the same answer."""
    archive = _Archive.of(entries, bases[-1].segment_size if bases else DEFAULT_SEGMENT_SIZE)
    spans: list[Span] = []
    points: list[RestorePoint] = []
    usable, unusable = restorable(bases)  # an incremental with a broken chain: recover refuses it
    for base in sorted(usable, key=lambda b: b.started_at):
        # To its own end only: whether WAL after it is whole is _span_of's question (a restore point is usable).
        missing = wal_problems(base, entries, [], RecoveryTarget(lsn=base.end_lsn))
        if missing or archive.latest is None:
            unusable[base.backup_id] = "; ".join(missing) or "no WAL archived"
            continue
        found = _span_of(base, archive, gaps)
        if isinstance(found, Span):
            spans.append(found)
        else:
            points.append(found)
    in_spans = {s.base_id for s in spans}
    oldest_start = min((b.start_segment.number for b in bases if b.backup_id in in_spans), default=None)
    size = archive.segment_size
    inside = [
        g for g in gaps if oldest_start is not None and max(_numbers(g, size), default=oldest_start) >= oldest_start
    ]
    last = spans[-1] if spans else None
    return RecoverableWindow(
        target=target,
        earliest=spans[0].start if spans else None,
        latest=archive.latest,
        broken=bool(last and last.ended_by) or (not spans and bool(gaps)),
        restorable_until=max(s.end for s in spans) if spans else None,
        spans=spans,
        gaps=inside if spans else list(gaps),
        unusable_bases=unusable,
        newest_wal=archive.newest.name if archive.newest else None,
        restore_points=points,
    )


def _numbers(gap: dict[str, Any], segment_size: int) -> list[int]:
    found = (_number(gap.get(k), segment_size) for k in ("after", "before"))
    return [n for n in found if n is not None]


def gather_window(store: BackupStore, prefix: str, target: str) -> RecoverableWindow:
    """The window of `target` as the bucket shows it now (bases, WAL listing, gap records)."""
    bases = list_bases(store, BaseLayout(prefix, target))
    archive = WalArchive(store, WalLayout(prefix, target))
    segment_size = bases[-1].segment_size if bases else DEFAULT_SEGMENT_SIZE
    return recoverable_window(target, bases, archive.entries(segment_size), archive.gaps())


def describe_window(window: RecoverableWindow) -> str:
    """The window in a few lines for people (`wal-window`, `lifeboat status`)."""
    points = [
        f"  restore point {p.base_id}: {p.at.isoformat()} only (its end: recover --lsn {p.lsn})"
        for p in window.restore_points
    ]
    if window.empty:
        why = "; ".join(f"{k}: {v}" for k, v in window.unusable_bases.items()) or "no complete base backup"
        if points:
            return "\n".join([f"{window.target}: no point-in-time window ({why}); only base ends:", *points])
        return f"{window.target}: nothing restorable yet ({why})"
    assert window.earliest is not None and window.restorable_until is not None
    lines = [f"{window.target}: restorable {window.earliest.isoformat()} .. {window.restorable_until.isoformat()}"]
    lines += points
    if window.broken:
        lines.append(
            f"  BROKEN: WAL archived until {window.latest.isoformat() if window.latest else '?'}, but a gap after"
            f" {window.spans[-1].ended_by} cannot be replayed: take a base backup (lifeboat base-backup"
            f" {window.target})"
        )
    lines += [f"  gap {g.get('after')} .. {g.get('before')}: {g.get('reason')}" for g in window.gaps]
    return "\n".join(lines)
