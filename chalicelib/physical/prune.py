"""Pruning: delete the managed snapshots the target's GFS retention policy no longer keeps."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat
from typing import Any

from chalicelib import observability
from chalicelib.config import Physical, RetentionPolicy, Target
from chalicelib.errors import LifeboatError
from chalicelib.observability import logger
from chalicelib.physical.driver import Driver
from chalicelib.physical.inventory import Inventory, driver_for
from chalicelib.physical.model import SnapshotServices, SnapshotSet
from chalicelib.physical.names import label_key
from chalicelib.scheduling.retention import SnapshotFacts, snapshots_to_keep

DELETE_CONCURRENCY = 4  # deletions in flight per region while pruning


@dataclass(frozen=True)
class PruneDecision:
    backup_id: str
    region: str
    resource_ids: tuple[str, ...]
    reason: str
    copy: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "region": self.region,
            "resource_ids": list(self.resource_ids),
            "reason": self.reason,
            "copy": self.copy,
        }


@dataclass
class PruneReport:
    dry_run: bool
    kept: list[PruneDecision] = field(default_factory=list)
    deleted: list[PruneDecision] = field(default_factory=list)  # "would delete" when dry_run
    labels_deleted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "kept": [d.as_dict() for d in self.kept],
            "deleted": [d.as_dict() for d in self.deleted],
            "labels_deleted": self.labels_deleted,
            "errors": self.errors,
        }


@dataclass
class _Labels:
    """The backup label objects (keys) of one target: one goes with the last snapshot set pointing to it."""

    kept: set[str] = field(default_factory=set)
    dropped: set[str] = field(default_factory=set)
    unknown: bool = False  # a region could not be listed: what is still referenced is unknown, keep every label


def prune(svc: SnapshotServices, dry_run: bool = False, targets: Sequence[str] | None = None) -> PruneReport:
    """Delete the managed snapshots the target's retention policy no longer keeps (see `snapshots_to_keep`),
    in the source region and in the copy region, each region judged on its own.

    Only snapshots tagged `lifeboat:managed=true` with this target's tag are considered: automated RDS
    snapshots and anything without the tag are never touched. Snapshots still being created, failed ones the
    sweep has not reported yet, and locked ones (until the sweep's `lifeboat:locked-until`; reported as kept,
    "locked until ...") are left alone. With `dry_run` nothing is deleted and the report
    says what would be, and why. A label object in S3 goes with the last snapshot set that points to it.
    """
    report = PruneReport(dry_run)
    inventory = Inventory(svc)
    now = svc.clock()
    for target in svc.config.targets:
        if target.physical is None or (targets is not None and target.name not in targets):
            continue
        _prune_target(svc, inventory, target, target.physical, now, report)
    return report


def _prune_target(
    svc: SnapshotServices, inventory: Inventory, target: Target, physical: Physical, now: datetime, report: PruneReport
) -> None:
    driver = driver_for(physical)
    policy = svc.config.policy_for(target)
    regions = [svc.source_region(physical)] + ([physical.copy_to_region] if physical.copy_to_region else [])
    labels = _Labels()
    deleted, errors_before = 0, len(report.errors)
    for region in regions:
        try:
            sets = inventory.sets(driver, region, target.name)
        except LifeboatError as exc:
            report.errors.append(f"{target.name}@{region}: {exc}")
            labels.unknown = True
            continue
        deleted += _prune_region(svc, driver, target.name, region, _decide(sets, policy, now), labels, report)
    if deleted:
        observability.record("SnapshotsPruned", deleted, "Count", target.name)
    if len(report.errors) > errors_before:
        observability.record("SnapshotPruneError", len(report.errors) - errors_before, "Count", target.name)
    if not labels.unknown:
        _delete_labels(svc, sorted(labels.dropped - labels.kept), report)


def _prune_region(
    svc: SnapshotServices,
    driver: Driver,
    target: str,
    region: str,
    decisions: Sequence[tuple[SnapshotSet, str]],
    labels: _Labels,
    report: PruneReport,
) -> int:
    """Report what is kept, delete (in parallel) what may go; the number of sets deleted."""
    doomed: list[tuple[SnapshotSet, PruneDecision]] = []
    for snap, keep_reason in decisions:
        decision = PruneDecision(
            snap.backup_id,
            region,
            tuple(m.resource_id for m in snap.members),
            keep_reason or _delete_reason(snap),
            snap.copy_of is not None,
        )
        label = _label(svc, snap)
        if keep_reason:
            report.kept.append(decision)
            if label:
                labels.kept.add(label)
        elif report.dry_run:
            report.deleted.append(decision)
        else:
            doomed.append((snap, decision))
    with ThreadPoolExecutor(max_workers=DELETE_CONCURRENCY, thread_name_prefix="prune") as pool:
        failures = list(pool.map(_delete_set, repeat(svc), repeat(driver), [snap for snap, _ in doomed]))
    deleted = 0
    for (snap, decision), failure in zip(doomed, failures, strict=True):
        label = _label(svc, snap)
        if failure:
            report.errors.append(f"{snap.backup_id}@{region}: {failure}")
            if label:
                labels.kept.add(label)
            continue
        report.deleted.append(decision)
        deleted += 1
        if label:
            labels.dropped.add(label)
        logger.info("snapshot pruned", extra={"target": target, **decision.as_dict()})
    return deleted


def _delete_set(svc: SnapshotServices, driver: Driver, snap: SnapshotSet) -> str | None:
    """Delete every snapshot of a set; the error, if any, as text."""
    try:
        for member in snap.members:
            driver.delete(svc, member)
    except LifeboatError as exc:
        return str(exc)
    return None


def _decide(sets: Sequence[SnapshotSet], policy: RetentionPolicy, now: datetime) -> list[tuple[SnapshotSet, str]]:
    """Each set with the reason it is kept ("" when it may go)."""
    facts, held = [], {}
    for snap in sets:
        if snap.state in ("creating", "deleting"):
            held[snap.backup_id] = f"in progress ({snap.state})"
        elif snap.state == "failed" and not snap.observed:
            held[snap.backup_id] = "failed; kept until the sweep has reported it"
        elif mismatch := snap.slot_mismatch:
            held[snap.backup_id] = mismatch
            logger.warning("snapshot slot tag not trusted", extra={"backup_id": snap.backup_id, "reason": mismatch})
        else:
            facts.append(
                SnapshotFacts(snap.backup_id, snap.slot, snap.retention_class, snap.pinned, snap.state == "available")
            )
    keep = snapshots_to_keep(facts, policy, now)
    return [(snap, held.get(snap.backup_id) or keep.get(snap.backup_id) or _locked(snap, now)) for snap in sets]


def _locked(snap: SnapshotSet, now: datetime) -> str:
    """Why a set the policy no longer needs is kept anyway: its EBS lock has not ended ("" when it may go). EC2
    would refuse the deletion; the pruner does not try."""
    until = snap.locked_until
    return f"locked until {until:%Y-%m-%dT%H:%M:%SZ}" if until and until > now else ""


def _delete_reason(snap: SnapshotSet) -> str:
    if snap.state == "failed":
        return "failed snapshot"
    return f"outside every retention window (slot {snap.slot:%Y-%m-%d %H:%M}, tagged {snap.retention_class or '-'})"


def _label(svc: SnapshotServices, snap: SnapshotSet) -> str | None:
    """The key of the set's backup label: only ever label_key(prefix, target, slot) in the backup bucket. A tag
    naming anything else (a logical backup's manifest, another bucket) is ignored, and said: anyone able to tag
    a managed snapshot must not reach other objects through the pruner."""
    uri = snap.label_uri
    if not uri or svc.store is None:
        return None
    key = label_key(svc.prefix, snap.target, snap.slot)
    if uri == f"s3://{svc.store.bucket}/{key}":
        return key
    logger.warning(
        "the snapshot's backup-label tag does not name its label object: ignored, nothing deleted for it",
        extra={"backup_id": snap.backup_id, "tag": uri[:300], "expected": key},
    )
    return None


def _delete_labels(svc: SnapshotServices, keys: Sequence[str], report: PruneReport) -> None:
    if not keys or svc.store is None:
        return
    try:
        svc.store.delete(list(keys))
    except LifeboatError as exc:
        report.errors.append(f"deleting backup labels: {exc}")
        return
    report.labels_deleted.extend(keys)
