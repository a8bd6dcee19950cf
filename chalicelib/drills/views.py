"""Read-only views of the drill evidence: one target's drills (`GET /targets/{target}/drills`, `lifeboat drills
TARGET`), every target's latest (`lifeboat drills`), the auditor's report (`lifeboat drills --report`), which backups
a drill proved restorable (`lifeboat list`, `GET /targets/{target}/backups`) and each target's last drill and last
success (`lifeboat status`).

The last two read the table once for all the targets asked about and check only the evidence they show: a record
the table calls SUCCEEDED counts once its signed document says so (EvidenceStore.verified); when it does not, the
next older success of the same backup (or target) is tried.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chalicelib.config import Config
from chalicelib.drills.evidence import RECENT_LIMIT, EvidenceStore
from chalicelib.drills.model import DrillRecord
from chalicelib.drills.report import Format, render, target_rows
from chalicelib.drills.selection import last_success

DEFAULT_LIMIT = 50


def list_drills(config: Config, evidence: EvidenceStore, target: str, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """A target's drills, newest first, and its last success (the API's GET /targets/{target}/drills body). An
    unknown target is a NotFoundError (404), as on every other route."""
    config.target(target)
    records = evidence.recent(target=target)
    last = last_success(records, target)
    return {
        "target": target,
        "last_success": last.public() if last else None,
        "drills": [r.public() for r in records[:limit]],
    }


def latest_by_target(config: Config, evidence: EvidenceStore) -> list[dict[str, Any]]:
    """Per configured target with a drill section: its newest drill and its last success."""
    records = evidence.recent()
    rows = []
    for t in config.targets:
        if t.drill is None:
            continue
        mine = [r for r in records if r.target == t.name]
        last = last_success(mine, t.name)
        rows.append(
            {
                "target": t.name,
                "schedule": t.drill.schedule,
                "latest": mine[0].public() if mine else None,
                "last_success": (last.finished_at or last.started_at).isoformat() if last else None,
            }
        )
    return rows


def report(config: Config, evidence: EvidenceStore, since: datetime, now: datetime, fmt: Format) -> str:
    targets = {t.name: t.drill.rto_seconds for t in config.targets if t.drill is not None}
    return render(target_rows(evidence.recent(since=since), targets, since), fmt, since, now)


def proof(rec: DrillRecord) -> dict[str, Any]:
    """How a backup's last successful drill is shown (`last_proven` in `lifeboat list --json` and the API)."""
    return {"drill_id": rec.drill_id, "finished_at": _finished(rec).isoformat()}


def proven_backups(evidence: EvidenceStore, backups: Iterable[tuple[str, str]]) -> dict[str, DrillRecord]:
    """backup id -> the newest verified SUCCEEDED drill that restored it, for the (target, backup id) pairs given;
    a backup no drill proved is absent. One read of the drill records for all the targets (not one per backup)."""
    wanted = set(backups)
    claimed = _claimed(evidence, {target for target, _ in wanted})
    successes: dict[str, list[DrillRecord]] = {}
    for target, records in claimed.items():
        for rec in records:
            if rec.status == "SUCCEEDED" and rec.backup_id is not None and (target, rec.backup_id) in wanted:
                successes.setdefault(rec.backup_id, []).append(rec)
    return _first_verified(evidence, successes)


@dataclass(frozen=True)
class TargetDrills:
    latest: DrillRecord | None  # the newest drill in any state, as its evidence shows it
    last_success: DrillRecord | None  # the newest verified SUCCEEDED one

    @property
    def last_success_at(self) -> datetime | None:
        return None if self.last_success is None else _finished(self.last_success)


def drills_by_target(evidence: EvidenceStore, targets: Collection[str]) -> dict[str, TargetDrills]:
    """Each target's newest drill and its last verified success (`lifeboat status`), from one read of the records."""
    claimed = _claimed(evidence, targets)
    newest = {t: records[0] for t, records in claimed.items() if records}
    shown = dict(zip(newest, _verify(evidence, list(newest.values())), strict=True))
    successes = {
        t: [r for r in records if r.status == "SUCCEEDED" and r is not newest[t]]
        for t, records in claimed.items()
        if records and shown[t].status != "SUCCEEDED"
    }
    found = _first_verified(evidence, successes)
    return {
        t: TargetDrills(
            latest=shown.get(t),
            last_success=shown[t] if t in shown and shown[t].status == "SUCCEEDED" else found.get(t),
        )
        for t in targets
    }


def _claimed(evidence: EvidenceStore, targets: Collection[str]) -> dict[str, list[DrillRecord]]:
    """The drills of `targets`, newest first, as the table records them (not yet believed: `_verify`); one query
    of the table for all of them. Without a table: each target's documents in the bucket, verified as read."""
    if evidence.table is None:
        return {t: evidence.from_bucket(t) for t in targets}
    found: dict[str, list[DrillRecord]] = {t: [] for t in targets}
    for doc in evidence.table.recent(RECENT_LIMIT):
        rec = DrillRecord.model_validate_json(doc)
        if rec.target in found:
            found[rec.target].append(rec)
    return found


def _verify(evidence: EvidenceStore, records: list[DrillRecord]) -> list[DrillRecord]:
    """The records as their signed documents show them (the bucket's were verified when read)."""
    return records if evidence.table is None else evidence.verified(records)


def _first_verified(evidence: EvidenceStore, candidates: dict[str, list[DrillRecord]]) -> dict[str, DrillRecord]:
    """key -> the newest of its candidate successes whose evidence verifies as that success; each round checks one
    candidate per key (in parallel), so a key costs more than one read only when its newest success is forged."""
    queues = {k: sorted(v, key=_finished, reverse=True) for k, v in candidates.items() if v}
    proven: dict[str, DrillRecord] = {}
    while queues:
        heads = {k: v.pop(0) for k, v in queues.items()}
        for (key, claim), shown in zip(heads.items(), _verify(evidence, list(heads.values())), strict=True):
            if shown.status == "SUCCEEDED" and (shown.target, shown.backup_id) == (claim.target, claim.backup_id):
                proven[key] = shown
        queues = {k: v for k, v in queues.items() if v and k not in proven}
    return proven


def _finished(rec: DrillRecord) -> datetime:
    return rec.finished_at or rec.started_at
