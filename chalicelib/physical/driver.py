"""What every kind of snapshot can do (`Driver`: list, tag, copy, delete), and AWS errors as advice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.adapters.aws_errors import error_code, error_message
from chalicelib.errors import SnapshotError
from chalicelib.physical.model import SnapshotKind, SnapshotResource, SnapshotServices, SnapshotSet

QUOTA_CODES = ("SnapshotQuotaExceeded", "SnapshotQuotaExceededFault", "SnapshotLimitExceeded")
DENIED_CODES = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError")


class Driver:
    """One kind of snapshot (RDS instance, Aurora cluster, EBS): `chalicelib.physical.rds` and `.ebs`."""

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


def utc(value: Any) -> datetime | None:
    """A time from an AWS response, in UTC (None when it is missing)."""
    return value.astimezone(UTC) if isinstance(value, datetime) else None
