"""The operator's views on the command line: `check` (the pre-flight), `status` (the morning view), `drills` (restore
drill evidence, the auditor's report, one drill now). Each runner calls its module's logic and renders through
Output; `status` and `drills` take a clock (tests pass a fixed one)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib import wiring
from chalicelib.cli.output import EXIT_FAILED, EXIT_OK, Output
from chalicelib.drills.build import drill_services, evidence_store
from chalicelib.drills.model import DrillRecord
from chalicelib.drills.runner import run_drill
from chalicelib.drills.views import latest_by_target, list_drills, report
from chalicelib.errors import BadRequestError
from chalicelib.operator.check import render_json, render_text, run_checks
from chalicelib.operator.status import StatusRow, gather, overall_ok, render_table, status_rows

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def run_check(args: argparse.Namespace, out: Output) -> int:
    """0 all passed, 1 a check failed, 2 the configuration (or the target named) is unusable: the report is the
    output either way (one line per check), so it is written here rather than raised."""
    result = run_checks(args.target)
    out.json(render_json(result))
    if not out.as_json:
        out.stream.write(render_text(result))
    return result.exit_code


def status_of(targets: list[str], grace_minutes: int | None, now: datetime) -> list[StatusRow]:
    """The rows of the named targets (default: every target that is backed up), read with the handlers' services."""
    if grace_minutes is not None and grace_minutes < 0:
        raise BadRequestError(f"--grace {grace_minutes}: give the minutes as a whole number, 0 or more")
    cfg = wiring.load_config()
    # By default the targets that are backed up (not those that are only restore destinations).
    names = list(dict.fromkeys(targets)) or [t.name for t in cfg.targets if t.logical or t.physical or t.wal]
    for name in names:
        cfg.target(name)  # an unknown name fails before anything is read
    physical = any(cfg.target(n).physical is not None for n in names)
    drilled = any(cfg.target(n).drill is not None for n in names)
    snapshots = wiring.snapshot_services(cfg) if physical else None
    facts = gather(cfg, wiring.catalog(cfg), snapshots, names, evidence_store(cfg) if drilled else None)
    return status_rows(facts, now, None if grace_minutes is None else timedelta(minutes=grace_minutes))


def run_status(args: argparse.Namespace, out: Output, clock: Clock = utcnow) -> int:
    """0 when every target is OK, 1 when any is STALE, FAILING, NEVER backed up or DRILL_OVERDUE."""
    rows = status_of(args.targets, args.grace, clock())
    document: dict[str, Any] = {"status": "OK", "targets": [r.as_json() for r in rows]}
    if not overall_ok(rows):
        bad = [f"{r.target} is {r.status}" for r in rows if r.status != "OK"]
        message = ", ".join(bad) + ": see each target's problems"
        document.update(status="FAILED", error={"code": "backups_not_ok", "message": message})
    out.json(document)
    if not out.as_json:
        render_table(rows, out.stream, color=out.stream.isatty())
    return EXIT_OK if overall_ok(rows) else EXIT_FAILED


def parse_since(text: str | None) -> datetime:
    if not text:
        raise BadRequestError("--report needs --since YYYY-MM-DD (the first day of the period, UTC)")
    try:
        day = datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        raise BadRequestError(f"--since {text!r}: use YYYY-MM-DD, e.g. 2026-01-01") from None
    return day.replace(tzinfo=UTC)


def run_drills(args: argparse.Namespace, out: Output, clock: Clock = utcnow) -> int:
    """0: shown (or the drill succeeded); 1: the drill run failed; bad input is raised (2)."""
    cfg = wiring.load_config()
    if args.run_now:
        if not args.target:
            raise BadRequestError("--run needs a TARGET: lifeboat drills TARGET --run")
        return _drill_now(run_drill(drill_services(cfg), args.target), out)
    evidence = evidence_store(cfg)
    if args.report:
        since = parse_since(args.since)
        if out.as_json:  # the document is the report's JSON format, whatever --format says
            out.json(json.loads(report(cfg, evidence, since, clock(), "json")))
        else:
            out.stream.write(report(cfg, evidence, since, clock(), args.format))
        return EXIT_OK
    if args.target:
        body = list_drills(cfg, evidence, args.target)
        out.json(body)
        for d in body["drills"]:
            took = "-" if d["recovery_seconds"] is None else f"{d['recovery_seconds']:.1f}s"
            error = f"  {d['error']['code']}: {d['error']['message'][:120]}" if d["error"] else ""
            out.line(f"{d['started_at']}  {d['drill_id']}  {d['status']:<9} {took:>9}  {d['backup_id']}{error}")
        if not body["drills"]:
            out.line(f"{args.target}: no drill yet")
        return EXIT_OK
    rows = latest_by_target(cfg, evidence)
    out.json(rows)
    for row in rows:
        latest = row["latest"]
        status = f"{latest['status']} {latest['started_at']}" if latest else "no drill yet"
        out.line(f"{row['target']:<24} {status:<45} last success: {row['last_success'] or 'never'}")
    if not rows:
        out.line("(no target has a drill section)")
    return EXIT_OK


def _drill_now(record: DrillRecord | None, out: Output) -> int:
    """The drill's evidence; a failed drill exits 1 with its error (the record carries {code, message})."""
    assert record is not None  # on-demand drills claim no slot
    body = record.public()
    out.json(body)
    took = "-" if body["recovery_seconds"] is None else f"{body['recovery_seconds']:.1f}s"
    out.line(f"{body['drill_id']}  {body['target']}  {body['status']}  {took}  {body['backup_id'] or '-'}")
    for check in body["checks"]:
        out.line(f"  {'ok  ' if check['passed'] else 'FAIL'}  {check['name']}: {check['detail']}")
    if body["error"]:
        out.line(f"  {body['error']['code']}: {body['error']['message']}")
    return EXIT_FAILED if body["status"] == "FAILED" else EXIT_OK
