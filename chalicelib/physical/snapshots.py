"""Physical backups: RDS instance and Aurora cluster snapshots, and EBS snapshots of PostgreSQL on EC2.

Start, never wait. `start_snapshot` asks AWS for a snapshot and returns; `sweep` (on a schedule) looks at
what became of the snapshots, marks each finished one with `lifeboat:observed`, emits the metrics and
starts the cross-region copy; `prune` deletes what the GFS policy no longer needs. Every snapshot this
module creates carries `lifeboat:managed=true`, its target and its slot: that tag, never a name pattern,
is what `sweep`, `prune` and `list_snapshots` act on, so automated RDS snapshots and snapshots made by
anything else are never touched.

One backup is one RDS snapshot, or the EBS snapshots of one slot (a "set", sharing `lifeboat:set`),
per region. A duplicate delivery of a slot creates nothing: RDS identifiers are derived from the slot,
EBS sets are looked up by their slot tag first (and claimed in the jobs table when one is configured).

Clients come from an injected factory `client_for(service, region)`; nothing here builds a boto3 client.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from chalicelib import observability
from chalicelib.config import Config, Physical, RetentionPolicy, Target
from chalicelib.errors import BadRequestError, LifeboatError, SnapshotError
from chalicelib.logical.catalog import BackupId, format_stamp
from chalicelib.observability import logger
from chalicelib.scheduling.retention import POLICY_TAG, RETENTION_TAG, SnapshotFacts, classify, snapshots_to_keep

if TYPE_CHECKING:
    from chalicelib.adapters.dynamo import JobStore
    from chalicelib.adapters.postgres import CredentialResolver, Login
    from chalicelib.adapters.s3 import BackupStore

MANAGED_TAG = "lifeboat:managed"
MANAGED_VALUE = "true"
TARGET_TAG = "lifeboat:target"
SLOT_TAG = "lifeboat:slot"
SET_TAG = "lifeboat:set"
TRIGGER_TAG = "lifeboat:trigger"
OBSERVED_TAG = "lifeboat:observed"
COPY_OF_TAG = "lifeboat:copy-of"
LABEL_TAG = "lifeboat:backup-label"
PINNED_TAG = "pinned"
NAME_TAG = "Name"

SLOT_TAG_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
LABEL_NAME = "backup_label.json"
RDS_MANUAL_SNAPSHOT_QUOTA = 100
EBS_SNAPSHOT_QUOTA = 100_000
CLAIM_LEASE = timedelta(minutes=15)
DELETE_CONCURRENCY = 4  # deletions in flight per region while pruning

SnapshotKind = Literal["db", "cluster", "ebs"]
State = Literal["creating", "available", "failed", "deleting"]
ClientFactory = Callable[[str, str], Any]

_RDS_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9-]*")
_QUOTA_CODES = ("SnapshotQuotaExceeded", "SnapshotQuotaExceededFault", "SnapshotLimitExceeded")
_DENIED_CODES = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError")


# --- Names, keys and tags (pure) ----------------------------------------------------------------------------------

def slot_time(when: datetime) -> datetime:
    """A slot as stored everywhere: UTC, whole seconds."""
    return when.astimezone(UTC).replace(microsecond=0)


def format_slot_tag(slot: datetime) -> str:
    return slot_time(slot).strftime(SLOT_TAG_FORMAT)


def parse_slot_tag(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return slot_time(datetime.fromisoformat(text))
    except ValueError:
        return None


def validate_rds_identifier(name: str) -> str:
    """RDS rules for (cluster) snapshot identifiers: 1-255 letters, digits and hyphens, a letter first, no
    two hyphens in a row and no hyphen last. RDS stores identifiers in lowercase."""
    problems = []
    if not 1 <= len(name) <= 255:
        problems.append("1 to 255 characters")
    if not _RDS_IDENTIFIER.fullmatch(name):
        problems.append("letters, digits and hyphens only, starting with a letter")
    if "--" in name:
        problems.append("no two consecutive hyphens")
    if name.endswith("-"):
        problems.append("no trailing hyphen")
    if problems:
        raise SnapshotError(f"{name!r} is not a valid RDS snapshot identifier (needs {'; '.join(problems)})")
    return name


def snapshot_identifier(target: str, slot: datetime) -> str:
    """The deterministic name of a target's snapshot for a slot: `lifeboat-<target>-<yyyymmdd>-<hhmmss>`.

    Derived from the slot (not the time of the call), so a second delivery of the same slot asks RDS for
    the same identifier and gets DBSnapshotAlreadyExists instead of a second snapshot. The time part has a
    fixed width, so two (target, slot) pairs never give the same name. Lowercase, as RDS stores it.
    """
    s = slot_time(slot)
    return validate_rds_identifier(f"lifeboat-{target}-{s:%Y%m%d}-{s:%H%M%S}".lower())


def label_key(prefix: str, target: str, slot: datetime) -> str:
    """Where the backup_label/tablespace_map of an app-consistent snapshot set is kept in the backup bucket."""
    return f"{prefix}snapshots/{target}/{format_stamp(slot_time(slot))}/{LABEL_NAME}"


def snapshot_tags(target: Target, bid: BackupId, retention_class: str, trigger: str = "schedule") -> dict[str, str]:
    """The tags of a new snapshot: the target's own tags, then ours (which win)."""
    return {
        **target.tags,
        NAME_TAG: snapshot_identifier(target.name, bid.stamp),
        MANAGED_TAG: MANAGED_VALUE,
        TARGET_TAG: target.name,
        SLOT_TAG: format_slot_tag(bid.stamp),
        SET_TAG: str(bid),
        TRIGGER_TAG: trigger,
        RETENTION_TAG: retention_class,
        POLICY_TAG: target.retention,
    }


def copy_tags(source_tags: Mapping[str, str], source_ref: str) -> dict[str, str]:
    """A copy carries its source's tags (except the observation mark, which is per region) and where it came from."""
    tags = {k: v for k, v in source_tags.items() if k != OBSERVED_TAG and not k.startswith("aws:")}
    tags[COPY_OF_TAG] = source_ref
    return tags


def instance_specification(instance_id: str, root_volume: str | None, attached: Sequence[str],
                           volume_ids: Sequence[str], exclude_boot_volume: bool) -> dict[str, Any]:
    """`InstanceSpecification` for `ec2.create_snapshots`.

    Without `volume_ids`: every volume of the instance, the boot volume as configured. With them: only
    those volumes (still in one crash-consistent request), by excluding every other attached one.
    """
    if not volume_ids:
        return {"InstanceId": instance_id, "ExcludeBootVolume": exclude_boot_volume}
    missing = sorted(set(volume_ids) - set(attached))
    if missing:
        raise SnapshotError(f"volume(s) {', '.join(missing)} are not attached to instance {instance_id}"
                            f" (attached: {', '.join(attached) or 'none'}): fix physical.volume_ids")
    spec: dict[str, Any] = {"InstanceId": instance_id,
                            "ExcludeBootVolume": root_volume is not None and root_volume not in volume_ids}
    excluded = sorted(v for v in attached if v != root_volume and v not in volume_ids)
    if excluded:
        spec["ExcludeDataVolumeIds"] = excluded
    return spec


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _tag_dict(items: Sequence[Mapping[str, str]] | None) -> dict[str, str]:
    return {str(t["Key"]): str(t.get("Value", "")) for t in items or []}


def _utc(value: Any) -> datetime | None:
    return value.astimezone(UTC) if isinstance(value, datetime) else None


# --- What exists ----------------------------------------------------------------------------------------------------

_RDS_STATES: dict[str, State] = {"available": "available", "failed": "failed", "error": "failed",
                                 "incompatible-restore": "failed", "deleting": "deleting"}
_EBS_STATES: dict[str, State] = {"completed": "available", "error": "failed", "recoverable": "failed"}


@dataclass(frozen=True)
class SnapshotResource:
    """One snapshot as AWS describes it, reduced to what lifeboat needs."""

    kind: SnapshotKind
    resource_id: str
    region: str
    state: State
    raw_state: str
    tags: Mapping[str, str] = field(default_factory=dict)
    arn: str | None = None
    created: datetime | None = None
    completed: datetime | None = None
    size_gib: int | None = None
    encrypted: bool = False
    snapshot_type: str = "manual"
    engine_version: str | None = None

    @property
    def managed(self) -> bool:
        return self.tags.get(MANAGED_TAG) == MANAGED_VALUE and self.snapshot_type == "manual"

    @property
    def target(self) -> str | None:
        return self.tags.get(TARGET_TAG)

    @property
    def slot(self) -> datetime | None:
        return parse_slot_tag(self.tags.get(SLOT_TAG))

    @property
    def ref(self) -> str:
        """What a copy names as its source: the ARN where there is one."""
        return self.arn or self.resource_id


@dataclass(frozen=True)
class SnapshotSet:
    """One physical backup in one region: an RDS snapshot, or the EBS snapshots of one slot."""

    kind: SnapshotKind
    target: str
    slot: datetime
    region: str
    members: tuple[SnapshotResource, ...]

    @property
    def backup_id(self) -> str:
        return str(BackupId(self.target, self.slot, "snapshot"))

    @property
    def state(self) -> State:
        states = {m.state for m in self.members}
        order: tuple[State, ...] = ("failed", "creating", "deleting")
        return next((state for state in order if state in states), "available")

    def _tag(self, key: str) -> str | None:
        for m in self.members:
            if key in m.tags:
                return m.tags[key]
        return None

    @property
    def observed(self) -> bool:
        return all(OBSERVED_TAG in m.tags for m in self.members)

    @property
    def pinned(self) -> bool:
        return any(m.tags.get(PINNED_TAG, "").lower() == "true" for m in self.members)

    @property
    def copy_of(self) -> str | None:
        return self._tag(COPY_OF_TAG)

    @property
    def retention_class(self) -> str:
        return self._tag(RETENTION_TAG) or ""

    @property
    def retention_policy(self) -> str:
        return self._tag(POLICY_TAG) or ""

    @property
    def label_uri(self) -> str | None:
        return self._tag(LABEL_TAG)

    @property
    def created(self) -> datetime | None:
        times = [m.created for m in self.members if m.created]
        return min(times) if times else None

    @property
    def completed(self) -> datetime | None:
        times = [m.completed for m in self.members]
        return max(t for t in times if t) if times and all(times) else None

    @property
    def size_gib(self) -> int | None:
        sizes = [m.size_gib for m in self.members]
        return sum(s for s in sizes if s is not None) if sizes and all(s is not None for s in sizes) else None


def group_sets(resources: Sequence[SnapshotResource]) -> list[SnapshotSet]:
    """Managed snapshots grouped into backups, newest first. Snapshots without a readable slot are left out
    (and therefore never pruned)."""
    groups: dict[tuple[SnapshotKind, str, str, datetime, bool], list[SnapshotResource]] = {}
    for res in resources:
        slot, target = res.slot, res.target
        if not res.managed or slot is None or not target:
            if res.managed:
                logger.warning("managed snapshot without a readable slot/target tag; ignored",
                               extra={"snapshot": res.resource_id, "region": res.region})
            continue
        key = (res.kind, res.region, target, slot, COPY_OF_TAG in res.tags)
        groups.setdefault(key, []).append(res)
    sets = [SnapshotSet(kind, target, slot, region, tuple(sorted(members, key=lambda m: m.resource_id)))
            for (kind, region, target, slot, _), members in groups.items()]
    return sorted(sets, key=lambda s: (s.slot, s.region, s.copy_of is None), reverse=True)


# --- Services -------------------------------------------------------------------------------------------------------

def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class SnapshotServices:
    """What snapshots need, injected. `client_for(service, region)` returns a boto3 client (cached by the
    caller); `region` is where sources without `physical.region` live (the function's own region)."""

    config: Config
    client_for: ClientFactory
    region: str
    store: BackupStore | None = None
    credentials: CredentialResolver | None = None
    claims: JobStore | None = None
    clock: Callable[[], datetime] = _utcnow
    label_prefix: str | None = None  # default: settings.prefix

    def source_region(self, physical: Physical) -> str:
        return physical.region or self.region

    @property
    def prefix(self) -> str:
        return self.config.settings.prefix if self.label_prefix is None else self.label_prefix


def _record(name: str, value: float, unit: str, target: str | None = None) -> None:
    observability.record(name, value, unit, target)


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Message", "")) or str(exc)
    return str(exc)


def _aws_failure(exc: Exception, what: str, region: str, hint: str = "") -> SnapshotError:
    """A botocore error as a SnapshotError saying what to fix."""
    code = _error_code(exc)
    if code in _DENIED_CODES:
        return SnapshotError(f"{what} in {region}: access denied ({code}): the function's role needs this permission"
                             f"{' ' + hint if hint else ''}")
    if "KMS" in code or "KmsKey" in code:
        return SnapshotError(f"{what} in {region}: KMS refused the key ({code}: {_error_message(exc)}): check"
                             " physical.copy_kms_key_id (a key in the destination region) and its key policy")
    if code:
        return SnapshotError(f"{what} in {region} failed: {code}: {_error_message(exc)}")
    return SnapshotError(f"{what} in {region} failed: {type(exc).__name__}: {exc}")


# --- Drivers: one per kind of snapshot ------------------------------------------------------------------------------

class _Driver:
    kind: SnapshotKind

    def list_managed(self, svc: SnapshotServices, region: str) -> list[SnapshotResource]:
        """Every managed snapshot of this kind in a region (all targets)."""
        raise NotImplementedError

    def tag(self, svc: SnapshotServices, members: Sequence[SnapshotResource], tags: Mapping[str, str]) -> None:
        raise NotImplementedError

    def delete(self, svc: SnapshotServices, member: SnapshotResource) -> None:
        raise NotImplementedError

    def copy(self, svc: SnapshotServices, snap: SnapshotSet, dest: str, kms_key_id: str | None) -> list[str]:
        raise NotImplementedError


@dataclass(frozen=True)
class _RdsDriver(_Driver):
    """RDS instance snapshots and Aurora cluster snapshots differ only in their API's names."""

    kind: SnapshotKind
    noun: str
    describe: str
    list_key: str
    id_key: str
    arn_key: str
    encrypted_key: str
    create: str
    source_param: str
    exists_code: str
    source_missing: tuple[str, ...]
    source_busy: tuple[str, ...]
    copy_op: str
    copy_source_param: str
    copy_target_param: str
    delete_op: str
    gone_codes: tuple[str, ...]
    quota_name: str
    quota: int = RDS_MANUAL_SNAPSHOT_QUOTA

    def resource(self, item: Mapping[str, Any], region: str, tags: Mapping[str, str]) -> SnapshotResource:
        raw = str(item.get("Status", ""))
        return SnapshotResource(
            kind=self.kind, resource_id=str(item[self.id_key]), region=region,
            state=_RDS_STATES.get(raw, "creating"), raw_state=raw, tags=dict(tags),
            arn=item.get(self.arn_key), created=_utc(item.get("SnapshotCreateTime")),
            size_gib=item.get("AllocatedStorage"), encrypted=bool(item.get(self.encrypted_key)),
            snapshot_type=str(item.get("SnapshotType", "manual")), engine_version=item.get("EngineVersion"),
        )

    def list_managed(self, svc: SnapshotServices, region: str) -> list[SnapshotResource]:
        rds = svc.client_for("rds", region)
        found = []
        try:
            for page in rds.get_paginator(self.describe).paginate(SnapshotType="manual"):
                for item in page.get(self.list_key, []):
                    if item.get("SnapshotType", "manual") != "manual":
                        continue
                    tags = item.get("TagList")
                    if tags is None and item.get(self.arn_key):  # older API versions: one call per snapshot
                        tags = rds.list_tags_for_resource(ResourceName=item[self.arn_key]).get("TagList", [])
                    res = self.resource(item, region, _tag_dict(tags))
                    if res.managed:
                        found.append(res)
        except Exception as exc:
            raise _aws_failure(exc, f"listing {self.noun}s", region, f"rds:{self.describe_action}") from exc
        return found

    @property
    def describe_action(self) -> str:
        return "".join(p.capitalize() for p in self.describe.split("_")).replace("Db", "DB")

    def start(self, svc: SnapshotServices, source_id: str, identifier: str, tags: Mapping[str, str],
              region: str, managed_count: int) -> Literal["STARTED", "EXISTS"]:
        """Ask RDS for the snapshot: STARTED, or EXISTS when the identifier is taken (a duplicate delivery)."""
        rds = svc.client_for("rds", region)
        try:
            getattr(rds, self.create)(**{self.id_key: identifier, self.source_param: source_id}, Tags=_tag_list(tags))
        except Exception as exc:
            code = _error_code(exc)
            if code == self.exists_code:
                return "EXISTS"
            if code in _QUOTA_CODES:
                raise SnapshotError(
                    f"RDS refused {self.noun} {identifier}: the manual snapshot quota of the account in {region} is"
                    f" used up (by default {self.quota} manual {self.noun}s per region; {managed_count} of them are"
                    f" pg-lifeboat's for this target). Delete snapshots that are no longer needed (`lifeboat prune"
                    f" --dry-run` shows what the retention policy would remove) or ask AWS Service Quotas for a"
                    f" higher '{self.quota_name}' quota."
                ) from exc
            if code in self.source_missing:
                raise SnapshotError(f"{self.source_param} {source_id!r} does not exist in {region}: fix the"
                                    f" target's physical section (id and region)") from exc
            if code in self.source_busy:
                raise SnapshotError(f"{source_id} in {region} cannot be snapshotted now ({_error_message(exc)});"
                                    " the delivery will be retried") from exc
            raise _aws_failure(exc, f"creating {self.noun} {identifier}", region, f"rds:{self.create}") from exc
        return "STARTED"

    def tag(self, svc: SnapshotServices, members: Sequence[SnapshotResource], tags: Mapping[str, str]) -> None:
        for m in members:
            if not m.arn:
                continue
            try:
                svc.client_for("rds", m.region).add_tags_to_resource(ResourceName=m.arn, Tags=_tag_list(tags))
            except Exception as exc:
                raise _aws_failure(exc, f"tagging {m.resource_id}", m.region, "rds:AddTagsToResource") from exc

    def delete(self, svc: SnapshotServices, member: SnapshotResource) -> None:
        try:
            getattr(svc.client_for("rds", member.region), self.delete_op)(**{self.id_key: member.resource_id})
        except Exception as exc:
            if _error_code(exc) not in self.gone_codes:
                raise _aws_failure(exc, f"deleting {self.noun} {member.resource_id}", member.region) from exc

    def copy(self, svc: SnapshotServices, snap: SnapshotSet, dest: str, kms_key_id: str | None) -> list[str]:
        rds = svc.client_for("rds", dest)
        started = []
        for m in snap.members:
            kwargs: dict[str, Any] = {self.copy_source_param: m.ref, self.copy_target_param: m.resource_id,
                                      "SourceRegion": m.region, "Tags": _tag_list(copy_tags(m.tags, m.ref))}
            if m.encrypted:
                if not kms_key_id:
                    raise SnapshotError(
                        f"{m.resource_id} is encrypted: copying it to {dest} needs a KMS key in {dest}; set the"
                        f" target's physical.copy_kms_key_id (key ARN or alias in {dest})")
                kwargs["KmsKeyId"] = kms_key_id  # RDS rejects a KmsKeyId for an unencrypted source
            try:
                getattr(rds, self.copy_op)(**kwargs)
            except Exception as exc:
                if _error_code(exc) == self.exists_code:
                    continue  # an earlier sweep started it
                raise _aws_failure(exc, f"copying {m.resource_id} to {dest}", dest, f"rds:{self.copy_op}") from exc
            started.append(m.resource_id)
        return started


RDS_INSTANCE = _RdsDriver(
    kind="db", noun="DB snapshot", describe="describe_db_snapshots", list_key="DBSnapshots",
    id_key="DBSnapshotIdentifier", arn_key="DBSnapshotArn", encrypted_key="Encrypted", create="create_db_snapshot",
    source_param="DBInstanceIdentifier",
    exists_code="DBSnapshotAlreadyExists",
    source_missing=("DBInstanceNotFound", "DBInstanceNotFoundFault"),
    source_busy=("InvalidDBInstanceState", "InvalidDBInstanceStateFault"),
    copy_op="copy_db_snapshot", copy_source_param="SourceDBSnapshotIdentifier",
    copy_target_param="TargetDBSnapshotIdentifier", delete_op="delete_db_snapshot",
    gone_codes=("DBSnapshotNotFound", "DBSnapshotNotFoundFault"), quota_name="Manual DB instance snapshots",
)
AURORA_CLUSTER = _RdsDriver(
    kind="cluster", noun="DB cluster snapshot", describe="describe_db_cluster_snapshots",
    list_key="DBClusterSnapshots", id_key="DBClusterSnapshotIdentifier", arn_key="DBClusterSnapshotArn",
    encrypted_key="StorageEncrypted", create="create_db_cluster_snapshot",
    source_param="DBClusterIdentifier",
    exists_code="DBClusterSnapshotAlreadyExistsFault",
    source_missing=("DBClusterNotFoundFault", "DBClusterNotFound"),
    source_busy=("InvalidDBClusterStateFault", "InvalidDBClusterSnapshotStateFault"),
    copy_op="copy_db_cluster_snapshot", copy_source_param="SourceDBClusterSnapshotIdentifier",
    copy_target_param="TargetDBClusterSnapshotIdentifier", delete_op="delete_db_cluster_snapshot",
    gone_codes=("DBClusterSnapshotNotFoundFault",), quota_name="Manual DB cluster snapshots",
)


class _EbsDriver(_Driver):
    kind: SnapshotKind = "ebs"

    @staticmethod
    def resource(item: Mapping[str, Any], region: str) -> SnapshotResource:
        raw = str(item.get("State", "pending"))
        return SnapshotResource(
            kind="ebs", resource_id=str(item["SnapshotId"]), region=region, state=_EBS_STATES.get(raw, "creating"),
            raw_state=raw, tags=_tag_dict(item.get("Tags")), created=_utc(item.get("StartTime")),
            completed=_utc(item.get("CompletionTime")), size_gib=item.get("VolumeSize"),
            encrypted=bool(item.get("Encrypted")), snapshot_type="manual",
        )

    def describe(self, svc: SnapshotServices, region: str, filters: Mapping[str, Sequence[str]]
                 ) -> list[SnapshotResource]:
        ec2 = svc.client_for("ec2", region)
        flt = [{"Name": f"tag:{k}", "Values": list(v)} for k, v in filters.items()]
        try:
            pages = ec2.get_paginator("describe_snapshots").paginate(OwnerIds=["self"], Filters=flt)
            return [self.resource(item, region) for page in pages for item in page.get("Snapshots", [])]
        except Exception as exc:
            raise _aws_failure(exc, "listing EBS snapshots", region, "ec2:DescribeSnapshots") from exc

    def list_managed(self, svc: SnapshotServices, region: str) -> list[SnapshotResource]:
        return self.describe(svc, region, {MANAGED_TAG: [MANAGED_VALUE]})

    def start(self, svc: SnapshotServices, physical: Physical, tags: Mapping[str, str], region: str,
              description: str) -> list[SnapshotResource]:
        """Crash-consistent snapshots of the instance's volumes in one request, or one request per listed volume.

        Separate `create_snapshot` calls are not simultaneous: a data directory spread over several volumes
        is only consistent with the instance form or with `app_consistent` (backup mode plus archived WAL).
        If one of several volume snapshots cannot be started, the ones already started are deleted.
        """
        ec2 = svc.client_for("ec2", region)
        tag_spec = [{"ResourceType": "snapshot", "Tags": _tag_list(tags)}]
        if physical.ec2_instance_id:
            spec = {"InstanceId": physical.ec2_instance_id, "ExcludeBootVolume": physical.exclude_boot_volume}
            try:
                if physical.volume_ids:
                    spec = self._instance_spec(ec2, physical)
                resp = ec2.create_snapshots(InstanceSpecification=spec, Description=description,
                                            TagSpecifications=tag_spec)
            except LifeboatError:
                raise
            except Exception as exc:
                self.discard(svc, region, tags, [])
                raise self._failure(exc, f"snapshotting the volumes of {physical.ec2_instance_id}", region) from exc
            snaps = [self.resource({**item, "Tags": item.get("Tags") or _tag_list(tags)}, region)
                     for item in resp.get("Snapshots", [])]
            if not snaps:
                raise SnapshotError(f"instance {physical.ec2_instance_id} has no volume to snapshot (only a boot"
                                    " volume, and exclude_boot_volume is true?)")
            return snaps
        made: list[SnapshotResource] = []
        try:
            for volume in physical.volume_ids:
                item = ec2.create_snapshot(VolumeId=volume, Description=description, TagSpecifications=tag_spec)
                made.append(self.resource({**item, "Tags": item.get("Tags") or _tag_list(tags)}, region))
        except Exception as exc:
            self.discard(svc, region, tags, made)
            raise self._failure(exc, f"snapshotting volume {volume}", region) from exc
        return made

    @staticmethod
    def _instance_spec(ec2: Any, physical: Physical) -> dict[str, Any]:
        assert physical.ec2_instance_id is not None
        reservations = ec2.describe_instances(InstanceIds=[physical.ec2_instance_id]).get("Reservations", [])
        instances = [i for r in reservations for i in r.get("Instances", [])]
        if not instances:
            raise SnapshotError(f"instance {physical.ec2_instance_id} not found")
        inst = instances[0]
        mappings = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in inst.get("BlockDeviceMappings", []) if "Ebs" in m}
        return instance_specification(physical.ec2_instance_id, mappings.get(inst.get("RootDeviceName", "")),
                                      list(mappings.values()), physical.volume_ids, physical.exclude_boot_volume)

    @staticmethod
    def _failure(exc: Exception, what: str, region: str) -> SnapshotError:
        code = _error_code(exc)
        if code in _QUOTA_CODES:
            return SnapshotError(
                f"{what}: EC2 refused a new snapshot in {region}: the account's EBS snapshot quota is used up (by"
                f" default {EBS_SNAPSHOT_QUOTA:,} per region). Delete snapshots that are no longer needed (`lifeboat"
                " prune --dry-run` shows what the retention policy would remove) or ask AWS Service Quotas for more.")
        if code == "SnapshotCreationPerVolumeRateExceeded":
            return SnapshotError(f"{what}: too many snapshots of one volume in a short time (EC2 allows one every"
                                 " 15 seconds per volume); the delivery will be retried")
        if code.startswith(("InvalidInstanceID", "InvalidVolume")):
            return SnapshotError(f"{what}: {_error_message(exc)}: fix the target's physical section (ids and region)")
        return _aws_failure(exc, what, region, "ec2:CreateSnapshot(s) and ec2:CreateTags")

    def discard(self, svc: SnapshotServices, region: str, tags: Mapping[str, str],
                made: Sequence[SnapshotResource]) -> None:
        """Best-effort removal of a failed attempt's snapshots, so that a retry of the slot starts afresh.

        Looks them up by target and slot tag as well: a request whose response was lost (a timeout, an error
        after EC2 acted) still created snapshots that `made` does not know about. The original error matters
        more than one raised here, so problems are logged, not raised.
        """
        doomed = {m.resource_id: m for m in made}
        try:
            for m in self.describe(svc, region, {TARGET_TAG: [tags[TARGET_TAG]], SLOT_TAG: [tags[SLOT_TAG]]}):
                doomed.setdefault(m.resource_id, m)
        except LifeboatError as exc:
            logger.warning("could not look for snapshots of a failed attempt", extra={"error": str(exc)})
        for m in doomed.values():
            try:
                self.delete(svc, m)
            except LifeboatError as exc:
                logger.warning("could not delete a snapshot of a failed attempt; delete it by hand",
                               extra={"snapshot": m.resource_id, "error": str(exc)})

    def tag(self, svc: SnapshotServices, members: Sequence[SnapshotResource], tags: Mapping[str, str]) -> None:
        if not members:
            return
        try:
            svc.client_for("ec2", members[0].region).create_tags(Resources=[m.resource_id for m in members],
                                                                 Tags=_tag_list(tags))
        except Exception as exc:
            raise _aws_failure(exc, f"tagging {members[0].resource_id}", members[0].region, "ec2:CreateTags") from exc

    def delete(self, svc: SnapshotServices, member: SnapshotResource) -> None:
        try:
            svc.client_for("ec2", member.region).delete_snapshot(SnapshotId=member.resource_id)
        except Exception as exc:
            if _error_code(exc) != "InvalidSnapshot.NotFound":
                raise _aws_failure(exc, f"deleting EBS snapshot {member.resource_id}", member.region) from exc

    def copy(self, svc: SnapshotServices, snap: SnapshotSet, dest: str, kms_key_id: str | None) -> list[str]:
        ec2 = svc.client_for("ec2", dest)
        done = {r.tags.get(COPY_OF_TAG) for r in self.describe(svc, dest, {COPY_OF_TAG: [m.ref for m in snap.members]})}
        started = []
        for m in snap.members:
            if m.ref in done:
                continue
            kwargs: dict[str, Any] = {
                "SourceRegion": m.region, "SourceSnapshotId": m.resource_id,
                "Description": f"pg-lifeboat copy of {m.resource_id} ({snap.backup_id}) from {m.region}",
                "TagSpecifications": [{"ResourceType": "snapshot", "Tags": _tag_list(copy_tags(m.tags, m.ref))}],
            }
            if kms_key_id:
                kwargs.update(Encrypted=True, KmsKeyId=kms_key_id)
            elif m.encrypted:
                logger.info("copying an encrypted EBS snapshot with the destination's default EBS key",
                            extra={"snapshot": m.resource_id, "region": dest})
            try:
                ec2.copy_snapshot(**kwargs)
            except Exception as exc:
                raise _aws_failure(exc, f"copying {m.resource_id} to {dest}", dest, "ec2:CopySnapshot") from exc
            started.append(m.resource_id)
        return started


EBS = _EbsDriver()


def _driver(physical: Physical) -> _Driver:
    return {"rds_instance": RDS_INSTANCE, "aurora_cluster": AURORA_CLUSTER, "ebs": EBS}[physical.method]


class _Inventory:
    """Managed snapshots listed once per (kind, region) for the length of one sweep/prune/list call."""

    def __init__(self, svc: SnapshotServices) -> None:
        self.svc = svc
        self._cache: dict[tuple[SnapshotKind, str], list[SnapshotSet]] = {}

    def sets(self, driver: _Driver, region: str, target: str) -> list[SnapshotSet]:
        key = (driver.kind, region)
        if key not in self._cache:
            self._cache[key] = group_sets(driver.list_managed(self.svc, region))
        return [s for s in self._cache[key] if s.target == target]


def _physical(svc: SnapshotServices, target_name: str) -> tuple[Target, Physical]:
    target = svc.config.target(target_name)
    if target.physical is None:
        raise BadRequestError(f"target {target.name!r} has no physical section: snapshots are not configured")
    return target, target.physical


# --- Backup mode (app-consistent EBS snapshots) ---------------------------------------------------------------------

@dataclass
class BackupLabel:
    """What pg_backup_stop returns: to be written as backup_label (and tablespace_map) before starting a
    server from the snapshot. Recovery must replay WAL up to `stop_lsn`, so WAL archiving is required."""

    label: str
    server_version_num: int = 0
    start_lsn: str = ""
    stop_lsn: str = ""
    labelfile: str = ""
    spcmapfile: str = ""
    function: str = ""

    def document(self, **extra: Any) -> dict[str, Any]:
        return {"label": self.label, "server_version_num": self.server_version_num, "function": self.function,
                "start_lsn": self.start_lsn, "stop_lsn": self.stop_lsn, "labelfile": self.labelfile,
                "spcmapfile": self.spcmapfile, **extra}


def backup_mode_sql(server_version_num: int) -> tuple[str, str, str]:
    """(start, stop, name) statements of a non-exclusive backup for a server version."""
    if server_version_num >= 150000:
        return ("SELECT pg_backup_start(%s, fast => true)::text",
                "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(wait_for_archive => false)",
                "pg_backup_start")
    return ("SELECT pg_start_backup(%s, true, false)::text",
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)", "pg_start_backup")


def _backup_mode_error(exc: Exception, login: Login, step: str) -> SnapshotError:
    from chalicelib.adapters.pgtools import scrub

    text = scrub(str(exc).strip(), login.secrets)
    first = text.splitlines()[0] if text else type(exc).__name__
    advice = ""
    if "permission denied" in text:
        advice = (f": grant it to {login.user} (PostgreSQL 15+: GRANT EXECUTE ON FUNCTION pg_backup_start(text,"
                  " boolean), pg_backup_stop(boolean) TO ...; before 15: pg_start_backup/pg_stop_backup)")
    elif "wal_level" in text or "WAL level" in text:
        advice = ": set wal_level to replica (or logical) and restart the server"
    elif "recovery" in text:
        advice = ": point the connection at the primary, not a standby"
    return SnapshotError(f"{step} failed on {login.host}:{login.port} ({first}){advice}")


@contextmanager
def backup_mode(login: Login, label: str) -> Iterator[BackupLabel]:
    """Hold PostgreSQL in non-exclusive backup mode for the block, in one session.

    On leaving the block normally, the stop call's labelfile and spcmapfile are filled in. If the block
    raises, the session is closed without a stop call, which ends the backup on the server's side.
    """
    import psycopg

    from chalicelib.adapters.postgres import connect

    result = BackupLabel(label)
    conn = connect(login, autocommit=True)
    try:
        try:
            row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
            result.server_version_num = int(row[0]) if row else 0
            start, stop, result.function = backup_mode_sql(result.server_version_num)
            row = conn.execute(start, (label,)).fetchone()
            result.start_lsn = str(row[0]) if row else ""
        except psycopg.Error as exc:
            raise _backup_mode_error(exc, login, "starting backup mode") from None
        yield result
        try:
            row = conn.execute(stop).fetchone()
        except psycopg.Error as exc:
            raise _backup_mode_error(exc, login, "stopping backup mode") from None
        if row is None:
            raise SnapshotError(f"stopping backup mode on {login.host} returned nothing")
        result.stop_lsn, result.labelfile, result.spcmapfile = str(row[0]), str(row[1] or ""), str(row[2] or "")
    finally:
        conn.close()


# --- Starting a snapshot --------------------------------------------------------------------------------------------

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
        return {"status": self.status, "backup_id": self.backup_id, "method": self.method, "region": self.region,
                "resource_ids": list(self.resource_ids), "retention_class": self.retention_class,
                "reason": self.reason, "label_uri": self.label_uri}


def start_snapshot(svc: SnapshotServices, target_name: str, slot: datetime | None = None, *,
                   trigger: str = "schedule") -> SnapshotOutcome:
    """Start the physical backup of a target for a slot and return at once (the sweep observes completion).

    Returns SKIPPED when the slot's snapshot exists already (a duplicate delivery) or another attempt holds
    the slot's claim; raises SnapshotError (with what to fix) when AWS refuses.
    """
    target, physical = _physical(svc, target_name)
    slot = slot_time(slot or svc.clock())
    bid = BackupId(target.name, slot, "snapshot")
    region = svc.source_region(physical)
    driver = _driver(physical)
    logger.append_keys(target=target.name, backup_id=str(bid))
    try:
        sets = [s for s in _Inventory(svc).sets(driver, region, target.name) if s.copy_of is None]
        managed = sum(len(s.members) for s in sets)
        existing = next((s for s in sets if s.slot == slot), None)
        if existing is not None:
            logger.info("snapshot of this slot exists; nothing to do", extra={"state": existing.state})
            return SnapshotOutcome("SKIPPED", str(bid), physical.method, region,
                                   tuple(m.resource_id for m in existing.members), existing.retention_class,
                                   f"already exists ({existing.state})", existing.label_uri)
        claim_key = f"snapshot#{bid}"
        if svc.claims and not svc.claims.claim(claim_key, CLAIM_LEASE, detail={"trigger": trigger}):
            logger.info("another attempt holds or finished this slot; skipping")
            return SnapshotOutcome("SKIPPED", str(bid), physical.method, region, reason="claimed by another attempt")
        previous = next((s.slot for s in sets if s.slot < slot and s.state != "failed"), None)
        retention_class = classify(slot, previous, svc.config.policy_for(target)).value
        tags = snapshot_tags(target, bid, retention_class, trigger)
        try:
            outcome = _start(svc, target, physical, driver, bid, tags, region, managed, retention_class)
        except BaseException as exc:
            _record("SnapshotFailed", 1, "Count", target.name)
            logger.error("snapshot could not be started", extra={"error": str(exc),
                                                                  "error_code": getattr(exc, "code", "internal_error")})
            if svc.claims:
                svc.claims.finish(claim_key, "FAILED", {"error": str(exc)[:1000]})
            raise
        if svc.claims:
            svc.claims.finish(claim_key, "SUCCEEDED" if outcome.status == "STARTED" else "SKIPPED",
                              {"snapshots": ",".join(outcome.resource_ids)[:1000]})
        if outcome.status == "STARTED":
            _record("SnapshotStarted", 1, "Count", target.name)
            _record("ManagedSnapshots", managed + len(outcome.resource_ids), "Count", target.name)
            logger.info("snapshot started", extra={"snapshots": list(outcome.resource_ids), "region": region,
                                                   "retention": retention_class})
        return outcome
    finally:
        logger.remove_keys(["target", "backup_id"])


def _start(svc: SnapshotServices, target: Target, physical: Physical, driver: _Driver, bid: BackupId,
           tags: dict[str, str], region: str, managed: int, retention_class: str) -> SnapshotOutcome:
    description = f"pg-lifeboat {bid}"
    if isinstance(driver, _RdsDriver):
        if physical.app_consistent:
            logger.warning("app_consistent applies to EBS snapshots only; RDS snapshots are crash-consistent by design")
        source = physical.db_instance_id if driver is RDS_INSTANCE else physical.db_cluster_id
        assert source is not None
        identifier = snapshot_identifier(target.name, bid.stamp)
        status = driver.start(svc, source, identifier, tags, region, managed)
        if status == "EXISTS":
            logger.info("RDS reports the snapshot exists (a concurrent delivery); nothing to do")
            return SnapshotOutcome("SKIPPED", str(bid), physical.method, region, (identifier,), retention_class,
                                   "already exists")
        return SnapshotOutcome("STARTED", str(bid), physical.method, region, (identifier,), retention_class)
    assert isinstance(driver, _EbsDriver)
    if not physical.app_consistent:
        started = driver.start(svc, physical, tags, region, description)
        return SnapshotOutcome("STARTED", str(bid), physical.method, region, tuple(m.resource_id for m in started),
                               retention_class)
    if target.connection is None or svc.credentials is None or svc.store is None:
        raise SnapshotError(f"target {target.name!r}: app-consistent EBS snapshots need a connection, credentials"
                            " and a backup store (for the backup label)")
    key = label_key(svc.prefix, target.name, bid.stamp)
    uri = f"s3://{svc.store.bucket}/{key}"
    if len(uri) > 256:
        raise SnapshotError(f"{uri} is longer than a tag value may be (256): use a shorter settings.prefix")
    tags = {**tags, LABEL_TAG: uri}
    login = svc.credentials.login(target.connection)
    made: list[SnapshotResource] = []
    try:
        with backup_mode(login, f"pg-lifeboat {bid}") as label:
            made = driver.start(svc, physical, tags, region, description)
        document = label.document(backup_id=str(bid), target=target.name, slot=bid.stamp.isoformat(),
                                  region=region, snapshot_ids=[m.resource_id for m in made],
                                  stopped_at=svc.clock().isoformat())
        svc.store.put_bytes(key, json.dumps(document, indent=2).encode(), content_type="application/json")
    except BaseException:
        driver.discard(svc, region, tags, made)  # without its label an app-consistent set cannot be restored as one
        raise
    logger.info("backup mode bracket complete", extra={"start_lsn": label.start_lsn, "stop_lsn": label.stop_lsn})
    return SnapshotOutcome("STARTED", str(bid), physical.method, region, tuple(m.resource_id for m in made),
                           retention_class, label_uri=uri)


# --- Sweep: observe, report, copy -----------------------------------------------------------------------------------

@dataclass
class SweepReport:
    completed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    copies_started: list[str] = field(default_factory=list)
    copies_completed: list[str] = field(default_factory=list)
    managed: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def sweep(svc: SnapshotServices, targets: Sequence[str] | None = None) -> SweepReport:
    """Look at every managed snapshot not yet marked `lifeboat:observed` and report what became of it.

    Finished ones are tagged `lifeboat:observed=done` and counted (`SnapshotSucceeded`, `SnapshotDuration`:
    seconds from the snapshot's start to its completion time where AWS gives one — EBS — else to now, so it
    overstates RDS durations by up to one sweep interval); failed ones are tagged `=failed` and counted in
    `SnapshotFailed` (alarm on it). A newly finished source is copied to `copy_to_region` first: if the copy
    cannot be started the source stays unmarked and the next sweep tries again. Problems with one target are
    reported and do not stop the others.
    """
    report = SweepReport()
    inventory = _Inventory(svc)
    now = svc.clock()
    for target in svc.config.targets:
        if target.physical is None or (targets is not None and target.name not in targets):
            continue
        physical, driver = target.physical, _driver(target.physical)
        try:
            region = svc.source_region(physical)
            if physical.copy_to_region == region:
                raise SnapshotError(f"target {target.name!r}: copy_to_region {region} is the source's own region;"
                                    " choose another region or remove copy_to_region")
            sources = [s for s in inventory.sets(driver, region, target.name) if s.copy_of is None]
            report.managed[target.name] = sum(len(s.members) for s in sources)
            _record("ManagedSnapshots", report.managed[target.name], "Count", target.name)
            for snap in sources:
                if snap.observed:
                    continue
                _observe(svc, driver, physical, snap, now, report)
            if physical.copy_to_region:
                for snap in inventory.sets(driver, physical.copy_to_region, target.name):
                    if snap.copy_of is not None and not snap.observed:
                        _observe(svc, driver, physical, snap, now, report)
        except LifeboatError as exc:
            logger.error("sweep of a target failed", extra={"target": target.name, "error": str(exc)})
            _record("SnapshotSweepError", 1, "Count", target.name)
            report.errors.append(f"{target.name}: {exc}")
    return report


def _observe(svc: SnapshotServices, driver: _Driver, physical: Physical, snap: SnapshotSet, now: datetime,
             report: SweepReport) -> None:
    where = f"{snap.backup_id}@{snap.region}"
    extra = {"target": snap.target, "backup_id": snap.backup_id, "region": snap.region,
             "snapshots": [m.resource_id for m in snap.members]}
    if snap.state == "available":
        if snap.copy_of is None and physical.copy_to_region:
            try:
                started = driver.copy(svc, snap, physical.copy_to_region, physical.copy_kms_key_id)
            except LifeboatError as exc:
                _record("SnapshotFailed", 1, "Count", snap.target)
                logger.error("cross-region copy could not be started", extra={**extra, "error": str(exc)})
                report.errors.append(f"{where}: {exc}")
                return  # leave the source unmarked: the next sweep tries the copy again
            report.copies_started.extend(f"{r}@{physical.copy_to_region}" for r in started)
        driver.tag(svc, snap.members, {OBSERVED_TAG: "done"})
        seconds = max(0.0, ((snap.completed or now) - (snap.created or now)).total_seconds())
        if snap.copy_of is None:
            report.completed.append(where)
            _record("SnapshotSucceeded", 1, "Count", snap.target)
            _record("SnapshotDuration", seconds, "Seconds", snap.target)
        else:
            report.copies_completed.append(where)
            _record("SnapshotCopied", 1, "Count", snap.target)
            _record("SnapshotCopyDuration", seconds, "Seconds", snap.target)
        logger.info("snapshot complete", extra={**extra, "seconds": round(seconds, 1), "copy": snap.copy_of})
    elif snap.state == "failed":
        driver.tag(svc, snap.members, {OBSERVED_TAG: "failed"})
        report.failed.append(where)
        _record("SnapshotFailed", 1, "Count", snap.target)
        logger.error("snapshot failed", extra={**extra, "states": [m.raw_state for m in snap.members]})
    else:
        report.pending.append(where)


# --- Prune: GFS retention over managed snapshots --------------------------------------------------------------------

@dataclass(frozen=True)
class PruneDecision:
    backup_id: str
    region: str
    resource_ids: tuple[str, ...]
    reason: str
    copy: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"backup_id": self.backup_id, "region": self.region, "resource_ids": list(self.resource_ids),
                "reason": self.reason, "copy": self.copy}


@dataclass
class PruneReport:
    dry_run: bool
    kept: list[PruneDecision] = field(default_factory=list)
    deleted: list[PruneDecision] = field(default_factory=list)  # "would delete" when dry_run
    labels_deleted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "kept": [d.as_dict() for d in self.kept],
                "deleted": [d.as_dict() for d in self.deleted], "labels_deleted": self.labels_deleted,
                "errors": self.errors}


def prune(svc: SnapshotServices, dry_run: bool = False, targets: Sequence[str] | None = None) -> PruneReport:
    """Delete the managed snapshots the target's retention policy no longer keeps (see `snapshots_to_keep`),
    in the source region and in the copy region, each region judged on its own.

    Only snapshots tagged `lifeboat:managed=true` with this target's tag are considered: automated RDS
    snapshots and anything without the tag are never touched. Snapshots still being created, and failed
    ones the sweep has not reported yet, are left alone. With `dry_run` nothing is deleted and the report
    says what would be, and why. A label object in S3 goes with the last snapshot set that points to it.
    """
    report = PruneReport(dry_run)
    inventory = _Inventory(svc)
    now = svc.clock()
    for target in svc.config.targets:
        if target.physical is None or (targets is not None and target.name not in targets):
            continue
        physical, driver = target.physical, _driver(target.physical)
        policy = svc.config.policy_for(target)
        regions = [svc.source_region(physical)] + ([physical.copy_to_region] if physical.copy_to_region else [])
        kept_labels: set[str] = set()
        dropped_labels: set[str] = set()
        deleted, errors_before = 0, len(report.errors)
        for region in regions:
            try:
                sets = inventory.sets(driver, region, target.name)
            except LifeboatError as exc:
                report.errors.append(f"{target.name}@{region}: {exc}")
                kept_labels.add("*")  # cannot tell what is still referenced: keep every label
                continue
            doomed: list[tuple[SnapshotSet, PruneDecision]] = []
            for snap, keep_reason in _decide(sets, policy, now):
                decision = PruneDecision(snap.backup_id, region, tuple(m.resource_id for m in snap.members),
                                         keep_reason or _delete_reason(snap), snap.copy_of is not None)
                if keep_reason:
                    report.kept.append(decision)
                    if snap.label_uri:
                        kept_labels.add(snap.label_uri)
                elif dry_run:
                    report.deleted.append(decision)
                else:
                    doomed.append((snap, decision))
            with ThreadPoolExecutor(max_workers=DELETE_CONCURRENCY, thread_name_prefix="prune") as pool:
                failures = list(pool.map(_delete_set, repeat(svc), repeat(driver), [snap for snap, _ in doomed]))
            for (snap, decision), failure in zip(doomed, failures, strict=True):
                if failure:
                    report.errors.append(f"{snap.backup_id}@{region}: {failure}")
                    if snap.label_uri:
                        kept_labels.add(snap.label_uri)
                    continue
                report.deleted.append(decision)
                deleted += 1
                if snap.label_uri:
                    dropped_labels.add(snap.label_uri)
                logger.info("snapshot pruned", extra={"target": target.name, **decision.as_dict()})
        if deleted:
            _record("SnapshotsPruned", deleted, "Count", target.name)
        if len(report.errors) > errors_before:
            _record("SnapshotPruneError", len(report.errors) - errors_before, "Count", target.name)
        if "*" not in kept_labels:
            _delete_labels(svc, sorted(dropped_labels - kept_labels), report)
    return report


def _delete_set(svc: SnapshotServices, driver: _Driver, snap: SnapshotSet) -> str | None:
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
        else:
            facts.append(SnapshotFacts(snap.backup_id, snap.slot, snap.retention_class, snap.pinned,
                                       snap.state == "available"))
    keep = snapshots_to_keep(facts, policy, now)
    return [(snap, held.get(snap.backup_id) or keep.get(snap.backup_id, "")) for snap in sets]


def _delete_reason(snap: SnapshotSet) -> str:
    if snap.state == "failed":
        return "failed snapshot"
    return f"outside every retention window (slot {snap.slot:%Y-%m-%d %H:%M}, tagged {snap.retention_class or '-'})"


def _delete_labels(svc: SnapshotServices, uris: Sequence[str], report: PruneReport) -> None:
    if not uris or svc.store is None:
        return
    prefix = f"s3://{svc.store.bucket}/"
    keys = [u.removeprefix(prefix) for u in uris if u.startswith(prefix)]
    try:
        svc.store.delete(keys)
    except LifeboatError as exc:
        report.errors.append(f"deleting backup labels: {exc}")
        return
    report.labels_deleted.extend(keys)


# --- Catalog view ---------------------------------------------------------------------------------------------------

class SnapshotEntry(BaseModel):
    """A physical backup as `lifeboat list` shows it next to logical ones."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["snapshot"] = "snapshot"
    backup_id: str
    target: str
    method: str
    slot: datetime
    created_at: datetime | None = None
    status: Literal["SUCCEEDED", "IN_PROGRESS", "FAILED", "DELETING"]
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


_STATUS = {"available": "SUCCEEDED", "creating": "IN_PROGRESS", "failed": "FAILED", "deleting": "DELETING"}


def list_snapshots(svc: SnapshotServices, target: str, *, include_copies: bool = True) -> list[SnapshotEntry]:
    """The target's managed snapshots (source region, then copies), newest first."""
    tgt, physical = _physical(svc, target)
    driver = _driver(physical)
    inventory = _Inventory(svc)
    regions = [svc.source_region(physical)]
    if include_copies and physical.copy_to_region:
        regions.append(physical.copy_to_region)
    entries = []
    for region in regions:
        for snap in inventory.sets(driver, region, tgt.name):
            entries.append(SnapshotEntry(
                backup_id=snap.backup_id, target=snap.target, method=physical.method, slot=snap.slot,
                created_at=snap.created, status=_STATUS[snap.state], region=region,  # type: ignore[arg-type]
                resource_ids=[m.resource_id for m in snap.members], arns=[m.arn for m in snap.members if m.arn],
                size_gib=snap.size_gib, retention_class=snap.retention_class,
                retention_policy=snap.retention_policy, pinned=snap.pinned, copy_of=snap.copy_of,
                label_uri=snap.label_uri, engine_version=next((m.engine_version for m in snap.members), None),
            ))
    return sorted(entries, key=lambda e: (e.slot, e.copy_of is None), reverse=True)
