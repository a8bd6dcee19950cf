"""`lifeboat list`: complete backups and snapshots (and with --failed the failed attempts), newest first, in one
timeline: --limit counts rows of every kind; AGE is since the slot, DURATION from start to finish; PROVEN the day the
newest successful restore drill of that backup finished (verified evidence only: chalicelib.drills.views).

A target with a `wal` section adds its base backups as rows (kind `base`, chalicelib.pitr.catalog) and, after the
rows, a WINDOW line: its recoverable window and gaps (chalicelib.pitr.window); in `--json` one element
`{"kind": "wal_window", "target", "window"}` per such target after the rows (not counted by --limit)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
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
from chalicelib.pitr.basebackup import BaseBackup
from chalicelib.pitr.catalog import WalListing, base_entry, base_id, base_time, read_wal_listing, server_version
from chalicelib.pitr.sealing import Sealer


@dataclass(frozen=True)
class BaseRow:
    """A base backup of a streaming target, with the attributes the other rows have."""

    base: BaseBackup
    kind: str = "base"
    status: str = "SUCCEEDED"
    retention_class: str | None = None
    region: str | None = None

    @property
    def backup_id(self) -> str:
        return base_id(self.base)

    @property
    def target(self) -> str:
        return self.base.target

    @property
    def slot(self) -> datetime:
        return base_time(self.base)

    @property
    def size(self) -> int:
        return self.base.tar_size

    @property
    def server_version(self) -> str:
        return server_version(self.base.server_version_num)


Row = Manifest | SnapshotEntry | BaseRow

# The clock AGE is measured with (tests fix it).
clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731


def wal_listings(cfg: Config, names: list[str]) -> dict[str, WalListing]:
    """The base backups and recoverable window of each named target with a `wal` section."""
    streaming = [name for name in names if cfg.target(name).wal is not None]
    if not streaming:
        return {}
    store, sealer = wiring.store(cfg), Sealer.from_signing(wiring.signing(cfg))
    return {name: read_wal_listing(store, cfg.settings.prefix, name, sealer) for name in streaming}


def collect(
    cfg: Config, names: list[str], limit: int, failed: bool, wal: dict[str, WalListing] | None = None
) -> list[Row]:
    """Up to `limit` rows over all the targets and kinds, newest slot first (failed attempts only with `failed`)."""
    catalog = wiring.catalog(cfg)
    rows: list[Row] = [m for name in names for m in catalog.list_backups(name, limit=limit)]
    if failed:
        rows.extend(m for name in names for m in catalog.list_failures(name, limit=limit))
    physical = [name for name in names if cfg.target(name).physical is not None]
    if physical:
        snapshots = wiring.snapshot_services(cfg)
        rows.extend(e for name in physical for e in list_snapshots(snapshots, name))
    rows.extend(BaseRow(base) for listing in (wal or {}).values() for base in listing.bases)
    rows.sort(key=lambda r: (r.slot, _started(r) or r.slot), reverse=True)
    return rows[: max(limit, 0)]


def _started(row: Row) -> datetime | None:
    if isinstance(row, BaseRow):
        return row.base.started_at
    return row.started_at if isinstance(row, Manifest) else row.created_at


def duration_seconds(row: Row) -> float | None:
    """Start to finish of a dump, a failed attempt or a base backup; snapshots finish in AWS, unobserved (None)."""
    if isinstance(row, BaseRow):
        return (row.base.finished_at - row.base.started_at).total_seconds()
    return row.duration_seconds if isinstance(row, Manifest) else None


def proven(cfg: Config, rows: list[Row]) -> dict[str, DrillRecord]:
    """backup id -> its last successful drill, for the complete rows (one read of the drill records)."""
    complete = [(row.target, row.backup_id) for row in rows if row.status == "SUCCEEDED" and row.kind != "base"]
    return proven_backups(evidence_store(cfg), complete) if complete else {}


def as_json(row: Row, now: datetime, drill: DrillRecord | None = None) -> dict[str, Any]:
    if isinstance(row, BaseRow):
        doc = {**base_entry(row.base), "slot": row.slot.isoformat()}
        del doc["time"]
    else:
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
    wal = wal_listings(cfg, names)
    rows = collect(cfg, names, args.limit, args.failed, wal)
    drills = proven(cfg, rows)
    proofs = [drills.get(row.backup_id) if row.status == "SUCCEEDED" else None for row in rows]  # not a failed try
    now = clock()
    windows = [{"kind": "wal_window", "target": name, "window": listing.window} for name, listing in wal.items()]
    out.json([*(as_json(row, now, drill) for row, drill in zip(rows, proofs, strict=True)), *windows])
    out.line(HEADER)
    for row, drill in zip(rows, proofs, strict=True):
        out.line(as_line(row, now, drill))
    if not rows:
        out.line("(no complete backups" + (" and no failed attempts)" if args.failed else ")"))
    for listing in wal.values():
        out.line(f"WINDOW {listing.summary}")
    return EXIT_OK
