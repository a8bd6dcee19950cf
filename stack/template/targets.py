"""The targets watched by per-target dead-man's switches (`--target NAME=INTERVAL[:snapshot]`, `--targets FILE`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from stack.template.app_model import is_target_name
from stack.template.intrinsics import camel

INTERVAL = re.compile(r"^(\d+)([smhd]?)$")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_ALARM_WINDOW = 7 * 86400  # CloudWatch: Period x EvaluationPeriods <= 7 days

# What counts as a successful backup, per kind: the EMF metric (dimensions service, target), and the
# function whose log carries it (for the stack-wide switch). Snapshots count when the sweeper sees them done.
SUCCESS = {"logical": ("BackupSucceeded", "backup_worker"), "snapshot": ("SnapshotSucceeded", "snapshot_sweeper")}


@dataclass(frozen=True)
class WatchedTarget:
    name: str
    interval: int  # seconds between scheduled backups
    kind: str = "logical"  # or "snapshot"

    @property
    def window(self) -> int:
        """The alarm period: the interval plus a grace of a quarter of it (at least an hour), so a
        backup that starts or ends a little late does not page anyone. Whole minutes."""
        seconds = self.interval + max(3600, self.interval // 4)
        return min(MAX_ALARM_WINDOW, -(-seconds // 60) * 60)


def parse_interval(text: str) -> int:
    m = INTERVAL.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"{text!r} is not an interval (use e.g. 3600, 90m, 6h, 1d)")
    seconds = int(m.group(1)) * UNIT_SECONDS[m.group(2)]
    if seconds < 300 or seconds > 6 * 86400:
        raise ValueError(
            f"{text!r}: a watched interval runs from 5 minutes to 6 days (CloudWatch watches at most"
            " 7 days, grace included)"
        )
    return seconds


def parse_targets(pairs: list[str], targets_file: Path | None) -> list[WatchedTarget]:
    """`NAME=INTERVAL[:snapshot]` pairs and a JSON list of {"name", "interval", "kind"}."""
    raw: list[tuple[str, str, str]] = []
    for pair in pairs:
        name, sep, rest = pair.partition("=")
        interval, _, kind = rest.partition(":")
        if not sep:
            raise ValueError(f"--target {pair!r}: use NAME=INTERVAL[:snapshot], e.g. shop=1d")
        raw.append((name, interval, kind or "logical"))
    if targets_file:
        for item in json.loads(targets_file.read_text()):
            raw.append((item["name"], str(item["interval"]), item.get("kind", "logical")))
    watched: list[WatchedTarget] = []
    ids: dict[str, str] = {}
    for name, interval, kind in raw:
        if not is_target_name(name) or len(name) > 48:
            raise ValueError(f"{name!r} is not a target name")
        if kind not in SUCCESS:
            raise ValueError(f"{name}: kind {kind!r} is not one of {', '.join(SUCCESS)}")
        alarm_id = alarm_id_for(name, kind)
        if alarm_id in ids:
            raise ValueError(f"targets {ids[alarm_id]!r} and {name!r} ({kind}) map to the same alarm id")
        ids[alarm_id] = name
        watched.append(WatchedTarget(name, parse_interval(interval), kind))
    return watched


def alarm_id_for(target: str, kind: str) -> str:
    return f"{'NoBackupAlarm' if kind == 'logical' else 'NoSnapshotAlarm'}{camel(target)}"
