"""What `lifeboat check` reports (one CheckResult per check) and the services the checks use.

The services are the handlers' own (chalicelib.wiring builds them in chalicelib.operator.check): the same S3 store,
credential resolver and toolbox a backup uses, so a check that passes exercised the code the night will run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from chalicelib.adapters.pgtools import Toolbox
from chalicelib.adapters.postgres import CredentialResolver
from chalicelib.adapters.s3 import S3Store
from chalicelib.config import Config

if TYPE_CHECKING:
    from types_boto3_dynamodb import DynamoDBClient
    from types_boto3_s3 import S3Client
    from types_boto3_sqs import SQSClient

Status = Literal["ok", "FAIL", "skip"]


@dataclass(frozen=True)
class CheckResult:
    """One line of the report. `fix` says what to do when the check failed; a skipped check (it needs one that
    failed, or does not apply to this setup) is not a failure."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    target: str | None = None  # None: a check of the shared setup (configuration, bucket, table, queues)
    skipped: bool = False

    @property
    def status(self) -> Status:
        return "skip" if self.skipped else "ok" if self.ok else "FAIL"

    @property
    def label(self) -> str:
        return f"{self.target}: {self.name}" if self.target else self.name

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "target": self.target,
            "status": self.status,
            "ok": self.ok,
            "detail": self.detail,
            "fix": self.fix or None,
        }


def passed(name: str, detail: str, target: str | None = None) -> CheckResult:
    return CheckResult(name, True, detail, target=target)


def failed(name: str, detail: str, fix: str, target: str | None = None) -> CheckResult:
    return CheckResult(name, False, detail, fix, target)


def skipped(name: str, detail: str, target: str | None = None) -> CheckResult:
    return CheckResult(name, True, detail, target=target, skipped=True)


@dataclass(frozen=True)
class Report:
    """Every result, in the order they ran. `unusable`: the configuration (or the target asked for) could not be
    used at all, so nothing else was checked (exit code 2, like every command given a bad configuration)."""

    results: list[CheckResult]
    unusable: bool = False

    @property
    def ok(self) -> bool:
        return not self.unusable and all(r.ok for r in self.results)

    @property
    def exit_code(self) -> int:
        return 2 if self.unusable else 0 if self.ok else 1


@dataclass(frozen=True)
class CheckServices:
    """What the checks talk to. Clients of optional resources are None when the resource is not configured."""

    config: Config
    s3: S3Client
    store: S3Store
    credentials: CredentialResolver
    toolbox: Toolbox
    jobs_table: str | None = None
    dynamodb: DynamoDBClient | None = None
    # check name → (the variable that names the queue, its URL or None when unset)
    queues: Mapping[str, tuple[str, str | None]] = field(default_factory=dict)
    sqs: SQSClient | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
