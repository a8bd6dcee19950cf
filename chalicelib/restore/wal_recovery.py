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
labels; one that carries a signature must verify. When a set is chosen the command gains `--snapshot-set` and the
plan names the set and its snapshots, and how to make its volumes: the snapshot restore form of this API
(POST /targets/{t}/restores with the set's backup_id and an availability_zone), which the restore worker runs under
the same quotas, tags and IAM as every snapshot restore. The API itself creates nothing: its role has no restore
write (tests/reliability/test_restore_iam.py), so a caller cannot pile up volumes by calling it in a loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chalicelib.config import Target
from chalicelib.errors import (
    BadRequestError,
    ConflictError,
    IntegrityError,
    NotFoundError,
)
from chalicelib.logical.signing import ManifestSigning
from chalicelib.observability import logger
from chalicelib.physical.inventory import Inventory, driver_for
from chalicelib.physical.model import SnapshotSet
from chalicelib.physical.names import label_key
from chalicelib.pitr.basebackup import BaseBackup, BaseLayout, read_bases
from chalicelib.pitr.sealing import Sealer
from chalicelib.pitr.snapshotbase import SnapshotLabel, as_base, believed_label
from chalicelib.pitr.versions import KeyVersions
from chalicelib.pitr.walarchive import WalArchive
from chalicelib.pitr.walnames import DEFAULT_SEGMENT_SIZE, WalLayout
from chalicelib.restore.model import RestoreServices
from chalicelib.restore.plan import services
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
    """What can be refused before anything is read: the target. Returns the target's name."""
    return streaming_target(svc, req.target).name


def sealer_of(svc: RestoreServices) -> Sealer | None:
    """The signing key's sealer (settings.signing_key_id), as `lifeboat recover` builds it (pitr.commands.sealer)."""
    signing = svc.catalog.signing
    return Sealer.from_signing(signing) if isinstance(signing, ManifestSigning) else None


def plan_recovery(svc: RestoreServices, req: WalRecoveryRequest) -> dict[str, Any]:
    """The plan, as the job's result (reads only). ConflictError (409) when the target cannot be
    recovered to the goal (the message says what can), BadRequestError for a malformed goal."""
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
    if not chosen:
        return result
    snap = chosen.snap
    snapshots = [{"snapshot_id": m.resource_id, "source_volume_id": m.source_id} for m in snap.members]
    result["snapshot_set"] = {
        "backup_id": snap.backup_id,
        "region": snap.region,
        "snapshots": snapshots,
        "create_volumes": {"backup_id": snap.backup_id, "availability_zone": "<a zone physical.restore allows>"},
        "next": f"create the set's volumes: POST /targets/{target.name}/restores with the create_volumes body (the"
        " snapshot restore, run by the restore worker), attach them to the machine that will run the server and mount"
        " them as they were mounted when the snapshots were taken (the data directory at pgdata), then run the command",
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
    """The set's backup label and its signature status, when the set and its label agree (the module's docstring;
    the one check `lifeboat recover --snapshot-set` makes too: snapshotbase.believed_label); IntegrityError (or the
    Conflict/NotFound snapshotbase raises) saying why not otherwise."""
    if snap.state != "available" or snap.copy_of is not None or snap.slot_mismatch:
        return believed_label(snap, {}, "", sealer, None)  # refuses, before reading the label
    store = svc.catalog.store
    key = label_key(svc.config.settings.prefix, snap.target, snap.slot)
    uri = f"s3://{store.bucket}/{key}"
    if snap.label_uri != uri:
        raise IntegrityError(f"{snap.backup_id} has no backup label tag naming {uri}")
    document, stored_at = _first_version(svc, key)
    return believed_label(snap, document, uri, sealer, stored_at)


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
