"""The restore API's point-in-time form for a target with a `wal` section: planned by the API, run by the caller.

A server's data directory is not something AWS can create, so the API does not recover by itself: it reads what
`lifeboat recover` would read, verified the same way (base manifests through chalicelib.pitr.basebackup.read_bases
with the signing key: a base whose seal does not verify is never offered; the WAL listing and the gap records),
decides with recover's own plan (chalicelib.restore.wal_plan), and answers with the base, the WAL range, the recovery
target and the exact command. The answer is a restore job like any other (kind `wal`, recorded SUCCEEDED at once,
never queued): the same quotas, the same GET /targets/{t}/restores/{id}, the same Idempotency-Key.

EBS targets with `app_consistent: true` and a WAL stream: an app-consistent snapshot set whose backup stopped before
the target may be the base. Its backup label (`<prefix>snapshots/<target>/<stamp>/backup_label.json`, the first
version) is believed only when it matches its set: the set is managed, complete, not a copy, created by AWS within
its slot (SnapshotSet.slot_mismatch), its label tag names that key, and the label names the set's backup id, target
and exact snapshots (recover's own checks of a set: chalicelib.pitr.snapshotbase). The backup worker does not sign
labels; one that carries a signature must verify. When a set is chosen, the API creates one volume per snapshot
(tagged with the restore id like every restore-created resource; in the requested zone, the first one
physical.restore allows, or the zone of the target's instance) and the command gains `--snapshot-set`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chalicelib.adapters.aws_errors import AWS_ERRORS, error_code, error_message
from chalicelib.config import Physical, Target
from chalicelib.errors import BadRequestError, ConflictError, IntegrityError, NotFoundError, RestoreError
from chalicelib.logical.catalog import BackupId
from chalicelib.logical.signing import ManifestSigning
from chalicelib.observability import logger
from chalicelib.physical.inventory import Inventory, driver_for
from chalicelib.physical.model import SnapshotSet
from chalicelib.physical.names import label_key
from chalicelib.pitr.basebackup import BaseBackup, BaseLayout, read_bases
from chalicelib.pitr.sealing import Sealer
from chalicelib.pitr.snapshotbase import SnapshotLabel, as_base, choose_set, parse_label
from chalicelib.pitr.versions import KeyVersions
from chalicelib.pitr.walarchive import WalArchive
from chalicelib.pitr.walnames import DEFAULT_SEGMENT_SIZE, WalLayout
from chalicelib.restore import access
from chalicelib.restore.model import RestoreServices
from chalicelib.restore.plan import RESTORE_TAG, services, tags
from chalicelib.restore.requests import WalRecoveryRequest
from chalicelib.restore.wal_plan import (
    PGDATA_PLACEHOLDER,
    WalRange,
    choose,
    describe_base,
    goal_of,
    last_needed,
    recover_command,
)

UNSIGNED_LABEL = (
    "UNSIGNED: the backup worker does not sign backup labels; this one matched its snapshot set (backup id, target,"
    " snapshot ids, AWS's creation times)"
)


@dataclass(frozen=True)
class SetBase:
    """An app-consistent snapshot set standing for a base, and what its label's signature check found."""

    base: BaseBackup
    snap: SnapshotSet
    signature: str


SetBases = dict[str, SetBase]


def streaming_target(svc: RestoreServices, name: str) -> Target:
    """The configured target (404 when unknown) with a `wal` section (400 otherwise, saying what to use instead)."""
    target = svc.config.target(name)
    if target.wal is None:
        rds = target.physical is not None and target.physical.method != "ebs"
        instead = "point_in_time with new_id (an RDS point-in-time restore)" if rds else "a backup_id"
        raise BadRequestError(
            f"target {name!r} has no wal section: time, latest and lsn recover a WAL stream (chalicelib.pitr), which"
            f" this target does not have; restore it with {instead}, or add `wal: {{}}` to it and run wal-stream"
        )
    return target


def uses_snapshot_sets(target: Target) -> bool:
    physical = target.physical
    return physical is not None and physical.method == "ebs" and physical.app_consistent


def check(svc: RestoreServices, req: WalRecoveryRequest) -> str:
    """What can be refused before anything is read: the target, and an availability zone the target does not allow
    (403). Returns the target's name."""
    target = streaming_target(svc, req.target)
    if req.availability_zone is not None:
        if not uses_snapshot_sets(target) or target.physical is None:
            raise BadRequestError(
                f"availability_zone: target {target.name!r} has no app-consistent EBS snapshots to create volumes from;"
                " leave it out"
            )
        access.check_zone(target.physical, req.availability_zone)
    return target.name


def sealer_of(svc: RestoreServices) -> Sealer | None:
    """The signing key's sealer (settings.signing_key_id), as `lifeboat recover` builds it (pitr.commands.sealer)."""
    signing = svc.catalog.signing
    return Sealer.from_signing(signing) if isinstance(signing, ManifestSigning) else None


def plan_recovery(svc: RestoreServices, req: WalRecoveryRequest, restore_id: str) -> dict[str, Any]:
    """The plan as the job's result; creates the volumes when a snapshot set is the base. ConflictError (409) when the
    target cannot be recovered to the goal (the message says what can), BadRequestError for a malformed goal."""
    target = streaming_target(svc, req.target)
    store, prefix, sealer = svc.catalog.store, svc.config.settings.prefix, sealer_of(svc)
    bases, refused = read_bases(store, BaseLayout(prefix, target.name), sealer)
    segment_size = bases[-1].segment_size if bases else DEFAULT_SEGMENT_SIZE
    archive = WalArchive(store, WalLayout(prefix, target.name), sealer=sealer)
    entries, gaps = archive.entries(segment_size), archive.gaps()
    sets: SetBases = {}
    if uses_snapshot_sets(target):
        sets = snapshot_set_bases(svc, target, sealer, refused)
    goal = goal_of(req.time, req.latest, req.lsn)
    planned, window = choose(target.name, bases, [s.base for s in sets.values()], entries, gaps, goal)
    chosen = sets.get(planned.base.backup_id)
    base_signature = chosen.signature if chosen else _base_signature(planned.base, sealer)
    result: dict[str, Any] = {
        "target": target.name,
        "recovery_target": goal.describe(),
        "base": describe_base(planned.base, base_signature),
        "wal": WalRange(planned.first_segment, last_needed(entries, planned, goal), planned.last_segment).as_dict(),
        "window": window.as_dict(),
        "not_offered": refused,
        "command": recover_command(target.name, goal, req.pgdata, chosen.snap.backup_id if chosen else None),
        "pgdata": req.pgdata,
        "requires": f"PostgreSQL {planned.base.major} on the machine that runs the command (physical recovery is"
        " same-major), and lifeboat there with read access to the bucket's wal/ and base/ (OperatorRecoveryPolicy)",
    }
    if req.pgdata is None:
        result["fill_in"] = {PGDATA_PLACEHOLDER: "a new, empty data directory on that machine (an absolute path)"}
    if chosen:
        snap = chosen.snap
        zone = volume_zone(svc, target, req.availability_zone, snap.region)
        result["snapshot_set"] = {
            "backup_id": snap.backup_id,
            "region": snap.region,
            "availability_zone": zone,
            "volumes": create_volumes(svc, target.name, snap, zone, restore_id),
            "next": "attach the volumes to the machine that will run the server and mount them as they were mounted"
            " when the snapshots were taken (the data directory at pgdata), then run the command",
        }
        if req.pgdata is not None:
            result["snapshot_set"]["next"] += f" ({req.pgdata})"
    return result


def _base_signature(base: BaseBackup, sealer: Sealer | None) -> str:
    if sealer is None:
        return "NOT_CHECKED: settings.signing_key_id is not set"
    return "VALID" if base.signature is not None else "UNSIGNED_ACCEPTED: stored before settings.accept_unsigned_before"


def snapshot_set_bases(
    svc: RestoreServices, target: Target, sealer: Sealer | None, refused: dict[str, str]
) -> SetBases:
    """The target's app-consistent snapshot sets that may stand for a base, by backup id; each set not believed is
    added to `refused` (its backup id: why)."""
    snapshots = services(svc)
    physical = target.physical
    assert physical is not None  # uses_snapshot_sets
    region = snapshots.source_region(physical)
    found: SetBases = {}
    for snap in Inventory(snapshots).sets(driver_for(physical), region, target.name):
        try:
            label, signature = _believed_label(svc, snap, sealer)
            found[snap.backup_id] = SetBase(as_base(label), snap, signature)
        except (IntegrityError, ConflictError, NotFoundError, BadRequestError) as exc:
            refused[snap.backup_id] = str(exc)[:500]
            logger.warning("snapshot set not offered as a base", extra={"backup_id": snap.backup_id, "why": str(exc)})
    return found


def _believed_label(svc: RestoreServices, snap: SnapshotSet, sealer: Sealer | None) -> tuple[SnapshotLabel, str]:
    """The set's backup label and its signature status, when the set and its label agree (the module's docstring);
    IntegrityError (or the Conflict/NotFound snapshotbase raises) saying why not otherwise."""
    if snap.state != "available" or snap.copy_of is not None:
        raise IntegrityError(f"{snap.backup_id} is {snap.state}{' (a copy)' if snap.copy_of else ''}: not a base")
    if snap.slot_mismatch:
        raise IntegrityError(snap.slot_mismatch)
    store = svc.catalog.store
    key = label_key(svc.config.settings.prefix, snap.target, snap.slot)
    if snap.label_uri != f"s3://{store.bucket}/{key}":
        raise IntegrityError(f"{snap.backup_id} has no backup label tag naming s3://{store.bucket}/{key}")
    document, stored_at = _first_version(svc, key)
    label = parse_label(document, BackupId.parse(snap.backup_id))
    choose_set(label, [snap])  # its snapshots are exactly the label's
    if "signature" not in document:
        return label, UNSIGNED_LABEL
    if sealer is None:
        return label, "NOT_CHECKED: settings.signing_key_id is not set"
    return label, str(sealer.check(document, f"backup label {key}", label.stopped_at, stored_at)["status"])


def _first_version(svc: RestoreServices, key: str) -> tuple[dict[str, Any], datetime | None]:
    """A label document at the first version of its key (written once: a later PUT over it is not believed)."""
    store = svc.catalog.store
    versions = KeyVersions.of(store)
    if versions is None:
        raw, stored_at = store.get_bytes(key), None
    else:
        first, _ = versions.first(key)
        if first is None:
            raise IntegrityError(f"s3://{store.bucket}/{key} is not there")
        got = versions.read(key, first.version_id)
        raw, stored_at = got.data, got.last_modified
    try:
        document = json.loads(raw)
    except ValueError:
        raise IntegrityError(f"s3://{store.bucket}/{key} is not JSON") from None
    if not isinstance(document, dict):
        raise IntegrityError(f"s3://{store.bucket}/{key} is not a JSON object")
    return document, stored_at


def volume_zone(svc: RestoreServices, target: Target, asked: str | None, region: str) -> str:
    """Where the new volumes go: the request's zone (checked by `check`), else the first one physical.restore allows,
    else the zone of the target's instance (or of its first volume)."""
    physical: Physical | None = target.physical
    assert physical is not None  # a snapshot set was chosen
    if asked:
        return asked
    if physical.restore.availability_zones:
        return physical.restore.availability_zones[0]
    ec2 = services(svc).client_for("ec2", region)
    try:
        if physical.ec2_instance_id:
            found = ec2.describe_instances(InstanceIds=[physical.ec2_instance_id])["Reservations"]
            return str(found[0]["Instances"][0]["Placement"]["AvailabilityZone"])
        volumes = ec2.describe_volumes(VolumeIds=physical.volume_ids[:1])["Volumes"]
        return str(volumes[0]["AvailabilityZone"])
    except (*AWS_ERRORS, IndexError, KeyError) as exc:
        raise BadRequestError(
            f"cannot tell the availability zone of target {target.name!r}'s instance or volumes"
            f" ({error_code(exc) or type(exc).__name__}): give availability_zone"
        ) from None


def create_volumes(svc: RestoreServices, target: str, snap: SnapshotSet, zone: str, restore_id: str) -> list[Any]:
    """One new volume per snapshot of the set, tagged like every restore-created resource (plan.tags)."""
    ec2 = services(svc).client_for("ec2", snap.region)
    volumes: list[dict[str, Any]] = []
    for member in snap.members:
        try:
            made = ec2.create_volume(
                SnapshotId=member.resource_id,
                AvailabilityZone=zone,
                TagSpecifications=[{"ResourceType": "volume", "Tags": tags(restore_id, target)}],
            )
        except AWS_ERRORS as exc:
            before = ", ".join(v["volume_id"] for v in volumes) or "none"
            raise RestoreError(
                f"AWS refused a volume from {member.resource_id} in {zone}: {error_code(exc)}: {error_message(exc)};"
                f" created before it (tagged {RESTORE_TAG}={restore_id}): {before}"
            ) from None
        volumes.append(
            {
                "snapshot_id": member.resource_id,
                "volume_id": made["VolumeId"],
                "source_volume_id": member.source_id,
                "state": made.get("State"),
                "created_at": datetime.now(UTC).isoformat(),
            }
        )
    return volumes
