"""Pure helpers of the benchmark: the order of the measurements and the statistics reported (no I/O).

Why these shapes: on a noisy 2-core machine, two runs of the same commit an hour apart differed by 40 %
when each variant was measured in a block (AAAAA BBBBB) and sub-second runs were dominated by fixed
costs. So every variant is measured once per round (A B C, then B C A, ...: drift and the position in a
round hit all of them alike), rounds are repeated, and a row reports its median with the spread; fixed
costs (measured on a near-empty database) are reported apart from throughput.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def rotated[T](variants: Sequence[T], rep: int) -> list[T]:
    """The variants in round `rep`'s order: A B C, then B C A, C A B, ... so no variant always runs first
    (after a cold cache) or right after the same neighbour."""
    n = len(variants)
    return [variants[(rep + i) % n] for i in range(n)] if n else []


def interleave[T](variants: Sequence[T], reps: int, rotate: bool = True) -> list[tuple[int, T]]:
    """(repetition, variant) in measuring order: every variant once per round, `reps` rounds."""
    if reps < 1:
        raise ValueError(f"repetitions must be at least 1, not {reps}")
    return [(rep, v) for rep in range(reps) for v in (rotated(variants, rep) if rotate else variants)]


def measuring_order[G, T](groups: Sequence[tuple[G, Sequence[T]]], reps: int) -> list[tuple[int, G, T]]:
    """(repetition, group, variant): round by round, each group (a dataset) with its variants rotated.

    A dataset's variants run back to back within a round, so the ratio of two of them in one round is
    taken under the same conditions; the next round comes only after every dataset had its turn.
    """
    if reps < 1:
        raise ValueError(f"repetitions must be at least 1, not {reps}")
    return [(rep, group, v) for rep in range(reps) for group, variants in groups for v in rotated(variants, rep)]


@dataclass(frozen=True)
class Spread:
    """Median of some measurements, with their range and interquartile range."""

    n: int
    median: float
    low: float
    high: float
    q1: float
    q3: float

    def text(self, fmt: str = "{:.2f}", unit: str = "") -> str:
        """ "2.41 s (2.30-2.62, n=5)": the median, then min-max; "n=1" alone when there is one value."""
        if self.n == 0:
            return "n/a"
        mid = fmt.format(self.median) + unit
        if self.n == 1:
            return f"{mid} (n=1)"
        return f"{mid} ({fmt.format(self.low)}-{fmt.format(self.high)}, n={self.n})"


def spread(values: Sequence[float]) -> Spread:
    clean = sorted(v for v in values if not math.isnan(v))
    if not clean:
        return Spread(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    if len(clean) == 1:
        v = clean[0]
        return Spread(1, v, v, v, v, v)
    q1, _, q3 = statistics.quantiles(clean, n=4, method="inclusive")
    return Spread(len(clean), statistics.median(clean), clean[0], clean[-1], q1, q3)


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """a/b per repetition (the two runs of a repetition are close in time, so drift cancels)."""
    return [a / b for a, b in zip(numerators, denominators, strict=False) if b > 0]


def net_throughput(size_bytes: float, seconds: float, fixed_seconds: float) -> float:
    """Bytes per second once the fixed cost (connections, round trips, claims: a near-empty run) is taken off.

    NaN when the run is not clearly longer than its fixed cost: the difference would be noise.
    """
    variable = seconds - fixed_seconds
    if math.isnan(variable) or variable <= 0.1 * seconds:
        return math.nan
    return size_bytes / variable


def rss_flatness(peak_big_kib: float, peak_small_kib: float) -> float:
    """Peak RSS of the big run over that of the small one (the goal: at most 1.1, memory does not grow)."""
    return peak_big_kib / peak_small_kib if peak_small_kib > 0 else math.nan


def cpu_ms_per_mb(cpu_seconds: float, size_bytes: float) -> float:
    return cpu_seconds * 1000 / (size_bytes / 1_000_000) if size_bytes > 0 else math.nan
