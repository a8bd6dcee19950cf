"""Pure decisions of the drills: which backup a drill restores, which targets are overdue (the dispatcher decides
which drills are due: chalicelib.scheduling.dispatch).

No AWS, no clock of their own: `now` and the random source are passed in (tests fix both).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from chalicelib.config import Config
from chalicelib.drills.model import DrillRecord
from chalicelib.drills.settings import Pick


@dataclass(frozen=True)
class Candidate:
    """A complete backup a drill may restore."""

    backup_id: str
    slot: datetime


def pick_backup(candidates: Iterable[Candidate], pick: Pick, now: datetime, rng: random.Random) -> Candidate | None:
    """`latest`: the newest; `oldest-kept`: the oldest still kept (the one most likely to have rotted); `random`:
    any kept one, uniformly. Backups whose slot lies in the future are never picked. None: nothing to pick."""
    usable = sorted((c for c in candidates if c.slot <= now), key=lambda c: (c.slot, c.backup_id))
    if not usable:
        return None
    if pick == "latest":
        return usable[-1]
    if pick == "oldest-kept":
        return usable[0]
    return rng.choice(usable)


def last_success(records: Sequence[DrillRecord], target: str) -> DrillRecord | None:
    done = [r for r in records if r.target == target and r.status == "SUCCEEDED"]
    return max(done, key=lambda r: r.finished_at or r.started_at, default=None)


def overdue(config: Config, records: Sequence[DrillRecord], now: datetime) -> dict[str, str]:
    """Targets with a drill section and no successful drill within their max_age_days: target -> why."""
    late: dict[str, str] = {}
    for target in config.targets:
        if target.drill is None:
            continue
        limit = timedelta(days=target.drill.max_age_days)
        last = last_success(records, target.name)
        if last is None:
            late[target.name] = f"no successful drill within {target.drill.max_age_days} days (none recorded)"
        elif now - (last.finished_at or last.started_at) > limit:
            when = (last.finished_at or last.started_at).isoformat()
            late[target.name] = f"the last successful drill finished {when}, over {target.drill.max_age_days} days ago"
    return late
