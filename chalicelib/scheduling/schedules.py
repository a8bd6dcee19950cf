"""EventBridge schedule expressions (`cron(...)`, `rate(...)`), parsed once and evaluated as slots.

A *slot* is the exact time a schedule says a backup is due. The dispatcher asks each target's schedule
for the slots inside its tick window; the slot, not the wall clock of the run, names the backup, which
is what makes a duplicate delivery land on the same backup id.

EventBridge cron has six fields (minutes hours day-of-month month day-of-week year), numbers its
weekdays 1-7 from Sunday, and wants `?` in one of the two day fields. croniter evaluates five-field
cron with weekdays 0-6 from Sunday, so expressions are translated, not re-implemented.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_CRON = re.compile(r"^cron\((.+)\)$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ScheduleSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Schedule:
    expression: str
    _cron: str | None = None
    _years: frozenset[int] | None = None
    _period: timedelta | None = None

    @classmethod
    def parse(cls, expression: str) -> Schedule:
        text = expression.strip()
        if m := _RATE.match(text):
            value, unit = int(m.group(1)), m.group(2)
            if value < 1:
                raise ScheduleSyntaxError(f"{text!r}: the rate value must be a positive whole number")
            singular = unit.rstrip("s")
            if (value == 1) != (unit == singular):
                want = f"rate(1 {singular})" if value == 1 else f"rate({value} {singular}s)"
                raise ScheduleSyntaxError(f"{text!r}: EventBridge wants {want!r}")
            return cls(text, _period=timedelta(seconds=value * _UNIT_SECONDS[singular]))
        if m := _CRON.match(text):
            cron, years = _translate_cron(m.group(1), text)
            return cls(text, _cron=cron, _years=years)
        raise ScheduleSyntaxError(
            f"{text!r}: expected an EventBridge expression such as 'cron(0 3 * * ? *)' or 'rate(1 day)'"
        )

    @property
    def interval_hint(self) -> timedelta:
        """The longest gap expected between two slots (used for the dead-man's switch)."""
        if self._period is not None:
            return self._period
        start = datetime(2026, 1, 1, tzinfo=UTC)
        slots = list(self.slots(start, start + timedelta(days=400), limit=400))
        if len(slots) < 2:
            return timedelta(days=366)
        return max(b - a for a, b in itertools.pairwise(slots))

    def slots(self, after: datetime, until: datetime, limit: int = 10_000) -> Iterator[datetime]:
        """Slots s with after < s <= until, in order (UTC, second precision)."""
        after, until = after.astimezone(UTC), until.astimezone(UTC)
        count = 0
        if self._period is not None:
            period = int(self._period.total_seconds())
            first = (int((after - _EPOCH).total_seconds()) // period + 1) * period
            t = _EPOCH + timedelta(seconds=first)
            while t <= until and count < limit:
                yield t
                count += 1
                t += self._period
            return
        from croniter import croniter  # lazy: only the dispatcher evaluates cron

        it = croniter(self._cron, after)
        while count < limit:
            t = it.get_next(datetime)
            if t > until:
                return
            if self._years is None or t.year in self._years:
                yield t
                count += 1
            elif self._years and t.year > max(self._years):
                return


def _translate_cron(body: str, text: str) -> tuple[str, frozenset[int] | None]:
    fields = body.split()
    if len(fields) != 6:
        raise ScheduleSyntaxError(
            f"{text!r}: EventBridge cron has 6 fields (minutes hours day-of-month month day-of-week year),"
            f" got {len(fields)}"
        )
    minute, hour, dom, month, dow, year = fields
    if (dom == "?") == (dow == "?"):
        raise ScheduleSyntaxError(f"{text!r}: exactly one of day-of-month and day-of-week must be '?'")
    dom = "*" if dom == "?" else dom
    dow = "*" if dow == "?" else _shift_weekdays(dow, text)
    cron = f"{minute} {hour} {dom} {month} {dow}"
    from croniter import croniter

    if not croniter.is_valid(cron):
        raise ScheduleSyntaxError(f"{text!r}: not a valid cron expression")
    return cron, _parse_years(year, text)


def _shift_weekdays(field: str, text: str) -> str:
    """EventBridge weekdays 1-7 (SUN=1) to croniter's 0-6 (SUN=0); names stay as they are."""

    def day(token: str) -> str:
        if token.isdigit():
            n = int(token)
            if not 1 <= n <= 7:
                raise ScheduleSyntaxError(f"{text!r}: day-of-week numbers run from 1 (SUN) to 7 (SAT)")
            return str(n - 1)
        return token

    parts = []
    for item in field.split(","):
        if item.endswith("L") and item[:-1]:  # 6L: the last Friday of the month
            parts.append("L" + day(item[:-1]))
        elif "#" in item:
            d, nth = item.split("#", 1)
            parts.append(f"{day(d)}#{nth}")
        elif "/" in item:
            start, step = item.split("/", 1)
            parts.append(f"{'-'.join(day(x) for x in start.split('-'))}/{step}")
        else:
            parts.append("-".join(day(x) for x in item.split("-")))
    return ",".join(parts)


def _parse_years(field: str, text: str) -> frozenset[int] | None:
    if field == "*":
        return None
    years: set[int] = set()
    try:
        for item in field.split(","):
            if "-" in item:
                lo, hi = (int(x) for x in item.split("-", 1))
                years.update(range(lo, hi + 1))
            else:
                years.add(int(item))
    except ValueError:
        raise ScheduleSyntaxError(f"{text!r}: the year field must be '*', years, or year ranges") from None
    if not years or min(years) < 1970 or max(years) > 2199:
        raise ScheduleSyntaxError(f"{text!r}: years must lie between 1970 and 2199")
    return frozenset(years)
