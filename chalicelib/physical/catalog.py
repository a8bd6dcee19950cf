"""The catalog view of physical backups: managed snapshots as `lifeboat list` and the API show them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from chalicelib.physical.inventory import Inventory, driver_for
from chalicelib.physical.model import SnapshotServices, State, physical_target

Status = Literal["SUCCEEDED", "IN_PROGRESS", "FAILED", "DELETING"]


class SnapshotEntry(BaseModel):
    """A physical backup as `lifeboat list` shows it next to logical ones."""

    model_config = ConfigDict(frozen=True, defer_build=True)  # built on first use, not at import (cold start)
    kind: Literal["snapshot"] = "snapshot"
    backup_id: str
    target: str
    method: str
    slot: datetime
    created_at: datetime | None = None
    status: Status
    region: str
    resource_ids: list[str]
    arns: list[str] = []
    size_gib: int | None = None
    retention_class: str = ""
    retention_policy: str = ""
    pinned: bool = False
    copy_of: str | None = None
    label_uri: str | None = None
    engine_version: str | None = None

    @property
    def size(self) -> int:
        """Bytes provisioned (not stored: snapshots are incremental), 0 when unknown."""
        return (self.size_gib or 0) * 1024**3

    @property
    def server_version(self) -> str:
        """The engine version RDS recorded (EBS snapshots do not know it), like a manifest's server_version."""
        return self.engine_version or ""


_STATUS: dict[State, Status] = {
    "available": "SUCCEEDED",
    "creating": "IN_PROGRESS",
    "failed": "FAILED",
    "deleting": "DELETING",
}


def list_snapshots(svc: SnapshotServices, target: str, *, include_copies: bool = True) -> list[SnapshotEntry]:
    """The target's managed snapshots (source region, then copies), newest first."""
    tgt, physical = physical_target(svc.config, target)
    driver = driver_for(physical)
    inventory = Inventory(svc)
    regions = [svc.source_region(physical)]
    if include_copies and physical.copy_to_region:
        regions.append(physical.copy_to_region)
    entries = []
    for region in regions:
        for snap in inventory.sets(driver, region, tgt.name):
            entries.append(
                SnapshotEntry(
                    backup_id=snap.backup_id,
                    target=snap.target,
                    method=physical.method,
                    slot=snap.slot,
                    created_at=snap.created,
                    status=_STATUS[snap.state],
                    region=region,
                    resource_ids=[m.resource_id for m in snap.members],
                    arns=[m.arn for m in snap.members if m.arn],
                    size_gib=snap.size_gib,
                    retention_class=snap.retention_class,
                    retention_policy=snap.retention_policy,
                    pinned=snap.pinned,
                    copy_of=snap.copy_of,
                    label_uri=snap.label_uri,
                    engine_version=next((m.engine_version for m in snap.members), None),
                )
            )
    return sorted(entries, key=lambda e: (e.slot, e.copy_of is None), reverse=True)
