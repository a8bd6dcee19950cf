"""The auditor's report: for every target with a drill section (or with drills recorded), its last successful drill,
its recovery times over the period (min / median / max), and its failures with their reasons and what followed
(the next successful drill: what fixed it). Pure: records in, rows and text out (CSV, JSON, Markdown).

A drill whose signed evidence does not verify (status UNVERIFIED, chalicelib.drills.evidence) counts as `unverified`,
never as a success, and is listed with the failures (code evidence_unverified) so an auditor sees it.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from chalicelib.drills.model import DrillRecord

Format = Literal["csv", "json", "md"]
COLUMNS = (
    "target",
    "drills",
    "succeeded",
    "failed",
    "unverified",
    "last_success",
    "last_success_backup",
    "recovery_min_s",
    "recovery_median_s",
    "recovery_max_s",
    "rto_s",
    "rto_exceeded",
)


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def target_rows(
    records: Sequence[DrillRecord], targets: Mapping[str, int | None], since: datetime
) -> list[dict[str, Any]]:
    """One row per target: the configured ones first, in order (`targets`: name -> its configured RTO), then any
    other with records in the period."""
    period = [r for r in records if r.started_at >= since and r.finished]
    names = list(dict.fromkeys([*targets, *sorted({r.target for r in period})]))
    rows = []
    for name in names:
        mine = sorted((r for r in period if r.target == name), key=lambda r: r.started_at)
        ok = [r for r in mine if r.status == "SUCCEEDED"]
        times = [r.recovery_seconds for r in ok if r.recovery_seconds is not None]
        last = ok[-1] if ok else None
        rows.append(
            {
                "target": name,
                "drills": len(mine),
                "succeeded": len(ok),
                "failed": sum(1 for r in mine if r.status == "FAILED"),
                "unverified": sum(1 for r in mine if r.status == "UNVERIFIED"),
                "last_success": (last.finished_at or last.started_at).isoformat() if last else None,
                "last_success_backup": last.backup_id if last else None,
                "recovery_min_s": _seconds(min(times)) if times else None,
                "recovery_median_s": _seconds(statistics.median(times)) if times else None,
                "recovery_max_s": _seconds(max(times)) if times else None,
                "rto_s": targets[name]
                if name in targets
                else next((r.rto_seconds for r in reversed(mine) if r.rto_seconds is not None), None),
                "rto_exceeded": sum(1 for r in ok if r.rto_met is False),
                "failures": _failures(mine),
            }
        )
    return rows


def _failures(mine: list[DrillRecord]) -> list[dict[str, Any]]:
    """Each failed drill, its reason, and the next successful drill after it (what shows it was fixed)."""
    out = []
    for i, r in enumerate(mine):
        if r.status not in ("FAILED", "UNVERIFIED"):
            continue
        fixed = next((n for n in mine[i + 1 :] if n.status == "SUCCEEDED"), None)
        out.append(
            {
                "drill_id": r.drill_id,
                "started_at": r.started_at.isoformat(),
                "backup_id": r.backup_id,
                "code": r.error.code if r.error else "",
                "reason": r.error.message if r.error else "",
                "fixed_by": fixed.drill_id if fixed else None,
                "fixed_at": (fixed.finished_at or fixed.started_at).isoformat() if fixed else None,
            }
        )
    return out


def render(rows: list[dict[str, Any]], fmt: Format, since: datetime, now: datetime) -> str:
    if fmt == "json":
        return json.dumps({"since": since.isoformat(), "generated_at": now.isoformat(), "targets": rows}, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([*COLUMNS, "failures"])
        for row in rows:
            reasons = " | ".join(f"{f['started_at']} {f['code']}: {f['reason'][:200]}" for f in row["failures"])
            writer.writerow([*("" if row[c] is None else row[c] for c in COLUMNS), reasons])
        return buf.getvalue()
    return _markdown(rows, since, now)


def _markdown(rows: list[dict[str, Any]], since: datetime, now: datetime) -> str:
    lines = [
        f"# Restore drills since {since:%Y-%m-%d} (generated {now:%Y-%m-%d %H:%M} UTC)",
        "",
        "| target | drills | ok | failed | unverified | last success | recovery min / median / max (s) | RTO (s) |"
        " over RTO |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        times = " / ".join(
            "-" if r[k] is None else str(r[k]) for k in ("recovery_min_s", "recovery_median_s", "recovery_max_s")
        )
        last = r["last_success"] or "never"
        rto = "-" if r["rto_s"] is None else str(r["rto_s"])
        lines.append(
            f"| {r['target']} | {r['drills']} | {r['succeeded']} | {r['failed']} | {r['unverified']} | {last} | {times}"
            f" | {rto} |"
            f" {r['rto_exceeded']} |"
        )
    failures = [(r["target"], f) for r in rows for f in r["failures"]]
    if failures:
        lines += ["", "## Failures", ""]
        for target, f in failures:
            fixed = f"fixed: drill {f['fixed_by']} succeeded {f['fixed_at']}" if f["fixed_by"] else "not fixed yet"
            lines.append(f"- {target}, {f['started_at']}, {f['code']}: {f['reason'][:300]} ({fixed})")
    return "\n".join(lines) + "\n"
