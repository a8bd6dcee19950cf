"""How the operator's views write times, ages, sizes and trends for people (`lifeboat status`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def short(when: datetime) -> str:
    return f"{when.astimezone(UTC):%Y-%m-%d %H:%M}"


def age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    if days:
        return f"{sign}{days}d{hours}h" if hours else f"{sign}{days}d"
    minutes = rest // 60
    return f"{sign}{hours}h{minutes}m" if hours and minutes else f"{sign}{hours}h" if hours else f"{sign}{minutes}m"


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def trend(change: float | None) -> str:
    """+0.25 -> ` +25%`; None: nothing."""
    return "" if change is None else f" {change * 100:+.0f}%"


def duration(seconds: float | None, change: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s{trend(change)}"
