"""Which backups a drill proved restorable, against moto (a versioned bucket, the jobs table, a KMS HMAC key) and the
session's real PostgreSQL: after a real logical drill of the 19 October backup, `lifeboat list`, GET
/targets/shop/backups and `lifeboat status` show that drill for that backup and for no other; a failed drill proves
nothing, and table records claiming successes without signed evidence (one of another backup, one newer of the same)
are never shown as proof."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from openapi_schema_validator import OAS31Validator

from chalicelib import env, wiring
from chalicelib.adapters.dynamo import DrillTable
from chalicelib.cli import build_parser, listing
from chalicelib.cli.operations import run_status
from chalicelib.cli.output import Output
from chalicelib.config import Config
from chalicelib.drills.build import evidence_store
from chalicelib.drills.model import DrillRecord
from chalicelib.drills.runner import run_drill
from chalicelib.logical.dump import run_logical_backup
from devstack.chalice_local import client as chalice_client
from devstack.local import LocalStack
from devstack.postgres import PostgresServer
from tests.cli.conftest import Lifeboat
from tests.drills.conftest import BACKUP_SLOTS, NOW, Metrics, drill_targets, services

REPO = Path(__file__).resolve().parents[2]
SPEC = json.loads((REPO / "openapi.json").read_text())
ALIAS = "alias/pg-lifeboat-test-proven"
SLOTS = BACKUP_SLOTS[1:]  # 18 and 19 October
OTHER, DRILLED = (f"logical:shop:{slot:%Y%m%dT%H%M%SZ}" for slot in SLOTS)


@pytest.fixture
def lifeboat(capsys: pytest.CaptureFixture[str]) -> Iterator[Lifeboat]:
    env.reset()
    wiring.client.cache_clear()
    yield Lifeboat(capsys)
    env.reset()
    wiring.client.cache_clear()


@pytest.fixture
def drilled(aws: LocalStack, pg: PostgresServer, write_drill_config: Callable[..., Config]) -> DrillRecord:
    """Signed evidence; shop's backups of 18 and 19 October; a real drill of the latest (the 19th's) at NOW and a
    FAILED drill of the 18th's an hour later (signed: a true failure)."""
    boto3.client("s3").put_bucket_versioning(Bucket=aws.bucket, VersioningConfiguration={"Status": "Enabled"})
    kms = boto3.client("kms")
    key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName=ALIAS, TargetKeyId=key)
    targets = drill_targets(pg, aws.secret_arn)
    targets[0]["restore_into"] = ["scratch"]  # where shop's drills may restore to
    cfg = write_drill_config(targets, signing_key_id=ALIAS)
    for slot in SLOTS:
        assert run_logical_backup(wiring.backup_services(cfg), "shop", slot).status == "SUCCEEDED"
    rec = run_drill(services(cfg, Metrics()), "shop", NOW)
    assert rec is not None and rec.status == "SUCCEEDED" and rec.backup_id == DRILLED, rec
    failed = record(1, OTHER, NOW + timedelta(hours=1)).failed("check_failed", "orders are recent: returned False")
    evidence_store(cfg).save(failed)
    return rec


def record(n: int, backup_id: str, started: datetime) -> DrillRecord:
    return DrillRecord(
        drill_id=f"d-{n:016x}",
        target="shop",
        kind="logical",
        pick="latest",
        status="SUCCEEDED",
        backup_id=backup_id,
        started_at=started,
        finished_at=started + timedelta(minutes=2),
        recovery_seconds=120.0,
    )


def forge_successes() -> None:
    """Table records (what any role with PutItem could write) claiming successes of the 18th's backup and, newer
    than the real drill, of the 19th's: no signed evidence document stands behind either."""
    table = DrillTable(wiring.client("dynamodb"), str(wiring.settings().jobs_table))
    for n, backup_id in ((2, OTHER), (3, DRILLED)):
        forged = record(n, backup_id, NOW + timedelta(hours=n))
        assert table.put(forged.drill_id, "SUCCEEDED", forged.started_at, forged.model_dump_json(), None)


def proof(rec: DrillRecord) -> dict[str, str]:
    assert rec.finished_at is not None
    return {"drill_id": rec.drill_id, "finished_at": rec.finished_at.isoformat()}


def test_list_shows_the_drill_for_the_backup_it_restored_only(
    drilled: DrillRecord, lifeboat: Lifeboat, monkeypatch: pytest.MonkeyPatch
) -> None:
    forge_successes()
    monkeypatch.setattr(listing, "clock", lambda: NOW + timedelta(hours=6))
    ran = lifeboat("list", "shop", "--json")
    assert ran.code == 0, ran.err
    assert {r["backup_id"]: r["last_proven"] for r in ran.json()} == {
        DRILLED: proof(drilled),
        OTHER: None,
    }

    text = lifeboat("list", "shop").out.splitlines()
    start = text[0].index("PROVEN")
    proven = {line.split()[0]: line[start : start + 10].strip() for line in text[1:]}
    assert proven == {DRILLED: f"{drilled.finished_at:%Y-%m-%d}", OTHER: "-"}


def get_backups(api: Any, path: str) -> Any:
    response = api.http.get(path)
    body = json.loads(response.body)
    assert response.status_code == 200, body
    spec = SPEC["paths"]["/targets/{target}/backups"]["get"]["responses"]["200"]
    OAS31Validator({**spec["content"]["application/json"]["schema"], "components": SPEC["components"]}).validate(body)
    return body


def test_the_api_shows_when_each_backup_was_last_proven(drilled: DrillRecord) -> None:
    forge_successes()
    import app as lambda_app

    with chalice_client(lambda_app.app, project_dir=str(REPO)) as api:
        body = get_backups(api, "/targets/shop/backups")
    assert {b["backup_id"]: b["last_proven"] for b in body["backups"]} == {
        DRILLED: proof(drilled),
        OTHER: None,
    }


def status(now: datetime, *argv: str) -> tuple[int, str]:
    args = build_parser().parse_args(["status", *argv])
    out = io.StringIO()
    code = run_status(args, Output(out, as_json=args.json), clock=lambda: now)
    return code, out.getvalue()


def test_status_shows_the_last_drill_and_believes_only_signed_successes(drilled: DrillRecord) -> None:
    later = NOW + timedelta(hours=2)  # the 19th's backup is fresh, the 20th's slot not yet due
    code, out = status(later, "shop", "--json")
    row = json.loads(out)["targets"][0]
    assert (code, row["status"], row["problems"]) == (0, "OK", []), row
    assert row["last_drill"] == {
        "drill_id": "d-0000000000000001",
        "status": "FAILED",
        "started_at": (NOW + timedelta(hours=1)).isoformat(),
        "finished_at": (NOW + timedelta(hours=1, minutes=2)).isoformat(),
        "recovery_seconds": 120.0,
        "last_success_at": proof(drilled)["finished_at"],
    }
    text = status(later, "shop")[1]
    assert "FAILED 2026-10-20 07:02 120s" in text and "last drill FAILED" in text and "orders are recent" in text

    forge_successes()
    row = json.loads(status(later, "shop", "--json")[1])["targets"][0]
    assert row["last_drill"]["drill_id"] == "d-0000000000000003" and row["last_drill"]["status"] == "UNVERIFIED"
    assert row["last_drill"]["last_success_at"] == proof(drilled)["finished_at"]  # not the forged, newer one

    # A week and two days later the drill is overdue (drill.max_age_days 8); the backups' staleness outranks it.
    code, out = status(NOW + timedelta(days=9), "shop", "--json")
    row = json.loads(out)["targets"][0]
    assert (code, row["status"]) == (1, "STALE")
    assert any("last successful restore drill finished 2026-10-20 06:00, 9d ago" in p for p in row["problems"])
