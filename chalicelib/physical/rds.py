"""RDS instance snapshots and Aurora cluster snapshots: one driver, two sets of API names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.adapters.aws_errors import error_code, error_message
from chalicelib.config import Physical
from chalicelib.errors import SnapshotError
from chalicelib.physical.driver import QUOTA_CODES, Driver, aws_failure, share_failure, utc
from chalicelib.physical.model import SnapshotKind, SnapshotResource, SnapshotServices, SnapshotSet, State
from chalicelib.physical.names import BACKUP_SOURCE_TAG, copy_tags, tag_dict, tag_list
from chalicelib.physical.trust import Sources

RDS_MANUAL_SNAPSHOT_QUOTA = 100

_RDS_STATES: dict[str, State] = {
    "available": "available",
    "failed": "failed",
    "error": "failed",
    "incompatible-restore": "failed",
    "deleting": "deleting",
}


@dataclass(frozen=True)
class RdsDriver(Driver):
    """RDS instance snapshots and Aurora cluster snapshots differ only in their API's names."""

    kind: SnapshotKind
    noun: str
    describe: str
    list_key: str
    id_key: str
    arn_key: str
    encrypted_key: str
    create: str
    source_param: str  # also where describe names the snapshot's source
    source_noun: str
    exists_code: str
    source_missing: tuple[str, ...]
    source_busy: tuple[str, ...]
    copy_op: str
    copy_source_param: str
    copy_target_param: str
    delete_op: str
    gone_codes: tuple[str, ...]
    share_op: str
    quota_name: str
    quota: int = RDS_MANUAL_SNAPSHOT_QUOTA

    def resource(self, item: Mapping[str, Any], region: str, tags: Mapping[str, str]) -> SnapshotResource:
        raw = str(item.get("Status", ""))
        return SnapshotResource(
            kind=self.kind,
            resource_id=str(item[self.id_key]),
            region=region,
            state=_RDS_STATES.get(raw, "creating"),
            raw_state=raw,
            tags=dict(tags),
            arn=item.get(self.arn_key),
            created=utc(item.get("SnapshotCreateTime")),
            size_gib=item.get("AllocatedStorage"),
            encrypted=bool(item.get(self.encrypted_key)),
            snapshot_type=str(item.get("SnapshotType", "manual")),
            engine_version=item.get("EngineVersion"),
            source_id=item.get(self.source_param),
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
                    res = self.resource(item, region, tag_dict(tags))
                    if res.managed:
                        found.append(res)
        except (ClientError, BotoCoreError) as exc:
            raise aws_failure(exc, f"listing {self.noun}s", region, f"rds:{self.describe_action}") from exc
        return found

    @property
    def describe_action(self) -> str:
        return iam_action(self.describe)

    def start(
        self,
        svc: SnapshotServices,
        source_id: str,
        identifier: str,
        tags: Mapping[str, str],
        region: str,
        managed_count: int,
    ) -> Literal["STARTED", "EXISTS"]:
        """Ask RDS for the snapshot: STARTED, or EXISTS when the identifier is taken (a duplicate delivery)."""
        rds = svc.client_for("rds", region)
        try:
            getattr(rds, self.create)(**{self.id_key: identifier, self.source_param: source_id}, Tags=tag_list(tags))
        except (ClientError, BotoCoreError) as exc:
            if error_code(exc) == self.exists_code:
                return "EXISTS"
            raise self._start_failure(exc, source_id, identifier, region, managed_count) from exc
        return "STARTED"

    def _start_failure(
        self, exc: ClientError | BotoCoreError, source_id: str, identifier: str, region: str, managed_count: int
    ) -> SnapshotError:
        code = error_code(exc)
        if code in QUOTA_CODES:
            return SnapshotError(
                f"RDS refused {self.noun} {identifier}: the manual snapshot quota of the account in {region} is"
                f" used up (by default {self.quota} manual {self.noun}s per region; {managed_count} of them are"
                f" pg-lifeboat's for this target). Delete snapshots that are no longer needed (`lifeboat prune"
                f" --dry-run` shows what the retention policy would remove) or ask AWS Service Quotas for a"
                f" higher '{self.quota_name}' quota."
            )
        if code in self.source_missing:
            return SnapshotError(
                f"{self.source_param} {source_id!r} does not exist in {region}: fix the"
                f" target's physical section (id and region)"
            )
        if code in self.source_busy:
            return SnapshotError(
                f"{source_id} in {region} cannot be snapshotted now ({error_message(exc)});"
                " the delivery will be retried"
            )
        hint = f"rds:{self.create} (and {source_id} must carry the tag {BACKUP_SOURCE_TAG}=true)"
        return aws_failure(exc, f"creating {self.noun} {identifier}", region, hint)

    def sources(self, svc: SnapshotServices, physical: Physical, region: str) -> Sources:
        source = physical.db_instance_id if self.kind == "db" else physical.db_cluster_id
        return Sources(frozenset({source} if source else ()), f"{self.source_noun} {source}", case_sensitive=False)

    def tag(self, svc: SnapshotServices, members: Sequence[SnapshotResource], tags: Mapping[str, str]) -> None:
        for m in members:
            if not m.arn:
                continue
            try:
                svc.client_for("rds", m.region).add_tags_to_resource(ResourceName=m.arn, Tags=tag_list(tags))
            except (ClientError, BotoCoreError) as exc:
                raise aws_failure(exc, f"tagging {m.resource_id}", m.region, "rds:AddTagsToResource") from exc

    def delete(self, svc: SnapshotServices, member: SnapshotResource) -> None:
        try:
            getattr(svc.client_for("rds", member.region), self.delete_op)(**{self.id_key: member.resource_id})
        except (ClientError, BotoCoreError) as exc:
            if error_code(exc) not in self.gone_codes:
                raise aws_failure(exc, f"deleting {self.noun} {member.resource_id}", member.region) from exc

    def copy(self, svc: SnapshotServices, snap: SnapshotSet, dest: str, kms_key_id: str | None) -> list[str]:
        rds = svc.client_for("rds", dest)
        started = []
        for m in snap.members:
            kwargs: dict[str, Any] = {
                self.copy_source_param: m.ref,
                self.copy_target_param: m.resource_id,
                "SourceRegion": m.region,
                "Tags": tag_list(copy_tags(m.tags, m.ref)),
            }
            if m.encrypted:
                if not kms_key_id:
                    raise SnapshotError(
                        f"{m.resource_id} is encrypted: copying it to {dest} needs a KMS key in {dest}; set the"
                        f" target's physical.copy_kms_key_id (key ARN or alias in {dest})"
                    )
                kwargs["KmsKeyId"] = kms_key_id  # RDS rejects a KmsKeyId for an unencrypted source
            try:
                getattr(rds, self.copy_op)(**kwargs)
            except (ClientError, BotoCoreError) as exc:
                if error_code(exc) == self.exists_code:
                    continue  # an earlier sweep started it
                raise aws_failure(exc, f"copying {m.resource_id} to {dest}", dest, f"rds:{self.copy_op}") from exc
            started.append(m.resource_id)
        return started

    def share(self, svc: SnapshotServices, members: Sequence[SnapshotResource], account: str) -> None:
        """The snapshot's `restore` attribute: the account may restore it, or copy it into its own account.

        Only encrypted snapshots: IAM has no condition on the values of rds:ModifyDB(Cluster)SnapshotAttribute, so
        the sweeper's role could share any managed snapshot with anyone, even publicly ("all"); an encrypted one is
        of use only to accounts its key policy names (and RDS never makes one public). Sharing only encrypted ones
        keeps the legitimate use inside what the key bounds."""
        unencrypted = [m.resource_id for m in members if not m.encrypted]
        if unencrypted:
            raise SnapshotError(
                f"{', '.join(unencrypted)} is not encrypted: pg-lifeboat shares only encrypted RDS snapshots with the"
                f" vault account {account} (IAM cannot limit with whom an RDS snapshot is shared; a customer managed"
                " key whose policy names the vault can). Encrypt the DB (a restore from an encrypted copy) or remove"
                " settings.vault_account_id"
            )
        for m in members:
            try:
                getattr(svc.client_for("rds", m.region), self.share_op)(
                    **{self.id_key: m.resource_id}, AttributeName="restore", ValuesToAdd=[account]
                )
            except (ClientError, BotoCoreError) as exc:
                raise share_failure(exc, m, account, f"rds:{iam_action(self.share_op)}") from exc


def iam_action(operation: str) -> str:
    """boto3's operation name as IAM names the action: modify_db_snapshot_attribute -> ModifyDBSnapshotAttribute."""
    return "".join(p.capitalize() for p in operation.split("_")).replace("Db", "DB")


RDS_INSTANCE = RdsDriver(
    kind="db",
    noun="DB snapshot",
    describe="describe_db_snapshots",
    list_key="DBSnapshots",
    id_key="DBSnapshotIdentifier",
    arn_key="DBSnapshotArn",
    encrypted_key="Encrypted",
    create="create_db_snapshot",
    source_param="DBInstanceIdentifier",
    source_noun="DB instance",
    exists_code="DBSnapshotAlreadyExists",
    source_missing=("DBInstanceNotFound", "DBInstanceNotFoundFault"),
    source_busy=("InvalidDBInstanceState", "InvalidDBInstanceStateFault"),
    copy_op="copy_db_snapshot",
    copy_source_param="SourceDBSnapshotIdentifier",
    copy_target_param="TargetDBSnapshotIdentifier",
    delete_op="delete_db_snapshot",
    gone_codes=("DBSnapshotNotFound", "DBSnapshotNotFoundFault"),
    share_op="modify_db_snapshot_attribute",
    quota_name="Manual DB instance snapshots",
)
AURORA_CLUSTER = RdsDriver(
    kind="cluster",
    noun="DB cluster snapshot",
    describe="describe_db_cluster_snapshots",
    list_key="DBClusterSnapshots",
    id_key="DBClusterSnapshotIdentifier",
    arn_key="DBClusterSnapshotArn",
    encrypted_key="StorageEncrypted",
    create="create_db_cluster_snapshot",
    source_param="DBClusterIdentifier",
    source_noun="DB cluster",
    exists_code="DBClusterSnapshotAlreadyExistsFault",
    source_missing=("DBClusterNotFoundFault", "DBClusterNotFound"),
    source_busy=("InvalidDBClusterStateFault", "InvalidDBClusterSnapshotStateFault"),
    copy_op="copy_db_cluster_snapshot",
    copy_source_param="SourceDBClusterSnapshotIdentifier",
    copy_target_param="TargetDBClusterSnapshotIdentifier",
    delete_op="delete_db_cluster_snapshot",
    gone_codes=("DBClusterSnapshotNotFoundFault",),
    share_op="modify_db_cluster_snapshot_attribute",
    quota_name="Manual DB cluster snapshots",
)
