"""EBS snapshots of PostgreSQL on EC2: the volumes of an instance (one crash-consistent request) or listed
volumes. The snapshots of one slot form a set, found again by their tags."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.adapters.aws_errors import error_code, error_message
from chalicelib.config import Physical
from chalicelib.errors import LifeboatError, SnapshotError
from chalicelib.observability import logger
from chalicelib.physical.driver import QUOTA_CODES, Driver, aws_failure, share_failure, utc
from chalicelib.physical.model import SnapshotKind, SnapshotResource, SnapshotServices, SnapshotSet, State
from chalicelib.physical.names import (
    BACKUP_SOURCE_TAG,
    COPY_OF_TAG,
    MANAGED_TAG,
    MANAGED_VALUE,
    SLOT_TAG,
    TARGET_TAG,
    copy_tags,
    tag_dict,
    tag_list,
)
from chalicelib.physical.trust import Sources

EBS_SNAPSHOT_QUOTA = 100_000

_EBS_STATES: dict[str, State] = {"completed": "available", "error": "failed", "recoverable": "failed"}


def instance_specification(
    instance_id: str,
    root_volume: str | None,
    attached: Sequence[str],
    volume_ids: Sequence[str],
    exclude_boot_volume: bool,
) -> dict[str, Any]:
    """`InstanceSpecification` for `ec2.create_snapshots`.

    Without `volume_ids`: every volume of the instance, the boot volume as configured. With them: only
    those volumes (still in one crash-consistent request), by excluding every other attached one.
    """
    if not volume_ids:
        return {"InstanceId": instance_id, "ExcludeBootVolume": exclude_boot_volume}
    missing = sorted(set(volume_ids) - set(attached))
    if missing:
        raise SnapshotError(
            f"volume(s) {', '.join(missing)} are not attached to instance {instance_id}"
            f" (attached: {', '.join(attached) or 'none'}): fix physical.volume_ids"
        )
    spec: dict[str, Any] = {
        "InstanceId": instance_id,
        "ExcludeBootVolume": root_volume is not None and root_volume not in volume_ids,
    }
    excluded = sorted(v for v in attached if v != root_volume and v not in volume_ids)
    if excluded:
        spec["ExcludeDataVolumeIds"] = excluded
    return spec


class EbsDriver(Driver):
    kind: SnapshotKind = "ebs"
    lockable: ClassVar[bool] = True

    @staticmethod
    def resource(item: Mapping[str, Any], region: str) -> SnapshotResource:
        raw = str(item.get("State", "pending"))
        return SnapshotResource(
            kind="ebs",
            resource_id=str(item["SnapshotId"]),
            region=region,
            state=_EBS_STATES.get(raw, "creating"),
            raw_state=raw,
            tags=tag_dict(item.get("Tags")),
            created=utc(item.get("StartTime")),
            completed=utc(item.get("CompletionTime")),
            size_gib=item.get("VolumeSize"),
            encrypted=bool(item.get("Encrypted")),
            snapshot_type="manual",
            source_id=item.get("VolumeId"),
        )

    def describe(
        self, svc: SnapshotServices, region: str, filters: Mapping[str, Sequence[str]]
    ) -> list[SnapshotResource]:
        ec2 = svc.client_for("ec2", region)
        flt = [{"Name": f"tag:{k}", "Values": list(v)} for k, v in filters.items()]
        try:
            pages = ec2.get_paginator("describe_snapshots").paginate(OwnerIds=["self"], Filters=flt)
            return [self.resource(item, region) for page in pages for item in page.get("Snapshots", [])]
        except (ClientError, BotoCoreError) as exc:
            raise aws_failure(exc, "listing EBS snapshots", region, "ec2:DescribeSnapshots") from exc

    def list_managed(self, svc: SnapshotServices, region: str) -> list[SnapshotResource]:
        return self.describe(svc, region, {MANAGED_TAG: [MANAGED_VALUE]})

    def start(
        self, svc: SnapshotServices, physical: Physical, tags: Mapping[str, str], region: str, description: str
    ) -> list[SnapshotResource]:
        """Crash-consistent snapshots of the instance's volumes in one request, or one request per listed volume.

        Separate `create_snapshot` calls are not simultaneous: a data directory spread over several volumes
        is only consistent with the instance form or with `app_consistent` (backup mode plus archived WAL).
        If one of several volume snapshots cannot be started, the ones already started are deleted.
        """
        ec2 = svc.client_for("ec2", region)
        tag_spec = [{"ResourceType": "snapshot", "Tags": tag_list(tags)}]
        if physical.ec2_instance_id:
            spec = {"InstanceId": physical.ec2_instance_id, "ExcludeBootVolume": physical.exclude_boot_volume}
            try:
                if physical.volume_ids:
                    spec = self._instance_spec(ec2, physical)
                resp = ec2.create_snapshots(
                    InstanceSpecification=spec, Description=description, TagSpecifications=tag_spec
                )
            except (ClientError, BotoCoreError) as exc:
                self.discard(svc, region, tags, [])
                raise self._failure(exc, f"snapshotting the volumes of {physical.ec2_instance_id}", region) from exc
            snaps = [
                self.resource({**item, "Tags": item.get("Tags") or tag_list(tags)}, region)
                for item in resp.get("Snapshots", [])
            ]
            if not snaps:
                raise SnapshotError(
                    f"instance {physical.ec2_instance_id} has no volume to snapshot (only a boot"
                    " volume, and exclude_boot_volume is true?)"
                )
            return snaps
        made: list[SnapshotResource] = []
        try:
            for volume in physical.volume_ids:
                item = ec2.create_snapshot(VolumeId=volume, Description=description, TagSpecifications=tag_spec)
                made.append(self.resource({**item, "Tags": item.get("Tags") or tag_list(tags)}, region))
        except (ClientError, BotoCoreError) as exc:
            self.discard(svc, region, tags, made)
            raise self._failure(exc, f"snapshotting volume {volume}", region) from exc
        return made

    @staticmethod
    def _instance_spec(ec2: Any, physical: Physical) -> dict[str, Any]:
        assert physical.ec2_instance_id is not None
        root, attached = _attached_volumes(ec2, physical.ec2_instance_id)
        return instance_specification(
            physical.ec2_instance_id, root, attached, physical.volume_ids, physical.exclude_boot_volume
        )

    def sources(self, svc: SnapshotServices, physical: Physical, region: str) -> Sources:
        """The listed volumes, else the volumes attached to the instance now (a snapshot of a volume since detached
        is not believed: it is kept and reported)."""
        if physical.volume_ids or not physical.ec2_instance_id:
            return Sources(frozenset(physical.volume_ids), f"volumes {', '.join(physical.volume_ids)}")
        instance = physical.ec2_instance_id
        try:
            _, attached = _attached_volumes(svc.client_for("ec2", region), instance)
        except (ClientError, BotoCoreError) as exc:
            what = f"listing the volumes of {instance} (to check what its snapshots are of)"
            raise aws_failure(exc, what, region, "ec2:DescribeInstances") from exc
        return Sources(frozenset(attached), f"volumes of {instance} ({', '.join(attached) or 'none attached'})")

    @staticmethod
    def _failure(exc: ClientError | BotoCoreError, what: str, region: str) -> SnapshotError:
        code = error_code(exc)
        if code in QUOTA_CODES:
            return SnapshotError(
                f"{what}: EC2 refused a new snapshot in {region}: the account's EBS snapshot quota is used up (by"
                f" default {EBS_SNAPSHOT_QUOTA:,} per region). Delete snapshots that are no longer needed (`lifeboat"
                " prune --dry-run` shows what the retention policy would remove) or ask AWS Service Quotas for more."
            )
        if code == "SnapshotCreationPerVolumeRateExceeded":
            return SnapshotError(
                f"{what}: too many snapshots of one volume in a short time (EC2 allows one every"
                " 15 seconds per volume); the delivery will be retried"
            )
        if code.startswith(("InvalidInstanceID", "InvalidVolume")):
            return SnapshotError(f"{what}: {error_message(exc)}: fix the target's physical section (ids and region)")
        hint = f"ec2:CreateSnapshot(s) and ec2:CreateTags (and the source must carry {BACKUP_SOURCE_TAG}=true)"
        return aws_failure(exc, what, region, hint)

    def discard(
        self, svc: SnapshotServices, region: str, tags: Mapping[str, str], made: Sequence[SnapshotResource]
    ) -> None:
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
                logger.warning(
                    "could not delete a snapshot of a failed attempt; delete it by hand",
                    extra={"snapshot": m.resource_id, "error": str(exc)},
                )

    def tag(self, svc: SnapshotServices, members: Sequence[SnapshotResource], tags: Mapping[str, str]) -> None:
        if not members:
            return
        try:
            svc.client_for("ec2", members[0].region).create_tags(
                Resources=[m.resource_id for m in members], Tags=tag_list(tags)
            )
        except (ClientError, BotoCoreError) as exc:
            raise aws_failure(exc, f"tagging {members[0].resource_id}", members[0].region, "ec2:CreateTags") from exc

    def delete(self, svc: SnapshotServices, member: SnapshotResource) -> None:
        try:
            svc.client_for("ec2", member.region).delete_snapshot(SnapshotId=member.resource_id)
        except (ClientError, BotoCoreError) as exc:
            if error_code(exc) != "InvalidSnapshot.NotFound":
                raise aws_failure(exc, f"deleting EBS snapshot {member.resource_id}", member.region) from exc

    def copy(self, svc: SnapshotServices, snap: SnapshotSet, dest: str, kms_key_id: str | None) -> list[str]:
        ec2 = svc.client_for("ec2", dest)
        done = {r.tags.get(COPY_OF_TAG) for r in self.describe(svc, dest, {COPY_OF_TAG: [m.ref for m in snap.members]})}
        started = []
        for m in snap.members:
            if m.ref in done:
                continue
            kwargs: dict[str, Any] = {
                "SourceRegion": m.region,
                "SourceSnapshotId": m.resource_id,
                "Description": f"pg-lifeboat copy of {m.resource_id} ({snap.backup_id}) from {m.region}",
                "TagSpecifications": [{"ResourceType": "snapshot", "Tags": tag_list(copy_tags(m.tags, m.ref))}],
            }
            if kms_key_id:
                kwargs.update(Encrypted=True, KmsKeyId=kms_key_id)
            elif m.encrypted:
                logger.info(
                    "copying an encrypted EBS snapshot with the destination's default EBS key",
                    extra={"snapshot": m.resource_id, "region": dest},
                )
            try:
                ec2.copy_snapshot(**kwargs)
            except (ClientError, BotoCoreError) as exc:
                raise aws_failure(exc, f"copying {m.resource_id} to {dest}", dest, "ec2:CopySnapshot") from exc
            started.append(m.resource_id)
        return started

    def lock(self, svc: SnapshotServices, member: SnapshotResource, mode: str, days: int) -> datetime | None:
        """EBS snapshot lock. Sent as a duration (the sweeper's IAM policy requires ec2:SnapshotLockDuration of at
        least 30 days) without a cooling-off period, so a compliance lock is final at once. Locking a locked snapshot
        again sets its lock from now: the sweep only does so with the same duration, which extends it."""
        try:
            resp = svc.client_for("ec2", member.region).lock_snapshot(
                SnapshotId=member.resource_id, LockMode=mode, LockDuration=days
            )
        except (ClientError, BotoCoreError) as exc:
            what = f"locking EBS snapshot {member.resource_id} ({mode}, {days} days)"
            raise aws_failure(exc, what, member.region, "ec2:LockSnapshot on managed snapshots") from exc
        return utc(resp.get("LockExpiresOn"))

    def share(self, svc: SnapshotServices, members: Sequence[SnapshotResource], account: str) -> None:
        for m in members:
            try:
                svc.client_for("ec2", m.region).modify_snapshot_attribute(
                    SnapshotId=m.resource_id,
                    Attribute="createVolumePermission",
                    OperationType="add",
                    UserIds=[account],
                )
            except (ClientError, BotoCoreError) as exc:
                raise share_failure(exc, m, account, "ec2:ModifySnapshotAttribute") from exc


def _attached_volumes(ec2: Any, instance_id: str) -> tuple[str | None, list[str]]:
    """The instance's root volume (None: not an EBS root) and every attached EBS volume; SnapshotError if none."""
    reservations = ec2.describe_instances(InstanceIds=[instance_id]).get("Reservations", [])
    instances = [i for r in reservations for i in r.get("Instances", [])]
    if not instances:
        raise SnapshotError(f"instance {instance_id} not found")
    inst = instances[0]
    mappings = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in inst.get("BlockDeviceMappings", []) if "Ebs" in m}
    return mappings.get(inst.get("RootDeviceName", "")), list(mappings.values())


EBS = EbsDriver()
