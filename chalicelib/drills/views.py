"""Read-only views of the drill evidence: one target's drills (`GET /targets/{target}/drills`, `lifeboat drills
TARGET`), every target's latest (`lifeboat drills`), and the auditor's report (`lifeboat drills --report`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chalicelib.config import Config
from chalicelib.drills.evidence import EvidenceStore
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
