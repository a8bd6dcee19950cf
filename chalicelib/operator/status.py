"""`lifeboat status`: the morning view, one row per target, and an exit code a cron job or CI can gate on.

A row's status, the worst of its backup kinds (logical dumps, snapshots) configured for the target:
- FAILING: the last attempt failed after the last good backup (a FAILED record under failed/, a failed snapshot);
- STALE: the newest slot the kind's schedule made due more than a grace ago has no good backup at or after it
  (for a regular schedule: the newest good backup is older than the schedule's interval plus the grace). The
  grace is the dead-man alarm's (chalicelib.scheduling.dispatch.expected_slot: a quarter of the interval, at least
  an hour), so `status` and the dashboard agree; `--grace` sets another;
- NEVER: no good backup and no failed attempt yet;
- DRILL_OVERDUE: backups fine, but no drill whose signed evidence says SUCCEEDED finished within drill.max_age_days
  (the DrillsOverdue alarm's rule): an unproven backup is not one to count on, so not OK (exit 1); a backup problem
  outranks it (both problem lines are shown);
- a target with a `wal` section adds the lane of its recoverable window (chalicelib.operator.wal_status: FAILING
  when a gap breaks it, NEVER before a usable base, STALE when the latest restorable time is older than 2 x
  wal.flush_seconds + 5 minutes);
- OK otherwise. A kind without a schedule (on demand only) is never STALE; a target without a backup kind (a restore
  destination only) is OK and listed only when named.

`status_rows` decides from facts and a `now` (pure, tested with a fixed clock); `gather` reads the facts from the
catalog, failed/ records, snapshots and drill evidence; `render_table` is the human view (the command's runner:
chalicelib.cli.operations.run_status). Exit 0 when every row is OK, else 1.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TextIO

from chalicelib.config import Config
from chalicelib.drills.evidence import EvidenceStore
from chalicelib.drills.model import DrillRecord
from chalicelib.drills.views import TargetDrills, drills_by_target
from chalicelib.logical.catalog import Catalog, Manifest, is_future
from chalicelib.operator.humanize import age as _age
from chalicelib.operator.humanize import duration as _duration
from chalicelib.operator.humanize import short as _short
from chalicelib.operator.humanize import size as _bytes
from chalicelib.operator.humanize import trend as _change
from chalicelib.operator.wal_status import WalFacts, WalView, wal_facts, wal_note, wal_verdict
from chalicelib.physical.catalog import SnapshotEntry, list_snapshots
from chalicelib.physical.model import SnapshotServices
from chalicelib.scheduling.dispatch import expected_slot
from chalicelib.scheduling.schedules import Schedule

Status = Literal["OK", "DRILL_OVERDUE", "STALE", "FAILING", "NEVER"]
Kind = Literal["logical", "snapshot"]
SEVERITY: dict[Status, int] = {"OK": 0, "DRILL_OVERDUE": 1, "NEVER": 2, "STALE": 3, "FAILING": 4}
TREND_HISTORY = 5  # the last good backup's size and duration are compared with the median of this many before it
RECENT_MANIFESTS = 30  # manifests read per target (a whole-server run has one per database)
FAILURES_READ = 5  # newest failed/ records read per target
OLDEST_PROBES = 10  # manifests tried from the oldest end for the restorable window (a phantom is skipped)


@dataclass(frozen=True)
class GoodBackup:
    """A complete backup: a logical dump (a whole-server run: its databases together) or an available snapshot."""

    backup_id: str
    kind: Kind
    slot: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    size: int | None = None

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class FailedAttempt:
    backup_id: str
    kind: Kind
    at: datetime  # when the attempt ended (a snapshot: when it was created)
    reason: str


@dataclass(frozen=True)
class SnapshotSeen:
    """A managed snapshot in the source region, in any state (SnapshotEntry.status)."""

    backup_id: str
    slot: datetime
    status: str
    created_at: datetime | None = None
    size: int | None = None


@dataclass(frozen=True)
class DrillSeen:
    """A target's newest restore drill, as its verified evidence shows it (status UNVERIFIED when it does not)."""

    drill_id: str
    status: str
    started_at: datetime
    finished_at: datetime | None = None
    recovery_seconds: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class TargetFacts:
    """What `gather` read about one target; `logical` and `snapshots` newest first."""

    name: str
    has_logical: bool = True
    has_snapshots: bool = False
    logical_schedule: str | None = None
    snapshot_schedule: str | None = None
    logical: tuple[GoodBackup, ...] = ()  # the newest complete dumps (for the trend)
    oldest_logical: GoodBackup | None = None  # the oldest complete dump (the restorable window)
    failures: tuple[FailedAttempt, ...] = ()  # failed/ records
    snapshots: tuple[SnapshotSeen, ...] = ()
    drill_max_age_days: int | None = None  # None: no drill section
    last_drill: DrillSeen | None = None
    last_drill_success: datetime | None = None  # when the newest verified successful drill finished
    wal: WalFacts | None = None  # a target with a wal section: its recoverable window


@dataclass(frozen=True)
class StatusRow:
    target: str
    status: Status
    problems: tuple[str, ...] = ()
    last_good: GoodBackup | None = None
    age: timedelta | None = None
    size_trend: float | None = None  # the last good backup's size / the median of the ones before it - 1
    duration_trend: float | None = None
    last_failure: FailedAttempt | None = None
    snapshot: SnapshotSeen | None = None  # the newest one, any state
    restorable: tuple[datetime, datetime] | None = None  # oldest and newest good backup
    last_drill: DrillSeen | None = None
    last_drill_success: datetime | None = None
    schedules: dict[str, str | None] = field(default_factory=dict)
    wal: WalView | None = None

    def as_json(self) -> dict[str, Any]:
        good, failure, snap, drill = self.last_good, self.last_failure, self.snapshot, self.last_drill
        return {
            "target": self.target,
            "status": self.status,
            "problems": list(self.problems),
            "schedules": self.schedules,
            "last_good": None
            if good is None
            else {
                "backup_id": good.backup_id,
                "kind": good.kind,
                "slot": good.slot.isoformat(),
                "finished_at": _iso(good.finished_at),
                "size": good.size,
                "duration_seconds": good.duration_seconds,
            },
            "age_seconds": None if self.age is None else self.age.total_seconds(),
            "size_trend": self.size_trend,
            "duration_trend": self.duration_trend,
            "last_failure": None
            if failure is None
            else {
                "backup_id": failure.backup_id,
                "kind": failure.kind,
                "at": failure.at.isoformat(),
                "reason": failure.reason,
            },
            "snapshot": None
            if snap is None
            else {"backup_id": snap.backup_id, "slot": snap.slot.isoformat(), "status": snap.status},
            "restorable": None
            if self.restorable is None
            else {"oldest": self.restorable[0].isoformat(), "newest": self.restorable[1].isoformat()},
            "last_drill": None
            if drill is None
            else {
                "drill_id": drill.drill_id,
                "status": drill.status,
                "started_at": drill.started_at.isoformat(),
                "finished_at": _iso(drill.finished_at),
                "recovery_seconds": drill.recovery_seconds,
                "last_success_at": _iso(self.last_drill_success),
            },
            "wal": None if self.wal is None else self.wal.as_json(),
        }


# --- the pure part: facts and a clock in, rows out ----------------------------------------------------------


def status_rows(facts: Sequence[TargetFacts], now: datetime, grace: timedelta | None = None) -> list[StatusRow]:
    return [target_status(f, now, grace) for f in facts]


def overall_ok(rows: Sequence[StatusRow]) -> bool:
    return all(row.status == "OK" for row in rows)


def target_status(facts: TargetFacts, now: datetime, grace: timedelta | None = None) -> StatusRow:
    """One target's row at `now`; `grace` None: the dead-man alarm's (expected_slot)."""
    logical = merge_runs([b for b in facts.logical if not is_future(b.slot, now)])
    snapshots = [s for s in facts.snapshots if not is_future(s.slot, now)]
    good_snapshots = [_snapshot_backup(s) for s in snapshots if s.status == "SUCCEEDED"]
    failures = [f for f in facts.failures if f.kind == "logical"]
    lanes: list[tuple[Kind, list[GoodBackup], list[FailedAttempt], str | None]] = []
    if facts.has_logical:
        lanes.append(("logical", logical, failures, facts.logical_schedule))
    if facts.has_snapshots:
        lanes.append(("snapshot", good_snapshots, _failed_snapshots(snapshots), facts.snapshot_schedule))
    verdicts = [_lane_status(kind, runs, failed, schedule, now, grace) for kind, runs, failed, schedule in lanes]
    verdicts.append(_drill_status(facts, now))
    wal = wal_verdict(facts.wal, now) if facts.wal is not None else None
    verdicts += [(wal[0], wal[1])] if wal is not None else []
    # No kind configured (a restore destination only): nothing can be late.
    status: Status = max((v[0] for v in verdicts), key=SEVERITY.__getitem__, default="OK")
    primary = lanes[0][1] if lanes else []
    last = primary[0] if primary else None
    every_failure = failures + _failed_snapshots(snapshots)
    oldest = [b for b in (facts.oldest_logical, *good_snapshots[-1:]) if b is not None and not is_future(b.slot, now)]
    newest = logical[:1] + good_snapshots[:1]
    return StatusRow(
        target=facts.name,
        status=status,
        problems=tuple(p for v in verdicts for p in v[1]),
        last_good=last,
        age=None if last is None else now - last.slot,
        size_trend=_trend([b.size for b in primary]),
        duration_trend=_trend([b.duration_seconds for b in primary]),
        last_failure=max(every_failure, key=lambda f: f.at, default=None),
        snapshot=snapshots[0] if snapshots else None,
        restorable=(min(b.slot for b in oldest + newest), max(b.slot for b in newest)) if newest else None,
        last_drill=facts.last_drill,
        last_drill_success=facts.last_drill_success,
        schedules={"logical": facts.logical_schedule, "snapshot": facts.snapshot_schedule},
        wal=wal[2] if wal is not None else None,
    )


def _lane_status(
    kind: Kind,
    runs: list[GoodBackup],
    failed: list[FailedAttempt],
    schedule: str | None,
    now: datetime,
    grace: timedelta | None,
) -> tuple[Status, list[str]]:
    """One kind's verdict and the problems that make it so."""
    last = runs[0] if runs else None
    good_until = None if last is None else (last.finished_at or last.started_at or last.slot)
    newer = [f for f in failed if good_until is None or f.at > good_until]
    if newer:
        latest = max(newer, key=lambda f: f.at)
        return "FAILING", [f"the last {kind} attempt failed at {_short(latest.at)}: {latest.reason}"]
    if schedule is None:
        return ("NEVER", [f"no {kind} backup yet (no schedule: on demand only)"]) if last is None else ("OK", [])
    parsed = Schedule.parse(schedule)
    due = expected_slot(parsed, now) if grace is None else due_slot(parsed, now - grace)
    if last is None:
        return "NEVER", [f"no {kind} backup yet (schedule {schedule})"]
    if due is not None and last.slot < due:
        return "STALE", [
            f"the {kind} backup of the {_short(due)} slot is missing (schedule {schedule});"
            f" the last good one is {_age(now - last.slot)} old"
        ]
    return "OK", []


def _drill_status(facts: TargetFacts, now: datetime) -> tuple[Status, list[str]]:
    """DRILL_OVERDUE when the target has a drill section and no verified success within its max_age_days."""
    days, last = facts.drill_max_age_days, facts.last_drill_success
    if days is None:
        return "OK", []
    if last is None:
        return "DRILL_OVERDUE", [f"no successful restore drill yet (drill.max_age_days is {days})"]
    if now - last > timedelta(days=days):
        return "DRILL_OVERDUE", [
            f"the last successful restore drill finished {_short(last)}, {_age(now - last)} ago"
            f" (drill.max_age_days is {days})"
        ]
    return "OK", []


def due_slot(schedule: Schedule, until: datetime) -> datetime | None:
    """The newest slot at or before `until` (None: the schedule has none in the interval before it)."""
    slots = list(schedule.slots(until - schedule.interval_hint - timedelta(seconds=1), until))
    return slots[-1] if slots else None


def merge_runs(backups: Sequence[GoodBackup]) -> list[GoodBackup]:
    """One entry per slot, newest first: a whole-server run's dumps (one per database, and the run's own globals)
    as one backup, its size their sum, its time from the first start to the last finish."""
    by_slot: dict[datetime, list[GoodBackup]] = {}
    for b in backups:
        by_slot.setdefault(b.slot, []).append(b)
    merged = []
    for slot, group in sorted(by_slot.items(), reverse=True):
        starts = [b.started_at for b in group if b.started_at is not None]
        ends = [b.finished_at for b in group if b.finished_at is not None]
        sizes = [b.size for b in group if b.size is not None]
        merged.append(
            GoodBackup(
                backup_id=min((b.backup_id for b in group), key=len),
                kind=group[0].kind,
                slot=slot,
                started_at=min(starts, default=None),
                finished_at=max(ends, default=None),
                size=sum(sizes) if sizes else None,
            )
        )
    return merged


def _trend(values: Sequence[float | int | None]) -> float | None:
    """The first value against the median of up to TREND_HISTORY after it: +0.25 is 25% more (None: unknown)."""
    if not values or values[0] is None:
        return None
    before = [v for v in values[1 : 1 + TREND_HISTORY] if v is not None]
    if not before:
        return None
    median = statistics.median(before)
    return None if median <= 0 else values[0] / median - 1


def _snapshot_backup(s: SnapshotSeen) -> GoodBackup:
    return GoodBackup(s.backup_id, "snapshot", s.slot, started_at=s.created_at, size=s.size)


def _failed_snapshots(snapshots: Sequence[SnapshotSeen]) -> list[FailedAttempt]:
    return [
        FailedAttempt(s.backup_id, "snapshot", s.created_at or s.slot, "the snapshot failed (AWS reports 'failed')")
        for s in snapshots
        if s.status == "FAILED"
    ]


# --- reading the facts ----------------------------------------------------------------------------------------


def gather(
    cfg: Config,
    catalog: Catalog,
    snapshots: SnapshotServices | None,
    names: Sequence[str],
    evidence: EvidenceStore | None = None,
) -> list[TargetFacts]:
    """The facts of each named target: its newest dumps, its oldest, its newest failed/ records, its snapshots, and
    (with `evidence`) its drills, read once for all the targets with a drill section."""
    drills = _drills(cfg, evidence, names)
    facts = []
    for name in names:
        target = cfg.target(name)
        has_logical = target.logical is not None
        logical: list[GoodBackup] = []
        oldest = None
        failures: list[FailedAttempt] = []
        if has_logical:
            logical = [_good(m) for m in catalog.list_backups(name, limit=RECENT_MANIFESTS)]
            oldest = _oldest(catalog, name)
            failures = [_failed(m) for m in catalog.list_failures(name, limit=FAILURES_READ)]
        seen: list[SnapshotSeen] = []
        if target.physical is not None and snapshots is not None:
            seen = [_seen(e) for e in list_snapshots(snapshots, name, include_copies=False)]
        facts.append(
            TargetFacts(
                name=name,
                has_logical=has_logical,
                has_snapshots=target.physical is not None,
                logical_schedule=target.logical.schedule if target.logical else None,
                snapshot_schedule=target.physical.schedule if target.physical else None,
                logical=tuple(logical),
                oldest_logical=oldest,
                failures=tuple(failures),
                snapshots=tuple(seen),
                drill_max_age_days=target.drill.max_age_days if target.drill else None,
                last_drill=_drill_seen(drills[name].latest) if name in drills else None,
                last_drill_success=drills[name].last_success_at if name in drills else None,
                wal=wal_facts(catalog.store, cfg.settings.prefix, name, target.wal.flush_seconds)
                if target.wal
                else None,
            )
        )
    return facts


def _drills(cfg: Config, evidence: EvidenceStore | None, names: Collection[str]) -> dict[str, TargetDrills]:
    drilled = [name for name in names if cfg.target(name).drill is not None]
    return drills_by_target(evidence, drilled) if evidence is not None and drilled else {}


def _drill_seen(rec: DrillRecord | None) -> DrillSeen | None:
    if rec is None:
        return None
    error = rec.error.message if rec.error else None
    return DrillSeen(rec.drill_id, rec.status, rec.started_at, rec.finished_at, rec.recovery_seconds, error)


def _oldest(catalog: Catalog, target: str) -> GoodBackup | None:
    """The oldest complete dump: manifests from the oldest end until one lists only objects that are there."""
    listing = catalog.listing(target)
    for bid in list(reversed(catalog.backup_ids(target, listing)))[:OLDEST_PROBES]:
        manifest = catalog.read_manifest(bid)
        if manifest is not None and not catalog.missing_objects(manifest, listing):
            return _good(manifest)
    return None


def _good(m: Manifest) -> GoodBackup:
    return GoodBackup(m.backup_id, "logical", m.slot, m.started_at, m.finished_at, m.size)


def _failed(m: Manifest) -> FailedAttempt:
    return FailedAttempt(m.backup_id, "logical", m.finished_at, m.error or "no reason recorded")


def _seen(e: SnapshotEntry) -> SnapshotSeen:
    return SnapshotSeen(e.backup_id, e.slot, e.status, e.created_at, e.size or None)


# --- the human table --------------------------------------------------------------------------------------

RED, RESET = "\033[31m", "\033[0m"
COLUMNS = (
    ("TARGET", 20),
    ("STATUS", 8),
    ("LAST GOOD", 16),
    ("AGE", 8),
    ("SIZE", 18),
    ("DURATION", 15),
    ("SNAPSHOT", 27),
    ("RESTORABLE", 23),
    ("DRILL", 0),
)


def render_table(rows: Sequence[StatusRow], out: TextIO, *, color: bool = False) -> None:
    """One line per target, then indented lines for its problems and last failure; red (on a terminal) where a
    target is STALE, FAILING or NEVER backed up."""
    out.write(" ".join(f"{name:<{width}}" for name, width in COLUMNS).rstrip() + "\n")
    for row in rows:
        good = row.last_good
        snap = row.snapshot
        cells = (
            row.target,
            row.status,
            _short(good.slot) if good else "-",
            _age(row.age) if row.age is not None else "-",
            f"{_bytes(good.size)}{_change(row.size_trend)}" if good and good.size is not None else "-",
            _duration(good.duration_seconds, row.duration_trend) if good else "-",
            f"{snap.status} {_short(snap.slot)}" if snap else "-",
            f"{row.restorable[0]:%Y-%m-%d} .. {row.restorable[1]:%Y-%m-%d}" if row.restorable else "-",
            _drill_cell(row.last_drill),
        )
        line = " ".join(f"{cell:<{width}}" for cell, (_, width) in zip(cells, COLUMNS, strict=True)).rstrip()
        bad = row.status != "OK"
        out.write((f"{RED}{line}{RESET}" if color and bad else line) + "\n")
        notes = [f"  ! {p}" for p in row.problems]
        failure = row.last_failure
        if failure is not None and row.status != "FAILING":
            notes.append(f"  last failure {_short(failure.at)} ({failure.backup_id}): {failure.reason}")
        drill = row.last_drill
        if drill is not None and drill.status in ("FAILED", "UNVERIFIED"):
            notes.append(f"  last drill {drill.status} {_short(drill.started_at)} ({drill.drill_id}): {drill.error}")
        notes += [wal_note(row.wal)] if row.wal is not None else []
        for note in notes:
            out.write((f"{RED}{note}{RESET}" if color and note.startswith("  !") else note) + "\n")
    if not rows:
        out.write("(no targets configured)\n")


def _drill_cell(drill: DrillSeen | None) -> str:
    """The newest drill: its status, when it finished (or started) and its measured recovery time."""
    if drill is None:
        return "-"
    took = "" if drill.recovery_seconds is None else f" {drill.recovery_seconds:.0f}s"
    return f"{drill.status} {_short(drill.finished_at or drill.started_at)}{took}"


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()
