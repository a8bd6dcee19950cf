"""Which managed snapshot sets the pruner may believe (pure: no AWS).

Every tag of a snapshot is written by whoever created it: leaked backup-worker or snapshot-sweeper credentials can
create a managed snapshot (CreateDBSnapshot, CopyDBSnapshot, CreateSnapshot(s), CopySnapshot) with any slot, target
and copy-of tag. RDS has no snapshot lock, so a forged set that became a period's representative would make the
pruner delete the real one for good. A set is therefore believed only when what AWS says about it (not its tags)
fits what lifeboat would have made:
- in the target's source region: no `lifeboat:copy-of` tag (lifeboat copies only into copy_to_region), every member
  created at its slot and on the slot's UTC day (`SnapshotSet.slot_mismatch`), and a snapshot of the target's own
  DB instance, cluster or volumes (`Sources`);
- in copy_to_region: every member tagged `lifeboat:copy-of` a member of a believed source set of the same slot, as
  the same pruner run listed the source region before it deleted anything (and, RDS, of the same DB instance or
  cluster as that source: RDS keeps it on copies; an EBS copy's volume id is meaningless).
A set not believed is kept with the reason and left out of retention (`snapshots_to_keep`): leaving a set out can
only make others the newest of their periods, never push one out. The sweep copies no source that is not believed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from chalicelib.physical.model import UNTRUSTED, SnapshotResource, SnapshotSet
from chalicelib.physical.names import COPY_OF_TAG


@dataclass(frozen=True)
class Sources:
    """What a target's snapshots may be snapshots of: ids as AWS reports them in `SnapshotResource.source_id`."""

    ids: frozenset[str]
    what: str  # for people: "DB instance shop-db", "volumes vol-1, vol-2 of i-0db"
    case_sensitive: bool = True  # RDS identifiers are case-insensitive (stored in lowercase)

    def allows(self, source_id: str | None) -> bool:
        if source_id is None:
            return False
        if self.case_sensitive:
            return source_id in self.ids
        return source_id.lower() in {i.lower() for i in self.ids}


def source_distrust(snap: SnapshotSet, sources: Sources) -> str:
    """Why a set in the target's source region is not believed ("" when it is)."""
    if snap.copy_of is not None:
        return (
            f"tagged {COPY_OF_TAG} in the source region {snap.region}, where lifeboat makes no copies (it copies only"
            f" to copy_to_region){UNTRUSTED}"
        )
    if mismatch := snap.slot_mismatch:
        return mismatch
    strangers = [m for m in snap.members if not sources.allows(m.source_id)]
    if strangers:
        of = ", ".join(f"{m.resource_id} of {m.source_id or 'an unknown source'}" for m in strangers)
        return f"not a snapshot of the target's {sources.what} ({of}){UNTRUSTED}"
    return ""


def believed_refs(sources: Iterable[SnapshotSet]) -> dict[str, tuple[SnapshotSet, SnapshotResource]]:
    """What a copy may name in its copy-of tag: each member of the believed source sets, by ARN and by id."""
    refs: dict[str, tuple[SnapshotSet, SnapshotResource]] = {}
    for snap in sources:
        for member in snap.members:
            refs[member.ref] = refs[member.resource_id] = (snap, member)
    return refs


def copy_distrust(
    snap: SnapshotSet, believed: Mapping[str, tuple[SnapshotSet, SnapshotResource]], source_region: str
) -> str:
    """Why a set in copy_to_region is not believed ("" when it is): `believed` is `believed_refs` of the source
    region's believed sets as listed before any deletion."""
    for member in snap.members:
        ref = member.tags.get(COPY_OF_TAG)
        if ref is None:
            return f"{member.resource_id} is not tagged {COPY_OF_TAG}, and lifeboat makes only copies here{UNTRUSTED}"
        found = believed.get(ref)
        if found is None:
            return (
                f"{member.resource_id} names {ref} as its source, which is not a believed managed snapshot of the"
                f" target in {source_region}{UNTRUSTED}"
            )
        source_set, source = found
        if source_set.slot != snap.slot:
            return (
                f"{member.resource_id} claims slot {snap.slot:%Y-%m-%dT%H:%M:%SZ}, its source {source.resource_id}"
                f" is of {source_set.slot:%Y-%m-%dT%H:%M:%SZ}{UNTRUSTED}"
            )
        if member.kind != "ebs" and member.source_id != source.source_id:
            return (
                f"{member.resource_id} is a snapshot of {member.source_id}, its named source {source.resource_id}"
                f" of {source.source_id}{UNTRUSTED}"
            )
    return ""
