"""Names, keys and tags of managed snapshots (pure: no AWS).

The tags are the contract: `lifeboat:managed=true` (never a name pattern) is what sweep, prune and the
catalog act on, and the slot tag is what makes a duplicate delivery of a slot find the snapshot it made.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from chalicelib.config import Target
from chalicelib.errors import SnapshotError
from chalicelib.logical.catalog import BackupId, format_stamp
from chalicelib.scheduling.retention import POLICY_TAG, RETENTION_TAG

MANAGED_TAG = "lifeboat:managed"
MANAGED_VALUE = "true"
TARGET_TAG = "lifeboat:target"
SLOT_TAG = "lifeboat:slot"
SET_TAG = "lifeboat:set"
TRIGGER_TAG = "lifeboat:trigger"
OBSERVED_TAG = "lifeboat:observed"
COPY_OF_TAG = "lifeboat:copy-of"
LABEL_TAG = "lifeboat:backup-label"
# When the snapshot's lock ends (EBS snapshot lock, set by the sweep with OBSERVED_TAG): the pruner does not try to
# delete it before. A record for the pruner, not the lock itself: EC2 refuses the deletion whatever the tag says.
LOCKED_UNTIL_TAG = "lifeboat:locked-until"
PINNED_TAG = "pinned"
# The operator opts a source in to snapshots with BACKUP_SOURCE_TAG=true (on the RDS instance or Aurora cluster,
# the EC2 instance, or each listed volume): the backup worker's IAM policy snapshots nothing else.
BACKUP_SOURCE_TAG = "lifeboat:backup-source"
NAME_TAG = "Name"

SLOT_TAG_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
LABEL_NAME = "backup_label.json"

_RDS_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9-]*")


def slot_time(when: datetime) -> datetime:
    """A slot as stored everywhere: UTC, whole seconds."""
    return when.astimezone(UTC).replace(microsecond=0)


def format_slot_tag(slot: datetime) -> str:
    """A time as a tag value (slots, lock ends): UTC, whole seconds, `2026-11-29T03:00:00Z`."""
    return slot_time(slot).strftime(SLOT_TAG_FORMAT)


def parse_slot_tag(text: str | None) -> datetime | None:
    """A time tag (format_slot_tag) read back; None when missing or unreadable."""
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
    """A copy carries its source's tags (except the observation mark and the lock's end, which are per snapshot) and
    where it came from."""
    per_snapshot = (OBSERVED_TAG, LOCKED_UNTIL_TAG)
    tags = {k: v for k, v in source_tags.items() if k not in per_snapshot and not k.startswith("aws:")}
    tags[COPY_OF_TAG] = source_ref
    return tags


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    """Tags as AWS APIs take them: `[{"Key": ..., "Value": ...}]`."""
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def tag_dict(items: Sequence[Mapping[str, str]] | None) -> dict[str, str]:
    """Tags as AWS APIs return them, as a dict."""
    return {str(t["Key"]): str(t.get("Value", "")) for t in items or []}
