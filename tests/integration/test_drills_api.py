"""GET /targets/{target}/drills through Chalice's test client, against moto server: a target's drills newest first
with its last success (the evidence the drills wrote), an unknown target 404, every answer valid against
openapi.json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from openapi_schema_validator import OAS31Validator

from chalicelib import wiring
from chalicelib.drills.build import evidence_store
from chalicelib.drills.model import DrillRecord
from devstack.chalice_local import client as chalice_client
from devstack.local import LocalStack

REPO = Path(__file__).resolve().parents[2]
SPEC = json.loads((REPO / "openapi.json").read_text())
START = datetime(2026, 11, 1, 6, tzinfo=UTC)


@pytest.fixture
def api(config_path: Path, aws: LocalStack) -> Iterator[Any]:
    import app as lambda_app

    with chalice_client(lambda_app.app, project_dir=str(REPO)) as c:
        yield c


def drill(n: int, status: str) -> DrillRecord:
    started = START + timedelta(days=7 * n)
    record = DrillRecord(
        drill_id=f"d-{n:016x}",
        target="shop",
        kind="logical",
        pick="latest",
        status="RUNNING",
        started_at=started,
        backup_id=f"logical:shop:{started:%Y%m%dT030000Z}",
    )
    if status == "FAILED":
        record = record.failed("restore_failed", "pg_restore exited 1")
    else:
        record = record.model_copy(update={"status": status, "recovery_seconds": 42.0})
    return record.model_copy(update={"finished_at": started + timedelta(minutes=5)})


def get(api: Any, path: str) -> tuple[int, Any]:
    response = api.http.get(path)
    body = json.loads(response.body)
    spec = SPEC["paths"]["/targets/{target}/drills"]["get"]["responses"][str(response.status_code)]
    OAS31Validator({**spec["content"]["application/json"]["schema"], "components": SPEC["components"]}).validate(body)
    return response.status_code, body


def test_a_targets_drills_newest_first_with_its_last_success(api: Any) -> None:
    evidence = evidence_store(wiring.load_config())
    for n, outcome in enumerate(["SUCCEEDED", "SUCCEEDED", "FAILED"]):
        evidence.save(drill(n, outcome))

    status, body = get(api, "/targets/shop/drills")

    assert status == 200, body
    assert [d["drill_id"] for d in body["drills"]] == [f"d-{n:016x}" for n in (2, 1, 0)]
    assert body["drills"][0]["error"] == {"code": "restore_failed", "message": "pg_restore exited 1"}
    assert body["last_success"]["drill_id"] == f"d-{1:016x}"  # the failure after it is not a success


def test_no_drill_yet_and_an_unknown_target(api: Any) -> None:
    assert get(api, "/targets/shop/drills") == (200, {"target": "shop", "last_success": None, "drills": []})
    status, body = get(api, "/targets/nosuch/drills")
    assert status == 404 and body["error"] == "not_found", body
