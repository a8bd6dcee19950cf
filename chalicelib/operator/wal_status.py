"""`lifeboat status` for a target with a `wal` section: its recoverable window (chalicelib.pitr.window, read as
RecoverableWindow.as_dict) judged at `now`, one lane of the target's row (chalicelib.operator.status):

- FAILING: the window is broken (a WAL gap after the newest usable base: later times cannot be restored until a new
  base backup), or a gap and no usable base at all;
- NEVER: nothing restorable yet (no base backup, or none whose WAL is archived);
- STALE: the latest restorable time (the newest WAL's upload) is older than 2 x wal.flush_seconds + STALE_MARGIN:
  the receiver uploads the open segment every flush_seconds while WAL is written, so it has stopped, or cannot
  upload. A server that writes no WAL at all (idle) does not move the window either: it shows STALE too;
- OK otherwise.
`wal_verdict` is pure (facts and a clock in); `wal_facts` reads the bucket.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from chalicelib.adapters.s3 import BackupStore
from chalicelib.operator.humanize import age, short
from chalicelib.pitr.window import gather_window

WalStatus = Literal["OK", "NEVER", "STALE", "FAILING"]
STALE_MARGIN = timedelta(minutes=5)  # an upload's retries, S3's clock against this machine's


@dataclass(frozen=True)
class WalFacts:
    window: dict[str, Any]  # RecoverableWindow.as_dict()
    flush_seconds: int


@dataclass(frozen=True)
class WalView:
    """What the status row shows of the window at `now`."""

    earliest: datetime | None
    latest: datetime | None  # the latest restorable time (the window's end: before a gap when broken)
    latest_age: timedelta | None
    newest_base: str | None  # the newest base backup recovery can start from
    newest_base_at: datetime | None  # when it finished
    newest_base_age: timedelta | None
    broken: bool
    gaps: int

    def as_json(self) -> dict[str, Any]:
        def iso(when: datetime | None) -> str | None:
            return None if when is None else when.isoformat()

        def seconds(age: timedelta | None) -> float | None:
            return None if age is None else age.total_seconds()

        return {
            "earliest": iso(self.earliest),
            "latest_restorable": iso(self.latest),
            "latest_age_seconds": seconds(self.latest_age),
            "newest_base": self.newest_base,
            "newest_base_finished_at": iso(self.newest_base_at),
            "newest_base_age_seconds": seconds(self.newest_base_age),
            "broken": self.broken,
            "gaps": self.gaps,
        }


def _when(value: Any) -> datetime | None:
    return datetime.fromisoformat(str(value)) if value else None


def stale_after(flush_seconds: int) -> timedelta:
    return 2 * timedelta(seconds=flush_seconds) + STALE_MARGIN


def wal_verdict(facts: WalFacts, now: datetime) -> tuple[WalStatus, list[str], WalView]:
    """The lane's status, its problems, and the view (the module's docstring). Pure."""
    window = facts.window
    spans = window.get("spans") or []
    latest = _when(window.get("restorable_until"))
    newest = spans[-1] if spans else None
    newest_at = _when(newest["from"]) if newest else None
    view = WalView(
        earliest=_when(window.get("earliest")),
        latest=latest,
        latest_age=None if latest is None else now - latest,
        newest_base=newest["base"] if newest else None,
        newest_base_at=newest_at,
        newest_base_age=None if newest_at is None else now - newest_at,
        broken=bool(window.get("broken")),
        gaps=len(window.get("gaps") or []),
    )
    take = f"take a base backup (lifeboat base-backup {window.get('target')})"
    if view.broken:
        after = f" after {newest['ended_by_gap']}" if newest and newest.get("ended_by_gap") else ""
        until = f"; restorable only until {short(latest)}" if latest else ""
        return "FAILING", [f"the WAL window is broken by a gap{after}{until}: {take}"], view
    if newest is None or latest is None:
        unusable = "; ".join(f"{k}: {v}" for k, v in (window.get("unusable_bases") or {}).items())
        return "NEVER", [f"nothing restorable from WAL yet ({unusable or 'no base backup'}): {take}"], view
    if view.latest_age is not None and view.latest_age > stale_after(facts.flush_seconds):
        return (
            "STALE",
            [
                f"the latest restorable time is {short(latest)}, {age(view.latest_age)} ago (more than 2 x"
                f" wal.flush_seconds {facts.flush_seconds}s + {age(STALE_MARGIN)}): is wal-stream running and"
                " uploading?"
            ],
            view,
        )
    return "OK", [], view


def wal_facts(store: BackupStore, prefix: str, target: str, flush_seconds: int) -> WalFacts:
    return WalFacts(gather_window(store, prefix, target).as_dict(), flush_seconds)


def wal_note(view: WalView) -> str:
    """The window in one line for the human table."""
    if view.latest is None or view.earliest is None:
        return "  wal: nothing restorable yet"
    assert view.latest_age is not None
    base = ""
    if view.newest_base_at is not None and view.newest_base_age is not None:
        base = f"; newest base {short(view.newest_base_at)} ({age(view.newest_base_age)} ago)"
    broken = " BROKEN" if view.broken else ""
    return (
        f"  wal: restorable {short(view.earliest)} .. {short(view.latest)} ({age(view.latest_age)} ago){broken}{base}"
    )
