"""`lifeboat status` against moto and a real PostgreSQL: a real backup, then a real failure, read back at fixed
times (the backups' slots and clocks are fixed too: nothing depends on today's date)."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chalicelib import wiring
from chalicelib.cli import build_parser
from chalicelib.cli.operations import run_status
from chalicelib.cli.output import Output
from chalicelib.errors import LifeboatError
from chalicelib.logical.catalog import Manifest
from chalicelib.logical.dump import run_logical_backup
from devstack.local import LocalStack, target, write_config
from devstack.postgres import PostgresServer

SLOT = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)  # the schedule: cron(0 3 * * ? *) (devstack.local.target)


def ticking(start: datetime) -> Callable[[], datetime]:
    """A fixed clock that moves one second each time it is read (a backup's start comes before its end)."""
    seconds = itertools.count()
    return lambda: start + timedelta(seconds=next(seconds))


def back_up(slot: datetime) -> None:
    svc = dataclasses.replace(wiring.backup_services(), clock=ticking(slot + timedelta(seconds=5)))
    run_logical_backup(svc, "shop", slot, trigger="schedule")


def status(now: datetime, *argv: str) -> tuple[int, Any]:
    """`lifeboat status ARGV` through its runner, judged at `now`."""
    args = build_parser().parse_args(["status", *argv])
    out = io.StringIO()
    code = run_status(args, Output(out, as_json=args.json), clock=lambda: now)
    return code, json.loads(out.getvalue()) if args.json else out.getvalue()


def test_ok_then_stale_then_failing(
    config_path: Path, aws: LocalStack, pg: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, report = status(SLOT, "--json")
    assert (code, report["status"], report["targets"][0]["status"]) == (1, "FAILED", "NEVER")

    back_up(SLOT)
    code, report = status(SLOT + timedelta(minutes=10), "--json")
    row = report["targets"][0]
    assert (code, report["status"], row["status"]) == (0, "OK", "OK"), row
    assert row["last_good"]["backup_id"] == "logical:shop:20260301T030000Z"
    assert row["last_good"]["size"] > 10_000 and row["last_good"]["duration_seconds"] > 0
    assert row["age_seconds"] == 600 and row["last_failure"] is None
    assert row["restorable"]["oldest"] == row["restorable"]["newest"] == SLOT.isoformat()

    # Two nights later with nothing new: the 2 March slot is missing (3 March's is still within the grace).
    code, table = status(SLOT + timedelta(days=2, minutes=10))
    assert code == 1
    assert "STALE" in table and "2026-03-02 03:00 slot is missing" in table and "\033[" not in table

    # The next night's attempt fails for real: its database does not exist.
    spec = target("shop", pg.port, aws.secret_arn, database="shop_missing", globals=True)
    write_config(config_path, aws.bucket, [spec])
    with pytest.raises(LifeboatError, match="shop_missing"):
        back_up(SLOT + timedelta(days=1))
    write_config(config_path, aws.bucket, [target("shop", pg.port, aws.secret_arn, globals=True)])
    code, report = status(SLOT + timedelta(days=1, minutes=10), "--json", "shop")
    row = report["targets"][0]
    assert (code, report["status"], row["status"]) == (1, "FAILED", "FAILING"), row
    assert row["last_failure"]["backup_id"] == "logical:shop:20260302T030000Z"
    assert "shop_missing" in row["last_failure"]["reason"] and "shop_missing" in row["problems"][0]
    assert row["last_good"]["backup_id"] == "logical:shop:20260301T030000Z"

    # A later good backup clears it: the failure stays visible, the target is OK again.
    back_up(SLOT + timedelta(days=2))
    code, report = status(SLOT + timedelta(days=2, minutes=10), "--json")
    row = report["targets"][0]
    assert (code, row["status"], row["last_failure"]["backup_id"]) == (0, "OK", "logical:shop:20260302T030000Z")
    assert row["restorable"] == {"oldest": SLOT.isoformat(), "newest": (SLOT + timedelta(days=2)).isoformat()}


def test_unknown_target_is_refused(config_path: Path) -> None:
    with pytest.raises(LifeboatError, match="unknown target 'nope'"):
        status(SLOT, "nope")


def failure_record(slot: datetime, started: datetime, database: str = "") -> Manifest:
    bid = f"logical:shop{'/' if database else ''}{database}:{slot:%Y%m%dT%H%M%SZ}"
    return Manifest(
        backup_id=bid,
        status="FAILED",
        target="shop",
        slot=slot,
        host="127.0.0.1",
        database="shop",
        server_version="",
        server_version_num=0,
        pg_dump_version=0,
        format="custom",
        compression="gzip",
        started_at=started,
        finished_at=started + timedelta(seconds=1),
        retention_class="",
        retention_policy="default",
        error=f"attempt of {started:%H:%M}",
    )


def test_list_failures_newest_first_and_limited(config_path: Path, aws: LocalStack) -> None:
    catalog = wiring.catalog(wiring.load_config())
    attempts = [(SLOT, 0), (SLOT, 30), (SLOT + timedelta(days=1), 5), (SLOT - timedelta(days=1), 1)]
    for slot, minutes in attempts:
        catalog.write_failure(failure_record(slot, slot + timedelta(minutes=minutes)))
    # One database of a whole-server run: ordered by its attempt's time, not by its name.
    catalog.write_failure(failure_record(SLOT, SLOT + timedelta(minutes=10), database="zeta"))
    # A record of an older version (failed/<target>/<slot>.json), and another target's, never listed.
    older = datetime(2026, 2, 27, 3, tzinfo=UTC)
    catalog.store.put_bytes(
        "failed/shop/20260227T030000Z.json", failure_record(older, older).model_dump_json().encode()
    )
    catalog.store.put_bytes("failed/shop-2/20260305T030000Z_@_20260305T030000000000Z.json", b"{}")
    found = catalog.list_failures("shop", limit=10)
    assert [(m.slot, m.started_at.minute) for m in found] == [
        (SLOT + timedelta(days=1), 5),
        (SLOT, 30),
        (SLOT, 10),
        (SLOT, 0),
        (SLOT - timedelta(days=1), 1),
        (older, 0),
    ]
    assert [m.started_at.minute for m in catalog.list_failures("shop", limit=2)] == [5, 30]
