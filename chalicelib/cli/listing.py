"""`lifeboat list`: complete backups and snapshots (and with --failed the failed attempts), newest first, in one
timeline: --limit counts rows of every kind; AGE is since the slot, DURATION from start to finish; PROVEN the day the
newest successful restore drill of that backup finished (verified evidence only: chalicelib.drills.views)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from chalicelib import wiring
from chalicelib.cli.output import EXIT_OK, Output, human_size, human_span
from chalicelib.config import Config
from chalicelib.drills.build import evidence_store
from chalicelib.drills.model import DrillRecord
from chalicelib.drills.views import proof, proven_backups
from chalicelib.logical.catalog import Manifest
from chalicelib.physical.catalog import SnapshotEntry, list_snapshots

Row = Manifest | SnapshotEntry

# The clock AGE is measured with (tests fix it).
clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731


def collect(cfg: Config, names: list[str], limit: int, failed: bool) -> list[Row]:
    """Up to `limit` rows over all the targets and kinds, newest slot first (failed attempts only with `failed`)."""
    catalog = wiring.catalog(cfg)
    rows: list[Row] = [m for name in names for m in catalog.list_backups(name, limit=limit)]
    if failed:
        rows.extend(m for name in names for m in catalog.list_failures(name, limit=limit))
    physical = [name for name in names if cfg.target(name).physical is not None]
    if physical:
        snapshots = wiring.snapshot_services(cfg)
        rows.extend(e for name in physical for e in list_snapshots(snapshots, name))
    rows.sort(key=lambda r: (r.slot, _started(r) or r.slot), reverse=True)
    return rows[: max(limit, 0)]


def _started(row: Row) -> datetime | None:
    return row.started_at if isinstance(row, Manifest) else row.created_at


def duration_seconds(row: Row) -> float | None:
    """Start to finish of a dump or a failed attempt; snapshots finish in AWS, unobserved here (None)."""
    return row.duration_seconds if isinstance(row, Manifest) else None


def proven(cfg: Config, rows: list[Row]) -> dict[str, DrillRecord]:
    """backup id -> its last successful drill, for the complete rows (one read of the drill records)."""
    complete = [(row.target, row.backup_id) for row in rows if row.status == "SUCCEEDED"]
    return proven_backups(evidence_store(cfg), complete) if complete else {}


def as_json(row: Row, now: datetime, drill: DrillRecord | None = None) -> dict[str, Any]:
    doc = row.model_dump(mode="json", exclude={"signature"})
    return {
        **doc,
        "age_seconds": (now - row.slot).total_seconds(),
        "duration_seconds": duration_seconds(row),
        "last_proven": proof(drill) if drill else None,
    }


HEADER = (
    f"{'BACKUP ID':<46} {'KIND':<8} {'TIME':<19} {'AGE':>7} {'DURATION':>8} {'SIZE':>10} {'STATUS':<11} "
    f"{'RETENTION':<9} {'PROVEN':<10} {'REGION':<12} SERVER"
)


def as_line(row: Row, now: datetime, drill: DrillRecord | None = None) -> str:
    region = getattr(row, "region", "") or "-"
    age, took = human_span((now - row.slot).total_seconds()), human_span(duration_seconds(row))
    when = (drill.finished_at or drill.started_at).astimezone(UTC).strftime("%Y-%m-%d") if drill else "-"
    line = (
        f"{row.backup_id:<46} {row.kind:<8} {row.slot:%Y-%m-%d %H:%M:%S} {age:>7} {took:>8} {human_size(row.size):>10}"
        f" {row.status:<11} {row.retention_class or '-':<9} {when:<10} {region:<12} {row.server_version or '-'}"
    )
    if isinstance(row, Manifest) and row.status == "FAILED":
        line += f"\n    error: {row.error or 'no reason recorded'}"
    return line


def cmd_list(args: argparse.Namespace, out: Output) -> int:
    cfg = wiring.load_config()
    names = [args.target] if args.target else [t.name for t in cfg.targets]
    for name in names:
        cfg.target(name)  # an unknown target: NotFoundError before anything is listed
    rows = collect(cfg, names, args.limit, args.failed)
    drills = proven(cfg, rows)
    proofs = [drills.get(row.backup_id) if row.status == "SUCCEEDED" else None for row in rows]  # not a failed try
    now = clock()
    out.json([as_json(row, now, drill) for row, drill in zip(rows, proofs, strict=True)])
    out.line(HEADER)
    for row, drill in zip(rows, proofs, strict=True):
        out.line(as_line(row, now, drill))
    if not rows:
        out.line("(no complete backups" + (" and no failed attempts)" if args.failed else ")"))
    return EXIT_OK
