"""What a WAL recovery request will use, decided from what the bucket shows (pure: no AWS).

A target with a `wal` section is recovered by `lifeboat recover` on the machine that will run the server; the API
only plans it. The plan is recover's own (chalicelib.pitr.recover.plan: the newest base finished before the target,
its WAL archived, no recorded gap on the way), checked against the recoverable window (chalicelib.pitr.window), so
the answer never promises what recover refuses, and every refusal says which times ARE restorable.

An app-consistent EBS snapshot set of the target (physical.method ebs, app_consistent) is a candidate base too: its
backup label (start LSN, timeline, stop LSN, when pg_backup_stop returned) makes it a base like a pg_basebackup one
(chalicelib.pitr.snapshotbase.as_base, what `lifeboat recover --snapshot-set` checks it by). Among the candidates the
newest that fits wins (recover.choose_base); a pg_basebackup base wins a tie.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chalicelib.errors import ConflictError, NotFoundError, RestoreError
from chalicelib.pitr import recover
from chalicelib.pitr.basebackup import BaseBackup
from chalicelib.pitr.recover import RecoveryPlan, RecoveryTarget
from chalicelib.pitr.walarchive import WalEntry
from chalicelib.pitr.walnames import Segment, format_lsn, parse_lsn
from chalicelib.pitr.window import RecoverableWindow, describe_window, recoverable_window

SET_KIND = "snapshot"  # BaseBackup.kind of a snapshot set standing for a base (chalicelib.pitr.snapshotbase.as_base)
PGDATA_PLACEHOLDER = "<PGDATA>"  # unfilled, the shell refuses the command (a redirection from a missing file)
# recover.plan writes the restore_command into its settings; the API only reads the plan's choice.
FETCH_COMMAND = "lifeboat wal-fetch"


def goal_of(time: datetime | None, latest: bool | None, lsn: str | None) -> RecoveryTarget:
    """The recovery target of a request's time, latest or lsn (the request model allows exactly one)."""
    if lsn is not None:
        return RecoveryTarget(lsn=format_lsn(parse_lsn(lsn)))
    return RecoveryTarget(time=time) if time is not None and not latest else RecoveryTarget()


def restorable(window: RecoverableWindow) -> str:
    """What can be restored, for an error message: each span, then the window in recover's words."""
    if window.empty:
        return f"nothing is restorable yet ({describe_window(window)})"
    spans = "; ".join(f"{s.start.isoformat()} .. {s.end.isoformat()} (base {s.base_id})" for s in window.spans)
    return f"restorable times: {spans}; or latest: true for the newest WAL. {describe_window(window)}"


def _span_end(window: RecoverableWindow, base_id: str) -> datetime | None:
    return next((s.end for s in window.spans if s.base_id == base_id), None)


def _check_lsn(entries: Sequence[WalEntry], goal: RecoveryTarget, window: RecoverableWindow) -> None:
    segments = [e.segment for e in entries if e.segment is not None]
    if goal.lsn is None or not segments:
        return
    newest = max(segments, key=lambda s: s.position)
    end = newest.start_lsn + newest.segment_size
    if parse_lsn(goal.lsn) >= end:
        raise ConflictError(
            f"LSN {goal.lsn} is beyond the newest archived WAL ({newest.name}, up to {format_lsn(end)});"
            f" {restorable(window)}"
        )


def choose(
    target: str,
    bases: Sequence[BaseBackup],
    set_bases: Sequence[BaseBackup],
    entries: Sequence[WalEntry],
    gaps: Sequence[dict[str, Any]],
    goal: RecoveryTarget,
) -> tuple[RecoveryPlan, RecoverableWindow]:
    """recover's plan over the pg_basebackup bases and the snapshot sets, and the window it was checked against.
    ConflictError (409) when the goal is outside the window, across a gap, or before every base; its message says
    what is restorable. When a snapshot set would be chosen but cannot serve, the pg_basebackup bases are tried alone
    (what `lifeboat recover` without --snapshot-set does)."""
    window = recoverable_window(target, [*bases, *set_bases], entries, gaps)
    if window.empty and not (goal.lsn is not None and window.restore_points):
        raise ConflictError(f"target {target!r} cannot be recovered to {goal.describe()}: {restorable(window)}")
    if goal.time is not None and not any(s.start <= goal.time <= s.end for s in window.spans):
        raise ConflictError(f"{goal.time.isoformat()} is not restorable for target {target!r}; {restorable(window)}")
    _check_lsn(entries, goal, window)
    first_error: Exception | None = None
    for candidates in ([*bases, *set_bases], list(bases)) if set_bases else (list(bases),):
        try:
            planned = recover.plan(candidates, entries, gaps, goal, FETCH_COMMAND, lambda major: major)
        except (NotFoundError, RestoreError) as exc:
            first_error = first_error or exc
            continue
        end = _span_end(window, planned.base.backup_id)
        if goal.time is not None and (end is None or goal.time > end):
            first_error = first_error or RestoreError(
                f"base {planned.base.backup_id} cannot reach {goal.time.isoformat()} (its WAL is not all archived or"
                " a gap lies on the way)"
            )
            continue
        return planned, window
    raise ConflictError(
        f"target {target!r} cannot be recovered to {goal.describe()}: {first_error}; {restorable(window)}"
    )


def last_needed(entries: Sequence[WalEntry], plan: RecoveryPlan, goal: RecoveryTarget) -> str | None:
    """The last segment recovery reads: the one holding the target LSN; for a time, the first segment uploaded at or
    after it (the segment holding the moment was uploaded then, finished or as its .partial); else the newest."""
    base = plan.base
    after = [
        e
        for e in entries
        if e.segment is not None and e.segment.number >= base.end_segment.number and e.segment.timeline >= base.timeline
    ]
    after.sort(key=lambda e: e.segment.position if e.segment else (0, 0))
    if goal.lsn is not None:
        number = Segment.containing(parse_lsn(goal.lsn), base.timeline, base.segment_size).number
        holding = [e for e in after if e.segment is not None and e.segment.number == number]
        return holding[-1].key.rsplit("/", 1)[-1] if holding else plan.last_segment
    if goal.time is not None:
        when = goal.time
        for e in after:
            if e.info.last_modified is not None and e.info.last_modified >= when:
                return e.key.rsplit("/", 1)[-1]
    return after[-1].key.rsplit("/", 1)[-1] if after else plan.last_segment


def recover_command(target: str, goal: RecoveryTarget, pgdata: str | None, snapshot_set: str | None = None) -> str:
    """`lifeboat recover TARGET --time T | --lsn L | --latest --pgdata DIR [--snapshot-set SET]`, every value
    quoted for a POSIX shell; without `pgdata`, PGDATA_PLACEHOLDER for the caller to fill in."""
    parts = ["lifeboat", "recover", shlex.quote(target)]
    if goal.time is not None:
        parts += ["--time", shlex.quote(goal.time.isoformat())]
    elif goal.lsn is not None:
        parts += ["--lsn", shlex.quote(goal.lsn)]
    else:
        parts.append("--latest")
    parts += ["--pgdata", shlex.quote(pgdata) if pgdata else PGDATA_PLACEHOLDER]
    if snapshot_set is not None:
        parts += ["--snapshot-set", shlex.quote(snapshot_set)]
    return " ".join(parts)


def describe_base(base: BaseBackup, signature: str) -> dict[str, Any]:
    """The base as the answer names it."""
    return {
        "backup_id": base.backup_id,
        "kind": "snapshot_set" if base.kind == SET_KIND else "base_backup",
        "postgres_major": base.major,
        "server_version_num": base.server_version_num,
        "timeline": base.timeline,
        "start_lsn": base.start_lsn,
        "end_lsn": base.end_lsn,
        "started_at": base.started_at.isoformat(),
        "finished_at": base.finished_at.isoformat(),
        "signature": signature,
    }


@dataclass(frozen=True)
class WalRange:
    first: str
    last: str | None
    newest_archived: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"first_segment": self.first, "last_segment": self.last, "newest_archived": self.newest_archived}
