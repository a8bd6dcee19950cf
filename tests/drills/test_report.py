"""The auditor's report over a simulated quarter: drill records written through the evidence store (moto: the jobs
table and the bucket) at fixed times, then `lifeboat drills --report` in every format, and the per-target views."""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from chalicelib import wiring
from chalicelib.cli import build_parser
from chalicelib.cli.operations import run_drills
from chalicelib.cli.output import Output
from chalicelib.config import Config
from chalicelib.drills.build import evidence_store
from chalicelib.drills.model import CheckResult, DrillRecord, new_drill_id
from chalicelib.drills.views import list_drills
from devstack.local import LocalStack, target
from devstack.postgres import PostgresServer

QUARTER = datetime(2026, 7, 1, tzinfo=UTC)
GENERATED = datetime(2026, 10, 1, 8, tzinfo=UTC)


def quarter_config(aws: LocalStack, pg: PostgresServer, write: Callable[..., Config]) -> Config:
    targets = []
    for name in ("shop", "billing", "quiet", "scratch"):
        t = target(name, pg.port, aws.secret_arn)
        if name != "scratch":
            t["restore_into"] = ["scratch"]
            t["drill"] = {"schedule": "cron(0 6 ? * MON *)", "into": {"target": "scratch"}, "rto_seconds": 300}
        targets.append(t)
    return write(targets)


def simulate_quarter(cfg: Config) -> list[DrillRecord]:
    """Weekly drills of shop and billing for 13 weeks: shop always succeeds (recovery 100..220 s, one over RTO),
    billing fails in weeks 3 and 4 (a tampered dump, then a failing check) and succeeds again in week 5."""
    evidence = evidence_store(cfg)
    rng = random.Random(16)  # noqa: S311  # fixed ids
    written = []
    for week in range(13):
        start = QUARTER + timedelta(days=7 * week, hours=6)
        for name, seconds in (("shop", 100.0 + 10 * week), ("billing", 50.0 + week)):
            rec = DrillRecord(
                drill_id=new_drill_id(rng),
                target=name,
                kind="logical",
                pick="latest",
                started_at=start,
                backup_id=f"logical:{name}:{(start - timedelta(hours=3)):%Y%m%dT%H%M%SZ}",
                rto_seconds=300,
                status="SUCCEEDED",
                recovery_seconds=seconds if name == "billing" else (400.0 if week == 6 else seconds),
                checks=[CheckResult(name="row counts match the manifest", passed=True)],
            )
            if name == "billing" and week == 3:
                rec = rec.failed("integrity_failed", "database.dump does not match its manifest's SHA-256")
            if name == "billing" and week == 4:
                rec = rec.failed("check_failed", "1 of 2 checks failed: orders are recent: returned False, not true")
            finished = start + timedelta(seconds=rec.recovery_seconds or 0)
            rto_met = None if rec.status == "FAILED" else (rec.recovery_seconds or 0) <= 300
            written.append(evidence.save(rec.model_copy(update={"finished_at": finished, "rto_met": rto_met})))
    # One drill before the period: not in the report.
    old = DrillRecord(
        drill_id=new_drill_id(rng),
        target="shop",
        kind="logical",
        pick="latest",
        status="FAILED",
        started_at=QUARTER - timedelta(days=3),
        finished_at=QUARTER - timedelta(days=3),
    )
    evidence.save(old)
    return written


def run_report(fmt: str) -> str:
    args = build_parser().parse_args(["drills", "--report", "--since", "2026-07-01", "--format", fmt])
    out = io.StringIO()
    assert run_drills(args, Output(out, as_json=False), clock=lambda: GENERATED) == 0
    return out.getvalue()


def test_the_quarter_report_lists_every_target(
    aws: LocalStack, pg: PostgresServer, write_drill_config: Callable[..., Config]
) -> None:
    cfg = quarter_config(aws, pg, write_drill_config)
    written = simulate_quarter(cfg)
    assert all(r.evidence_key for r in written)

    doc = json.loads(run_report("json"))
    rows = {r["target"]: r for r in doc["targets"]}
    assert list(rows) == ["shop", "billing", "quiet"]
    shop, billing, quiet = rows["shop"], rows["billing"], rows["quiet"]
    assert (shop["drills"], shop["succeeded"], shop["failed"]) == (13, 13, 0)
    assert (shop["recovery_min_s"], shop["recovery_median_s"], shop["recovery_max_s"]) == (100.0, 170.0, 400.0)
    assert shop["rto_exceeded"] == 1 and shop["last_success"] == "2026-09-23T06:03:40+00:00"
    assert (billing["drills"], billing["succeeded"], billing["failed"]) == (13, 11, 2)
    assert [f["code"] for f in billing["failures"]] == ["integrity_failed", "check_failed"]
    week5 = next(r for r in written if r.target == "billing" and r.started_at == QUARTER + timedelta(days=35, hours=6))
    assert {f["fixed_by"] for f in billing["failures"]} == {week5.drill_id}
    assert quiet["drills"] == 0 and quiet["last_success"] is None and quiet["recovery_median_s"] is None

    table = list(csv.DictReader(io.StringIO(run_report("csv"))))
    assert [r["target"] for r in table] == ["shop", "billing", "quiet"]
    assert table[1]["failed"] == "2" and "integrity_failed" in table[1]["failures"]
    assert table[2]["last_success"] == ""

    md = run_report("md")
    assert md.startswith("# Restore drills since 2026-07-01")
    assert "| shop | 13 | 13 | 0 | 0 | 2026-09-23T06:03:40+00:00 | 100.0 / 170.0 / 400.0 | 300 | 1 |" in md
    assert "| quiet | 0 | 0 | 0 | 0 | never | - / - / - | 300 | 0 |" in md
    assert f"(fixed: drill {week5.drill_id} succeeded" in md


def test_a_targets_drills_newest_first_and_the_bucket_copy(
    aws: LocalStack, pg: PostgresServer, write_drill_config: Callable[..., Config]
) -> None:
    cfg = quarter_config(aws, pg, write_drill_config)
    simulate_quarter(cfg)
    body = list_drills(cfg, evidence_store(cfg), "billing")
    assert len(body["drills"]) == 13 and body["drills"][0]["started_at"] == "2026-09-23T06:00:00Z"
    assert body["last_success"]["started_at"] == "2026-09-23T06:00:00Z"
    # The bucket holds the same evidence (what is read when the table's records have expired).
    from_bucket = evidence_store(cfg).from_bucket("billing", QUARTER)
    assert [r.drill_id for r in from_bucket] == [d["drill_id"] for d in body["drills"]]
    assert wiring.settings().jobs_table
