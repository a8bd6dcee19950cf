"""Pruning: delete the managed snapshots the target's GFS retention policy no longer keeps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
from chalicelib.physical.trust import believed_refs, copy_distrust, source_distrust
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
    "locked until ...") are left alone, and so are sets it does not believe (physical.trust: a forged slot, copy-of
    or source; kept with the reason, not counted by retention). With `dry_run` nothing is deleted and the report
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
    """Every region of the target is listed (and its sets judged, physical.trust) before anything is deleted: a copy
    is believed only when its source was, as listed before this run could delete that source."""
    driver = driver_for(physical)
    policy = svc.config.policy_for(target)
    source_region = svc.source_region(physical)
    regions = [source_region] + ([physical.copy_to_region] if physical.copy_to_region else [])
    labels = _Labels()
    errors_before = len(report.errors)
    listed: dict[str, list[SnapshotSet]] = {}
    for region in regions:
        try:
            listed[region] = inventory.sets(driver, region, target.name)
        except LifeboatError as exc:
            report.errors.append(f"{target.name}@{region}: {exc}")
            labels.unknown = True
    distrust = _distrust(svc, driver, target.name, physical, listed, report)
    if distrust is None:
        labels.unknown = True
        listed = {}
    deleted = 0
    for region, sets in listed.items():
        decisions = _decide(sets, distrust or {}, policy, now)
        deleted += _prune_region(svc, driver, target.name, region, decisions, labels, report)
    if deleted:
        observability.record("SnapshotsPruned", deleted, "Count", target.name)
    if len(report.errors) > errors_before:
        observability.record("SnapshotPruneError", len(report.errors) - errors_before, "Count", target.name)
    if not labels.unknown:
        _delete_labels(svc, sorted(labels.dropped - labels.kept), report)


def _distrust(
    svc: SnapshotServices,
    driver: Driver,
    target: str,
    physical: Physical,
    listed: dict[str, list[SnapshotSet]],
    report: PruneReport,
) -> dict[int, str] | None:
    """Why each listed set (by id()) is not believed ("" or absent: it is); None when the target's sources cannot
    be told (then nothing of the target is touched, and the error is reported)."""
    source_region = svc.source_region(physical)
    try:
        sources = driver.sources(svc, physical, source_region)
    except LifeboatError as exc:
        report.errors.append(f"{target}@{source_region}: {exc}; nothing of the target pruned")
        return None
    reasons = {id(s): source_distrust(s, sources) for s in listed.get(source_region, [])}
    believed = believed_refs(s for s in listed.get(source_region, []) if not reasons[id(s)])
    for region, sets in listed.items():
        if region != source_region:
            reasons.update({id(s): copy_distrust(s, believed, source_region) for s in sets})
    return reasons


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


def _decide(
    sets: Sequence[SnapshotSet], distrust: Mapping[int, str], policy: RetentionPolicy, now: datetime
) -> list[tuple[SnapshotSet, str]]:
    """Each set with the reason it is kept ("" when it may go). `distrust`: why a set (by id()) is not believed
    (physical.trust); such a set is kept and left out of retention."""
    facts, held = [], {}
    for snap in sets:
        if snap.state in ("creating", "deleting"):
            held[id(snap)] = f"in progress ({snap.state})"
        elif reason := distrust.get(id(snap), ""):
            held[id(snap)] = reason
            logger.warning("snapshot set not believed", extra={"backup_id": snap.backup_id, "reason": reason})
        elif snap.state == "failed" and not snap.observed:
            held[id(snap)] = "failed; kept until the sweep has reported it"
        else:
            facts.append(
                SnapshotFacts(snap.backup_id, snap.slot, snap.retention_class, snap.pinned, snap.state == "available")
            )
    keep = snapshots_to_keep(facts, policy, now)
    return [(snap, held.get(id(snap)) or keep.get(snap.backup_id) or _locked(snap, now)) for snap in sets]


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
