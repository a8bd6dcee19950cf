"""An app-consistent EBS snapshot set as the base of a point-in-time recovery (`lifeboat recover TARGET
--snapshot-set SET_ID --pgdata DIR`).

The operator (or the restore API) creates volumes from the set's snapshots and mounts them so that DIR is the data
directory. The set's backup label, kept in the bucket by the app-consistent bracket (chalicelib.physical.start,
`snapshots/<target>/<stamp>/backup_label.json`), says where the WAL must start and stop; the WAL stream's archive
must hold every segment in between. Before anything is written: the set must exist, be complete and be the one the
label records (`believed_label`, the same check the restore API makes: not a copy, created by AWS within its slot,
tagged with the label's key, the label naming the set's id, target and exact snapshot ids, its LABEL line naming the
set, backup mode ended no earlier than AWS created the snapshots, a signature that verifies if it has one), and
DIR must be a data directory of the label's major that comes from this set and was not started since
(`data_dir_problems`). Then, as PostgreSQL's documentation for restoring a file-system backup says: postmaster.pid
(the snapshotted server's) goes, pg_wal is emptied (its files are older than the archive's), and so is
pg_replslot (the source's slots would hold WAL on the restored server for consumers that never come);
backup_label and tablespace_map are written exactly as pg_backup_stop returned them, then recovery.signal and
the settings (chalicelib.pitr.recover.write_recovery).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.adapters.s3 import BackupStore
from chalicelib.config import Physical
from chalicelib.errors import BadRequestError, ConflictError, IntegrityError, LifeboatError, NotFoundError
from chalicelib.logical.ids import BackupId
from chalicelib.physical.ebs import EBS
from chalicelib.physical.model import SnapshotServices, SnapshotSet, group_sets
from chalicelib.physical.names import COPY_OF_TAG, SET_TAG, label_key
from chalicelib.pitr.basebackup import BaseBackup
from chalicelib.pitr.recover import RecoveryTarget
from chalicelib.pitr.sealing import Sealer
from chalicelib.pitr.versions import KeyVersions
from chalicelib.pitr.walnames import DEFAULT_SEGMENT_SIZE, Segment, format_lsn, parse_lsn

# A server started on DIR after the restore writes pg_control (and postmaster.pid) with its own clock; the label's
# stop time is the backup worker's. Allow this much disagreement between the two clocks before calling it a start.
CLOCK_SKEW = timedelta(seconds=60)
# pg_control's DBState (src/include/catalog/pg_control.h, unchanged since 9.x)
SHUT_DOWN, SHUT_DOWN_IN_RECOVERY, IN_ARCHIVE_RECOVERY, IN_PRODUCTION = 1, 2, 5, 6
_START = re.compile(r"^START WAL LOCATION: ([0-9A-Fa-f]+/[0-9A-Fa-f]+) \(file ([0-9A-F]{24})\)$", re.M)
_CHECKPOINT = re.compile(r"^CHECKPOINT LOCATION: ([0-9A-Fa-f]+/[0-9A-Fa-f]+)$", re.M)
_FROM = re.compile(r"^BACKUP FROM: (\w+)$", re.M)
_LABEL = re.compile(r"^LABEL: (.*)$", re.M)
# what chalicelib.physical.start gives pg_backup_start as the label, before the set id
BACKUP_LABEL_PREFIX = "pg-lifeboat "
UNSIGNED_LABEL = (
    "UNSIGNED: the backup worker does not sign backup labels; this one matched its snapshot set (backup id, target,"
    " snapshot ids, AWS's creation times)"
)
MARKERS = ("recovery.signal", "standby.signal", "backup_label", "tablespace_map")


@dataclass(frozen=True)
class SnapshotLabel:
    """What the app-consistent bracket stored for a set (chalicelib.physical.backup_mode.BackupLabel.document),
    with the facts recovery needs read out of PostgreSQL's label text."""

    set_id: BackupId
    server_version_num: int
    start_lsn: str
    stop_lsn: str
    checkpoint_lsn: str
    timeline: int
    segment_size: int
    from_standby: bool
    labelfile: str
    spcmapfile: str
    stopped_at: datetime
    snapshot_ids: frozenset[str]

    @property
    def major(self) -> int:
        return self.server_version_num // 10000


def parse_set_id(text: str, target: str) -> BackupId:
    """The set id (`snapshot:<target>:<stamp>`, as `lifeboat list` and the restore API show it) of `target`."""
    bid = BackupId.parse(text)
    if bid.kind != "snapshot" or bid.database:
        raise BadRequestError(
            f"--snapshot-set {text!r} is not a snapshot set id (snapshot:<target>:<YYYYMMDDTHHMMSSZ>)"
        )
    if bid.target != target:
        raise BadRequestError(
            f"snapshot set {text} belongs to target {bid.target!r}, not {target!r}: recover {bid.target} with it, or"
            f" give a set of {target} (lifeboat list {target})"
        )
    return bid


def segment_size_of(lsn: int, name: str) -> int:
    """The WAL segment size for which the segment holding `lsn` is called `name` (the label's START WAL LOCATION
    line); 16 MiB where several sizes fit (an LSN in the first MiB). Pure."""
    fits = [
        size
        for size in (1 << p for p in range(20, 31))
        if Segment.containing(lsn, int(name[:8], 16), size).name == name
    ]
    if not fits:
        raise IntegrityError(f"the backup label's start location {format_lsn(lsn)} is not in segment {name}")
    return DEFAULT_SEGMENT_SIZE if DEFAULT_SEGMENT_SIZE in fits else fits[0]


def parse_label(doc: Mapping[str, Any], set_id: BackupId) -> SnapshotLabel:
    """A stored label document, checked against the set it is stored for. Pure."""
    where = f"the backup label of {set_id}"
    if doc.get("backup_id") != str(set_id) or doc.get("target") != set_id.target:
        raise IntegrityError(f"{where} names {doc.get('backup_id')!r} of target {doc.get('target')!r}: refusing it")
    text = str(doc.get("labelfile") or "")
    start, checkpoint = _START.search(text), _CHECKPOINT.search(text)
    if not start or not checkpoint or not doc.get("stop_lsn") or not doc.get("stopped_at"):
        raise IntegrityError(f"{where} lacks the start, checkpoint or stop location, or the stop time: refusing it")
    start_lsn = parse_lsn(start.group(1))
    stopped_at = datetime.fromisoformat(str(doc["stopped_at"]))
    from_line = _FROM.search(text)
    return SnapshotLabel(
        set_id=set_id,
        server_version_num=int(doc.get("server_version_num") or 0),
        start_lsn=format_lsn(start_lsn),
        stop_lsn=format_lsn(parse_lsn(str(doc["stop_lsn"]))),
        checkpoint_lsn=format_lsn(parse_lsn(checkpoint.group(1))),
        timeline=int(start.group(2)[:8], 16),
        segment_size=segment_size_of(start_lsn, start.group(2)),
        from_standby=bool(from_line and from_line.group(1) == "standby"),
        labelfile=text,
        spcmapfile=str(doc.get("spcmapfile") or ""),
        stopped_at=stopped_at if stopped_at.tzinfo else stopped_at.replace(tzinfo=UTC),
        snapshot_ids=frozenset(str(s) for s in doc.get("snapshot_ids") or ()),
    )


def read_label_document(store: BackupStore, prefix: str, set_id: BackupId) -> tuple[dict[str, Any], datetime | None]:
    """The set's label document at the first version of its key (written once: a later PUT over it is not believed),
    and when S3 stored that version (None without versioning)."""
    key = label_key(prefix, set_id.target, set_id.stamp)
    versions = KeyVersions.of(store)
    raw: bytes | None = None
    stored_at: datetime | None = None
    if versions is not None:
        first, _ = versions.first(key)
        if first is not None:
            got = versions.read(key, first.version_id)
            raw, stored_at = got.data, got.last_modified
    elif store.head(key) is not None:
        raw = store.get_bytes(key)
    if raw is None:
        raise NotFoundError(
            f"snapshot set {set_id} has no backup label at s3://{store.bucket}/{key}: only a set taken with"
            " physical.app_consistent has one (without it the set is crash-consistent: restore it as a snapshot,"
            " with no point-in-time recovery)"
        )
    try:
        doc = json.loads(raw)
    except ValueError:
        raise IntegrityError(f"the backup label of {set_id} (s3://{store.bucket}/{key}) is not JSON") from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"the backup label of {set_id} (s3://{store.bucket}/{key}) is not a JSON object")
    return doc, stored_at


def check_label_names_set(label: SnapshotLabel) -> None:
    """The label text's `LABEL:` line (what pg_backup_start was given: chalicelib.physical.start passes
    `pg-lifeboat <set id>`) names this set: a genuine label of another set copied over is refused. Pure."""
    found = _LABEL.search(label.labelfile)
    expected = f"{BACKUP_LABEL_PREFIX}{label.set_id}"
    if found is None or found.group(1).strip() != expected:
        named = repr(found.group(1).strip()) if found else "nothing"
        raise IntegrityError(
            f"the backup label of {label.set_id} says LABEL {named}, not {expected!r}: it is another backup's label;"
            " not a base"
        )


def check_taken_before_stop(label: SnapshotLabel, snap: SnapshotSet) -> None:
    """Backup mode ended (stopped_at) after AWS created every snapshot of the set (StartTime, which no caller
    chooses): a label stopped earlier, paired with a later snapshot, would let recovery stop before changes the
    snapshot already holds. Pure."""
    created = [(m.created, m.resource_id) for m in snap.members if m.created is not None]
    if not created or len(created) != len(snap.members):
        raise IntegrityError(f"{snap.backup_id}: AWS gives no creation time for a snapshot of it; not a base")
    last_at, last_id = max(created)
    if label.stopped_at < last_at:
        raise IntegrityError(
            f"the backup label of {label.set_id} says backup mode ended at {label.stopped_at.isoformat()}, before AWS"
            f" created snapshot {last_id} ({last_at.isoformat()}): the snapshot may hold changes from"
            " after the label's stop point (a label paired with a later snapshot); not a base"
        )


def believed_label(
    snap: SnapshotSet, document: Mapping[str, Any], label_uri: str, sealer: Sealer | None, stored_at: datetime | None
) -> tuple[SnapshotLabel, str]:
    """The set's label and its signature status when the set and its first-version label document (stored at
    `label_uri`) agree; IntegrityError (or ConflictError/NotFoundError from choose_set) saying why not. The one
    check of `lifeboat recover --snapshot-set` and the restore API's plan (chalicelib.restore.wal_recovery)."""
    if snap.state != "available" or snap.copy_of is not None:
        copy = (
            " (a copy: AWS's creation time of a copy is the copy's, so its label cannot be tied to when the source was"
            " taken; recover from the set in its source region)"
            if snap.copy_of
            else ""
        )
        raise IntegrityError(f"{snap.backup_id} in {snap.region} is {snap.state}{copy}: not a base")
    if snap.slot_mismatch:
        raise IntegrityError(snap.slot_mismatch)
    if snap.label_uri != label_uri:
        raise IntegrityError(f"{snap.backup_id} has no backup label tag naming {label_uri}")
    label = parse_label(document, BackupId.parse(snap.backup_id))
    check_label_names_set(label)
    choose_set(label, [snap])  # its snapshots are exactly the label's
    check_taken_before_stop(label, snap)
    if "signature" not in document:
        return label, UNSIGNED_LABEL
    if sealer is None:
        return label, "NOT_CHECKED: settings.signing_key_id is not set"
    return label, str(sealer.check(dict(document), f"backup label {label_uri}", label.stopped_at, stored_at)["status"])


def as_base(label: SnapshotLabel) -> BaseBackup:
    """The label's facts in the shape recovery checks a base by (recover.wal_problems, check_major). It started no
    later than its slot (gaps recorded after the slot count against it) and is consistent once backup mode ended."""
    return BaseBackup(
        target=label.set_id.target,
        backup_id=str(label.set_id),
        started_at=label.set_id.stamp,
        finished_at=label.stopped_at,
        server_version_num=label.server_version_num,
        timeline=label.timeline,
        start_lsn=label.start_lsn,
        end_lsn=label.stop_lsn,
        segment_size=label.segment_size,
        tar_size=0,
        tar_sha256="",
        objects=[],
        backup_label=label.labelfile,
        kind="snapshot",
    )


def check_goal(label: SnapshotLabel, goal: RecoveryTarget) -> None:
    """The set is consistent only once backup mode ended: an earlier target is refused. Pure."""
    if goal.time is not None and goal.time < label.stopped_at:
        raise BadRequestError(
            f"--time {goal.time.isoformat()} is before snapshot set {label.set_id}'s backup ended"
            f" ({label.stopped_at.isoformat()}): its data is consistent only from then on; choose a later time,"
            " or an earlier set (lifeboat list)"
        )
    if goal.lsn is not None and parse_lsn(goal.lsn) < parse_lsn(label.stop_lsn):
        raise BadRequestError(
            f"--lsn {goal.lsn} is before snapshot set {label.set_id}'s backup ended (LSN {label.stop_lsn}):"
            " choose a later LSN, or an earlier set"
        )


def _sources(found: SnapshotSet) -> frozenset[str]:
    """The snapshots a set stands for: its members, or for a copy the snapshots they are copies of."""
    return frozenset(m.tags.get(COPY_OF_TAG, m.resource_id) for m in found.members)


def choose_set(label: SnapshotLabel, found: Sequence[SnapshotSet]) -> SnapshotSet:
    """The complete set (or complete copy of it) whose snapshots are exactly the ones the label records. Pure."""
    matching = [s for s in found if _sources(s) == label.snapshot_ids]
    complete = [s for s in matching if s.state == "available"]
    if complete:
        return complete[0]
    if matching:
        states = ", ".join(f"{s.state} in {s.region}" for s in matching)
        raise ConflictError(f"snapshot set {label.set_id} is not complete ({states}): wait until it is available")
    if found:
        seen = sorted({r for s in found for r in _sources(s)})
        raise ConflictError(
            f"the snapshots of set {label.set_id} ({', '.join(seen)}) are not the ones its backup label records"
            f" ({', '.join(sorted(label.snapshot_ids))}): one was deleted or added, and the set cannot be restored"
            " as one"
        )
    raise NotFoundError(
        f"no snapshot of set {label.set_id} found (deleted by retention?): lifeboat list {label.set_id.target}"
        " shows the sets that exist"
    )


def find_sets(svc: SnapshotServices, physical: Physical, set_id: BackupId) -> tuple[list[SnapshotSet], list[str]]:
    """The set's snapshots, grouped, in the source region and the copy region (either may be the one restored, and
    one region may be down); and why a region could not be listed."""
    regions = [svc.source_region(physical), *([physical.copy_to_region] if physical.copy_to_region else [])]
    found: list[SnapshotSet] = []
    failures: list[str] = []
    for region in regions:
        try:
            found += group_sets(EBS.describe(svc, region, {SET_TAG: [str(set_id)]}))
        except LifeboatError as exc:
            failures.append(f"{region}: {exc}")
    return [s for s in found if s.target == set_id.target and s.slot == set_id.stamp], failures
