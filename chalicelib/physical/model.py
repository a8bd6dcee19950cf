"""What exists, and what the snapshot code is given: a snapshot as lifeboat sees it (`SnapshotResource`),
one backup in one region (`SnapshotSet`), and the injected services (`SnapshotServices`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from chalicelib.config import Config, Physical, Target
from chalicelib.errors import BadRequestError
from chalicelib.logical.catalog import BackupId
from chalicelib.observability import logger
from chalicelib.physical.names import (
    COPY_OF_TAG,
    LABEL_TAG,
    LOCKED_UNTIL_TAG,
    MANAGED_TAG,
    MANAGED_VALUE,
    OBSERVED_TAG,
    PINNED_TAG,
    SLOT_TAG,
    TARGET_TAG,
    TRIGGER_TAG,
    parse_slot_tag,
)
from chalicelib.scheduling.retention import POLICY_TAG, RETENTION_TAG

if TYPE_CHECKING:
    from chalicelib.adapters.dynamo import JobStore
    from chalicelib.adapters.postgres import CredentialResolver
    from chalicelib.adapters.s3 import BackupStore

SnapshotKind = Literal["db", "cluster", "ebs"]
State = Literal["creating", "available", "failed", "deleting"]
ClientFactory = Callable[[str, str], Any]
# How far AWS's creation time of a snapshot may lie from its slot tag: a scheduled run starts at its slot, late by
# a queue backlog at most; more than this, or on another UTC day than the slot's, and the slot tag (written by whoever
# created the snapshot) is not trusted (SnapshotSet.slot_mismatch).
SLOT_EARLY = timedelta(minutes=5)
SLOT_LATE = timedelta(days=1)
# What every reason a set is not trusted ends with: the pruner neither counts nor deletes it.
UNTRUSTED = ": not counted by retention and kept; an operator checks who made it, then deletes or pins it"


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
    # What it is a snapshot of, as AWS says (not a tag): the DB instance or cluster (RDS keeps it on copies), the
    # volume (EBS; a copy's is meaningless).
    source_id: str | None = None

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
    def trigger(self) -> str:
        """What started it: `schedule`, or an on-demand trigger (snapshots from before the tag: `schedule`)."""
        return self._tag(TRIGGER_TAG) or "schedule"

    @property
    def locked_until(self) -> datetime | None:
        """When the last lock of its members ends, as the sweep recorded it (None: no lock recorded)."""
        ends = [parse_slot_tag(m.tags.get(LOCKED_UNTIL_TAG)) for m in self.members]
        return max((end for end in ends if end is not None), default=None)

    @property
    def created(self) -> datetime | None:
        times = [m.created for m in self.members if m.created]
        return min(times) if times else None

    @property
    def slot_mismatch(self) -> str:
        """Why its slot tag cannot be trusted for a snapshot lifeboat created ("" when it can). The tag is written by
        whoever created the snapshot, so leaked worker credentials could create one tagged with an old slot (or a
        future one) to stand for a past period, and make the pruner delete the real snapshot of that period; AWS's
        creation time cannot be forged. Every member must have been created within [slot - SLOT_EARLY, slot +
        SLOT_LATE] and on the slot's UTC day, so that it cannot stand for an earlier day, week, month or year (a
        run late past midnight is kept, not counted). Copies are judged by their source instead (physical.trust)."""
        for member in self.members:
            created = member.created
            if created is None:
                return f"{member.resource_id}: AWS gives no creation time to check its slot tag against{UNTRUSTED}"
            if not (self.slot - SLOT_EARLY <= created <= self.slot + SLOT_LATE and created.date() == self.slot.date()):
                return (
                    f"slot tag {self.slot:%Y-%m-%dT%H:%M:%SZ} disagrees with the creation time of {member.resource_id}"
                    f" ({created:%Y-%m-%dT%H:%M:%SZ}){UNTRUSTED}"
                )
        return ""

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
                logger.warning(
                    "managed snapshot without a readable slot/target tag; ignored",
                    extra={"snapshot": res.resource_id, "region": res.region},
                )
            continue
        key = (res.kind, res.region, target, slot, COPY_OF_TAG in res.tags)
        groups.setdefault(key, []).append(res)
    sets = [
        SnapshotSet(kind, target, slot, region, tuple(sorted(members, key=lambda m: m.resource_id)))
        for (kind, region, target, slot, _), members in groups.items()
    ]
    return sorted(sets, key=lambda s: (s.slot, s.region, s.copy_of is None), reverse=True)


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


def physical_target(config: Config, target_name: str) -> tuple[Target, Physical]:
    """A target and its physical section; BadRequestError when it has none (nothing to snapshot or restore)."""
    target = config.target(target_name)
    if target.physical is None:
        raise BadRequestError(f"target {target.name!r} has no physical section: snapshots are not configured")
    return target, target.physical
