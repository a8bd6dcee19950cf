"""What every kind of snapshot can do (`Driver`: list, tag, copy, delete, lock, share), and AWS errors as advice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.adapters.aws_errors import error_code, error_message
from chalicelib.config import Physical
from chalicelib.errors import SnapshotError
from chalicelib.physical.model import SnapshotKind, SnapshotResource, SnapshotServices, SnapshotSet
from chalicelib.physical.trust import Sources

QUOTA_CODES = ("SnapshotQuotaExceeded", "SnapshotQuotaExceededFault", "SnapshotLimitExceeded")
DENIED_CODES = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError")


class Driver:
    """One kind of snapshot (RDS instance, Aurora cluster, EBS): `chalicelib.physical.rds` and `.ebs`."""

    kind: SnapshotKind
    lockable: ClassVar[bool] = False

    def list_managed(self, svc: SnapshotServices, region: str) -> list[SnapshotResource]:
        """Every managed snapshot of this kind in a region (all targets)."""
        raise NotImplementedError

    def sources(self, svc: SnapshotServices, physical: Physical, region: str) -> Sources:
        """What the target's snapshots may be snapshots of (physical.trust); SnapshotError when that cannot be told."""
        raise NotImplementedError

    def tag(self, svc: SnapshotServices, members: Sequence[SnapshotResource], tags: Mapping[str, str]) -> None:
        raise NotImplementedError

    def delete(self, svc: SnapshotServices, member: SnapshotResource) -> None:
        raise NotImplementedError

    def copy(self, svc: SnapshotServices, snap: SnapshotSet, dest: str, kms_key_id: str | None) -> list[str]:
        raise NotImplementedError

    def lock(self, svc: SnapshotServices, member: SnapshotResource, mode: str, days: int) -> datetime | None:
        """Lock a snapshot against deletion for `days` in `mode` (governance, compliance); when the lock ends, if AWS
        says. Only kinds with `lockable` have a lock: EBS. RDS and Aurora snapshots have none (AWS offers no lock
        for them); IAM is their protection (only the pruner's role deletes, and only snapshots tagged managed)."""
        raise NotImplementedError

    def share(self, svc: SnapshotServices, members: Sequence[SnapshotResource], account: str) -> None:
        """Let another account use the snapshots (restore, create volumes): the vault account."""
        raise NotImplementedError


def aws_failure(exc: ClientError | BotoCoreError, what: str, region: str, hint: str = "") -> SnapshotError:
    """A botocore error as a SnapshotError saying what to fix."""
    code = error_code(exc)
    if code in DENIED_CODES:
        return SnapshotError(
            f"{what} in {region}: access denied ({code}): the function's role needs this permission"
            f"{' ' + hint if hint else ''}"
        )
    if "KMS" in code or "KmsKey" in code:
        return SnapshotError(
            f"{what} in {region}: KMS refused the key ({code}: {error_message(exc)}): check"
            " physical.copy_kms_key_id (a key in the destination region) and its key policy"
        )
    if code:
        return SnapshotError(f"{what} in {region} failed: {code}: {error_message(exc)}")
    return SnapshotError(f"{what} in {region} failed: {type(exc).__name__}: {exc}")


def share_failure(
    exc: ClientError | BotoCoreError, member: SnapshotResource, account: str, action: str
) -> SnapshotError:
    """Sharing refused, with what to fix: an encrypted snapshot is shareable only under a customer managed key."""
    what = f"sharing {member.resource_id} with the vault account {account}"
    if member.encrypted:
        return SnapshotError(
            f"{what} in {member.region} failed ({error_code(exc) or type(exc).__name__}: {error_message(exc) or exc}):"
            f" an encrypted snapshot can be shared only when its KMS key is a customer managed key (not the default"
            f" aws/ebs or aws/rds key) whose key policy lets account {account} use it (kms:Decrypt, kms:DescribeKey,"
            " kms:CreateGrant, kms:ReEncrypt*); copies are encrypted with physical.copy_kms_key_id"
        )
    return aws_failure(exc, what, member.region, action)


def utc(value: Any) -> datetime | None:
    """A time from an AWS response, in UTC (None when it is missing)."""
    return value.astimezone(UTC) if isinstance(value, datetime) else None
