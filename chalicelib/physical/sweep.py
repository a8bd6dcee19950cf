"""The sweep (on a schedule): what became of the snapshots started earlier, metrics, cross-region copies."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chalicelib import observability
from chalicelib.config import Physical, RetentionPolicy, Target
from chalicelib.errors import LifeboatError, SnapshotError
from chalicelib.observability import logger
from chalicelib.physical.driver import Driver
from chalicelib.physical.inventory import Inventory, driver_for
from chalicelib.physical.model import SnapshotServices, SnapshotSet
from chalicelib.physical.names import OBSERVED_TAG
from chalicelib.physical.protect import protect
from chalicelib.physical.trust import Sources, source_distrust


@dataclass
class SweepReport:
    completed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    copies_started: list[str] = field(default_factory=list)
    copies_completed: list[str] = field(default_factory=list)
    locked: list[str] = field(default_factory=list)  # "<backup id>@<region> until <time>"
    shared: list[str] = field(default_factory=list)  # "<backup id>@<region> with <account>"
    managed: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def sweep(svc: SnapshotServices, targets: Sequence[str] | None = None) -> SweepReport:
    """Look at every managed snapshot not yet marked `lifeboat:observed` and report what became of it.

    Finished ones are tagged `lifeboat:observed=done` and counted (`SnapshotSucceeded`, `SnapshotDuration`:
    seconds from the snapshot's start to its completion time where AWS gives one — EBS — else to now, so it
    overstates RDS durations by up to one sweep interval); failed ones are tagged `=failed` and counted in
    `SnapshotFailed` (alarm on it). A finished snapshot (source or copy) is first protected (physical.protect: an EBS
    lock for its retention, a share with the vault account), and a newly finished source copied to
    `copy_to_region`: if any of that fails, it stays unmarked (counted in `SnapshotFailed`) and the next sweep tries
    again. Problems with one target are reported and do not stop the others.
    """
    report = SweepReport()
    inventory = Inventory(svc)
    now = svc.clock()
    for target in svc.config.targets:
        if target.physical is None or (targets is not None and target.name not in targets):
            continue
        try:
            _sweep_target(svc, inventory, target, target.physical, now, report)
        except LifeboatError as exc:
            logger.error("sweep of a target failed", extra={"target": target.name, "error": str(exc)})
            observability.record("SnapshotSweepError", 1, "Count", target.name)
            report.errors.append(f"{target.name}: {exc}")
    return report


def _sweep_target(
    svc: SnapshotServices, inventory: Inventory, target: Target, physical: Physical, now: datetime, report: SweepReport
) -> None:
    driver = driver_for(physical)
    region = svc.source_region(physical)
    policy = svc.config.policy_for(target)
    if physical.copy_to_region == region:
        raise SnapshotError(
            f"target {target.name!r}: copy_to_region {region} is the source's own region;"
            " choose another region or remove copy_to_region"
        )
    sources = [s for s in inventory.sets(driver, region, target.name) if s.copy_of is None]
    report.managed[target.name] = sum(len(s.members) for s in sources)
    observability.record("ManagedSnapshots", report.managed[target.name], "Count", target.name)
    unobserved = [s for s in sources if not s.observed]
    copy_check = _copy_check(svc, driver, physical, region) if physical.copy_to_region and unobserved else None
    for snap in unobserved:
        _observe(svc, driver, physical, policy, snap, now, report, copy_check)
    if physical.copy_to_region:
        for snap in inventory.sets(driver, physical.copy_to_region, target.name):
            if snap.copy_of is not None and not snap.observed:
                _observe(svc, driver, physical, policy, snap, now, report, None)


def _copy_check(svc: SnapshotServices, driver: Driver, physical: Physical, region: str) -> Callable[[SnapshotSet], str]:
    """Why a source set must not be copied ("" when it may): the pruner's rule for sources (physical.trust). What the
    target's snapshots may be of is looked up at the first call; when it cannot be told, the call raises (the set
    stays unmarked and uncopied: the next sweep tries again)."""
    found: list[Sources] = []

    def check(snap: SnapshotSet) -> str:
        if not found:
            found.append(driver.sources(svc, physical, region))
        return source_distrust(snap, found[0])

    return check


def _observe(
    svc: SnapshotServices,
    driver: Driver,
    physical: Physical,
    policy: RetentionPolicy,
    snap: SnapshotSet,
    now: datetime,
    report: SweepReport,
    copy_check: Callable[[SnapshotSet], str] | None,
) -> None:
    """Protect, copy (a source, when `copy_check` finds nothing wrong with it) and mark a set; report what became of
    it."""
    where = f"{snap.backup_id}@{snap.region}"
    extra = {
        "target": snap.target,
        "backup_id": snap.backup_id,
        "region": snap.region,
        "snapshots": [m.resource_id for m in snap.members],
    }
    if snap.state == "available":
        try:
            protection = protect(svc, driver, snap, physical, policy)
            started = []
            distrust = copy_check(snap) if copy_check and physical.copy_to_region else ""
            if distrust:  # the pruner keeps it out of retention; a copy would be believed in the copy region
                logger.warning("snapshot not copied", extra={**extra, "reason": distrust})
            elif copy_check and physical.copy_to_region:
                started = driver.copy(svc, snap, physical.copy_to_region, physical.copy_kms_key_id)
        except LifeboatError as exc:
            observability.record("SnapshotFailed", 1, "Count", snap.target)
            logger.error("snapshot could not be locked, shared or copied", extra={**extra, "error": str(exc)})
            report.errors.append(f"{where}: {exc}")
            return  # leave it unmarked: the next sweep tries again
        report.copies_started.extend(f"{r}@{physical.copy_to_region}" for r in started)
        if protection.locked_until:
            report.locked.append(f"{where} until {protection.locked_until:%Y-%m-%dT%H:%M:%SZ}")
        if protection.shared_with:
            report.shared.append(f"{where} with {protection.shared_with}")
        driver.tag(svc, snap.members, {OBSERVED_TAG: "done", **protection.tags})
        seconds = max(0.0, ((snap.completed or now) - (snap.created or now)).total_seconds())
        if snap.copy_of is None:
            report.completed.append(where)
            observability.record("SnapshotSucceeded", 1, "Count", snap.target)
            observability.record("SnapshotDuration", seconds, "Seconds", snap.target)
        else:
            report.copies_completed.append(where)
            observability.record("SnapshotCopied", 1, "Count", snap.target)
            observability.record("SnapshotCopyDuration", seconds, "Seconds", snap.target)
        logger.info("snapshot complete", extra={**extra, "seconds": round(seconds, 1), "copy": snap.copy_of})
    elif snap.state == "failed":
        driver.tag(svc, snap.members, {OBSERVED_TAG: "failed"})
        report.failed.append(where)
        observability.record("SnapshotFailed", 1, "Count", snap.target)
        logger.error("snapshot failed", extra={**extra, "states": [m.raw_state for m in snap.members]})
    else:
        report.pending.append(where)
