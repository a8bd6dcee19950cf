"""The point-in-time archive as the catalog shows it (`lifeboat list`, GET /targets/{target}/backups): a streaming
target's complete base backups (their manifests checked with the signing key, as `recover` checks them) and its
recoverable window (chalicelib.pitr.window: earliest and latest restorable time, gaps), read once per target."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chalicelib.adapters.s3 import BackupStore
from chalicelib.pitr.basebackup import BaseBackup, BaseLayout, list_bases
from chalicelib.pitr.sealing import Sealer
from chalicelib.pitr.window import describe_window, gather_window

BASE_KIND = "base"


@dataclass(frozen=True)
class WalListing:
    target: str
    bases: list[BaseBackup]  # newest first
    window: dict[str, Any]  # RecoverableWindow.as_dict()
    summary: str  # describe_window: the window in a few lines for people


def read_wal_listing(store: BackupStore, prefix: str, target: str, sealer: Sealer | None) -> WalListing:
    bases = list_bases(store, BaseLayout(prefix, target), sealer)
    window = gather_window(store, prefix, target)
    return WalListing(target, bases[::-1], window.as_dict(), describe_window(window))


def base_id(base: BaseBackup) -> str:
    """`base:<target>:<stamp>`, the form of the catalog's other ids (`logical:…`, `snapshot:…`)."""
    return f"{BASE_KIND}:{base.target}:{base.backup_id}"


def base_time(base: BaseBackup) -> datetime:
    """Where a base sits in the catalog's timeline: its schedule slot, else when it started."""
    return base.slot or base.started_at


def server_version(version_num: int) -> str:
    """170002 -> `17.2` (server_version_num of PostgreSQL 10 and later)."""
    return f"{version_num // 10000}.{version_num % 10000}"


def base_entry(base: BaseBackup) -> dict[str, Any]:
    """A base backup as a catalog entry (the API's and `lifeboat list --json`'s fields)."""
    return {
        "backup_id": base_id(base),
        "kind": BASE_KIND,
        "target": base.target,
        "time": base_time(base).isoformat(),
        "size": base.tar_size,
        "status": "SUCCEEDED",
        "retention_class": None,  # wal-prune keeps bases by the target's policy, not by a class tag
        "server_version": server_version(base.server_version_num),
        "started_at": base.started_at.isoformat(),
        "finished_at": base.finished_at.isoformat(),
        "timeline": base.timeline,
        "start_lsn": base.start_lsn,
        "end_lsn": base.end_lsn,
        "incremental_of": base.parent,
    }
