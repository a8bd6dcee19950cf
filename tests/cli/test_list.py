"""`lifeboat list`: one timeline of dumps, snapshots and (--failed) failed attempts; --limit counts every row;
AGE since the slot (a fixed clock here), DURATION from start to finish."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest

from chalicelib import wiring
from chalicelib.cli import listing
from chalicelib.physical.start import start_snapshot
from devstack.local import LocalStack, target, write_config
from devstack.postgres import PostgresServer, free_port
from tests.cli.conftest import Lifeboat

NOW = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


@pytest.fixture
def timeline(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lifeboat: Lifeboat
) -> None:
    """shop: dumps of 11-28 and 11-29 03:00 and a snapshot of 11-29 03:00; broken: a failed attempt of 11-29 04:00."""
    boto3.client("rds").create_db_instance(
        DBInstanceIdentifier="shop-db",
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        AllocatedStorage=20,
        MasterUsername="admin",
        MasterUserPassword="not-used-here-1",
    )
    shop = target("shop", pg.port, aws.secret_arn)
    shop["physical"] = {"method": "rds_instance", "db_instance_id": "shop-db"}
    broken = target("broken", free_port(), aws.secret_arn)
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(write_config(tmp_path / "c.json", aws.bucket, [shop, broken])))
    monkeypatch.setattr(listing, "clock", lambda: NOW)
    for slot in ("2026-11-28T03:00:00", "2026-11-29T03:00:00"):
        assert lifeboat("backup", "shop", "--slot", slot).code == 0
    assert lifeboat("backup", "broken", "--slot", "2026-11-29T04:00:00").code == 1
    start_snapshot(wiring.snapshot_services(), "shop", datetime(2026, 11, 29, 3, tzinfo=UTC))


@pytest.mark.usefixtures("timeline")
def test_limit_counts_every_kind_of_row(lifeboat: Lifeboat) -> None:
    rows = lifeboat("list", "--json").json()
    assert [r["backup_id"] for r in rows] == [
        "snapshot:shop:20261129T030000Z",
        "logical:shop:20261129T030000Z",
        "logical:shop:20261128T030000Z",
    ]
    assert [r["backup_id"] for r in lifeboat("list", "--limit", "1", "--json").json()] == [rows[0]["backup_id"]]
    assert len(lifeboat("list", "--limit", "2", "--json").json()) == 2
    failed = lifeboat("list", "--failed", "--limit", "2", "--json").json()
    assert [(r["backup_id"], r["status"]) for r in failed] == [
        ("logical:broken:20261129T040000Z", "FAILED"),
        ("snapshot:shop:20261129T030000Z", "SUCCEEDED"),
    ]
    assert lifeboat("list", "broken", "--json").json() == []
    assert lifeboat("list", "--limit", "-1").code == 2


@pytest.mark.usefixtures("timeline")
def test_age_and_duration(lifeboat: Lifeboat) -> None:
    rows = {r["backup_id"]: r for r in lifeboat("list", "--failed", "--json").json()}
    newest, older = rows["logical:shop:20261129T030000Z"], rows["logical:shop:20261128T030000Z"]
    assert (newest["age_seconds"], older["age_seconds"]) == (86400, 2 * 86400)
    assert 0 < newest["duration_seconds"] < 120
    assert rows["snapshot:shop:20261129T030000Z"]["duration_seconds"] is None
    assert rows["logical:broken:20261129T040000Z"]["error"]

    text = lifeboat("list", "--failed").out.splitlines()
    assert text[0].split() == [
        "BACKUP",
        "ID",
        "KIND",
        "TIME",
        "AGE",
        "DURATION",
        "SIZE",
        "STATUS",
        "RETENTION",
        "PROVEN",
        "REGION",
        "SERVER",
    ]
    line = {row.split()[0]: row.split() for row in text[1:] if not row.startswith(" ")}
    assert line["logical:shop:20261128T030000Z"][4] == "2d0h"
    assert line["logical:shop:20261128T030000Z"][5].endswith("s")
    assert line["snapshot:shop:20261129T030000Z"][4:6] == ["1d0h", "-"]
    assert line["logical:broken:20261129T040000Z"][4] == "23h00m"
    error = text[text.index(next(r for r in text if r.startswith("logical:broken"))) + 1]
    assert error.startswith("    error: ") and "127.0.0.1" in error


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "-"), (-5, "future"), (3.25, "3.2s"), (45, "45s"), (185, "3m05s"), (8040, "2h14m"), (273600, "3d4h")],
)
def test_spans_for_people(seconds: float | None, shown: str) -> None:
    from chalicelib.cli.output import human_span

    assert human_span(seconds) == shown
