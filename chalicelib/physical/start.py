"""Starting a snapshot: ask AWS for it and return; `sweep` finds out later what became of it.

A duplicate delivery of a slot creates nothing: RDS identifiers are derived from the slot, EBS sets are
looked up by their slot tag first (and claimed in the jobs table when one is configured).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal

from chalicelib import observability
from chalicelib.config import Physical, Target
from chalicelib.errors import SnapshotError
from chalicelib.logical.catalog import BackupId
from chalicelib.observability import logger
from chalicelib.physical.backup_mode import backup_mode
from chalicelib.physical.driver import Driver
from chalicelib.physical.ebs import EbsDriver
from chalicelib.physical.inventory import Inventory, driver_for
from chalicelib.physical.model import SnapshotResource, SnapshotServices, physical_target
from chalicelib.physical.names import LABEL_TAG, label_key, slot_time, snapshot_identifier, snapshot_tags
from chalicelib.physical.rds import RDS_INSTANCE, RdsDriver
from chalicelib.scheduling.retention import classify

CLAIM_LEASE = timedelta(minutes=15)


@dataclass(frozen=True)
class SnapshotOutcome:
    status: Literal["STARTED", "SKIPPED"]
    backup_id: str
    method: str
    region: str
    resource_ids: tuple[str, ...] = ()
    retention_class: str = ""
    reason: str = ""
    label_uri: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "backup_id": self.backup_id,
            "method": self.method,
            "region": self.region,
            "resource_ids": list(self.resource_ids),
            "retention_class": self.retention_class,
            "reason": self.reason,
            "label_uri": self.label_uri,
        }


def start_snapshot(
    svc: SnapshotServices, target_name: str, slot: datetime | None = None, *, trigger: str = "schedule"
) -> SnapshotOutcome:
    """Start the physical backup of a target for a slot and return at once (the sweep observes completion).

    Returns SKIPPED when the slot's snapshot exists already (a duplicate delivery) or another attempt holds
    the slot's claim; raises SnapshotError (with what to fix) when AWS refuses.
    """
    target, physical = physical_target(svc.config, target_name)
    slot = slot_time(slot or svc.clock())
    bid = BackupId(target.name, slot, "snapshot")
    region = svc.source_region(physical)
    driver = driver_for(physical)
    logger.append_keys(target=target.name, backup_id=str(bid))
    try:
        sets = [s for s in Inventory(svc).sets(driver, region, target.name) if s.copy_of is None]
        managed = sum(len(s.members) for s in sets)
        existing = next((s for s in sets if s.slot == slot), None)
        if existing is not None:
            logger.info("snapshot of this slot exists; nothing to do", extra={"state": existing.state})
            return SnapshotOutcome(
                "SKIPPED",
                str(bid),
                physical.method,
                region,
                tuple(m.resource_id for m in existing.members),
                existing.retention_class,
                f"already exists ({existing.state})",
                existing.label_uri,
            )
        claim_key = f"snapshot#{bid}"
        if svc.claims and not svc.claims.claim(claim_key, CLAIM_LEASE, detail={"trigger": trigger}):
            logger.info("another attempt holds or finished this slot; skipping")
            return SnapshotOutcome("SKIPPED", str(bid), physical.method, region, reason="claimed by another attempt")
        previous = next((s.slot for s in sets if s.slot < slot and s.state != "failed"), None)
        retention_class = classify(slot, previous, svc.config.policy_for(target)).value
        tags = snapshot_tags(target, bid, retention_class, trigger)
        start = partial(_start, svc, target, physical, driver, bid, tags, region, managed, retention_class)
        outcome = _claimed(svc, claim_key, target.name, start)
        if outcome.status == "STARTED":
            observability.record("SnapshotStarted", 1, "Count", target.name)
            observability.record("ManagedSnapshots", managed + len(outcome.resource_ids), "Count", target.name)
            logger.info(
                "snapshot started",
                extra={"snapshots": list(outcome.resource_ids), "region": region, "retention": retention_class},
            )
        return outcome
    finally:
        logger.remove_keys(["target", "backup_id"])


def _claimed(
    svc: SnapshotServices, claim_key: str, target: str, start: Callable[[], SnapshotOutcome]
) -> SnapshotOutcome:
    """Run `start` and record how it ended in the slot's claim (when claims are configured)."""
    try:
        outcome = start()
    except BaseException as exc:  # whatever ends the attempt (even an interrupt) fails the claim; re-raised
        observability.record("SnapshotFailed", 1, "Count", target)
        logger.error(
            "snapshot could not be started",
            extra={"error": str(exc), "error_code": getattr(exc, "code", "internal_error")},
        )
        if svc.claims:
            svc.claims.finish(claim_key, "FAILED", {"error": str(exc)[:1000]})
        raise
    if svc.claims:
        svc.claims.finish(
            claim_key,
            "SUCCEEDED" if outcome.status == "STARTED" else "SKIPPED",
            {"snapshots": ",".join(outcome.resource_ids)[:1000]},
        )
    return outcome


def _start(
    svc: SnapshotServices,
    target: Target,
    physical: Physical,
    driver: Driver,
    bid: BackupId,
    tags: dict[str, str],
    region: str,
    managed: int,
    retention_class: str,
) -> SnapshotOutcome:
    if isinstance(driver, RdsDriver):
        if physical.app_consistent:
            logger.warning("app_consistent applies to EBS snapshots only; RDS snapshots are crash-consistent by design")
        source = physical.db_instance_id if driver is RDS_INSTANCE else physical.db_cluster_id
        assert source is not None
        identifier = snapshot_identifier(target.name, bid.stamp)
        status = driver.start(svc, source, identifier, tags, region, managed)
        if status == "EXISTS":
            logger.info("RDS reports the snapshot exists (a concurrent delivery); nothing to do")
            return SnapshotOutcome(
                "SKIPPED", str(bid), physical.method, region, (identifier,), retention_class, "already exists"
            )
        return SnapshotOutcome("STARTED", str(bid), physical.method, region, (identifier,), retention_class)
    assert isinstance(driver, EbsDriver)
    if not physical.app_consistent:
        started = driver.start(svc, physical, tags, region, f"pg-lifeboat {bid}")
        return SnapshotOutcome(
            "STARTED", str(bid), physical.method, region, tuple(m.resource_id for m in started), retention_class
        )
    return _start_app_consistent(svc, target, physical, driver, bid, tags, region, retention_class)


def _start_app_consistent(
    svc: SnapshotServices,
    target: Target,
    physical: Physical,
    driver: EbsDriver,
    bid: BackupId,
    tags: Mapping[str, str],
    region: str,
    retention_class: str,
) -> SnapshotOutcome:
    """EBS snapshots started while PostgreSQL is in backup mode, and the backup label kept in the bucket."""
    if target.connection is None or svc.credentials is None or svc.store is None:
        raise SnapshotError(
            f"target {target.name!r}: app-consistent EBS snapshots need a connection, credentials"
            " and a backup store (for the backup label)"
        )
    key = label_key(svc.prefix, target.name, bid.stamp)
    uri = f"s3://{svc.store.bucket}/{key}"
    if len(uri) > 256:
        raise SnapshotError(f"{uri} is longer than a tag value may be (256): use a shorter settings.prefix")
    tags = {**tags, LABEL_TAG: uri}
    login = svc.credentials.login(target.connection)
    made: list[SnapshotResource] = []
    try:
        with backup_mode(login, f"pg-lifeboat {bid}") as label:
            made = driver.start(svc, physical, tags, region, f"pg-lifeboat {bid}")
        document = label.document(
            backup_id=str(bid),
            target=target.name,
            slot=bid.stamp.isoformat(),
            region=region,
            snapshot_ids=[m.resource_id for m in made],
            stopped_at=svc.clock().isoformat(),
        )
        svc.store.put_bytes(key, json.dumps(document, indent=2).encode(), content_type="application/json")
    except BaseException:  # any failure (or interrupt) after the snapshots started: discard them, re-raise
        driver.discard(svc, region, tags, made)  # without its label an app-consistent set cannot be restored as one
        raise
    logger.info("backup mode bracket complete", extra={"start_lsn": label.start_lsn, "stop_lsn": label.stop_lsn})
    return SnapshotOutcome(
        "STARTED", str(bid), physical.method, region, tuple(m.resource_id for m in made), retention_class, label_uri=uri
    )
