"""The daily snapshot pruner also prunes the point-in-time archive of every target with a `wal` section (issue 15:
WAL is kept exactly as long as a base backup that needs it). Moto in server mode, a fixed clock (the schedule
event's time), the archive of test_wal_prune (two weeks of daily bases, WAL, a gap, a dead timeline, locks) written
with the product's writers: the handler deletes exactly what `lifeboat wal-prune --dry-run` says it would, and a
target whose bucket listing fails is reported (a metric, then the run fails for the alarm) without stopping the
prune of the others."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

import app as lambda_app
from chalicelib import wiring
from chalicelib.adapters.s3 import S3Store
from chalicelib.cli import main as lifeboat_main
from chalicelib.errors import StorageError
from chalicelib.pitr import commands
from chalicelib.pitr.basebackup import BaseLayout, list_bases
from devstack.chalice_local import client as chalice_client
from devstack.local import target, write_config
from tests.pitr.test_wal_prune import BUCKET, NOW, POLICY, Clock, build, segments, store

__all__ = ["store"]  # the fixture
REPO = Path(__file__).resolve().parents[2]
SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:lifeboat/shop-AbCdEf"


def streaming(name: str) -> dict[str, Any]:
    entry = target(name, 5432, SECRET)
    entry["wal"] = {}
    return entry


def configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *names: str) -> Path:
    config = write_config(
        tmp_path / "c.json", BUCKET, [streaming(n) for n in names], retention_policies={"default": POLICY}
    )
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(config))
    monkeypatch.setattr(commands, "now_utc", lambda: NOW)  # the operator's dry run judges at the same instant
    return config


def dry_run(config: Path) -> dict[str, Any]:
    out = io.StringIO()
    assert lifeboat_main(["--config", str(config), "wal-prune", "shop", "--dry-run", "--json"], out) == 0
    report: dict[str, Any] = json.loads(out.getvalue())
    assert report["deleted_bases"] and report["deleted_wal"] and report["deleted_gaps"], report
    return report


def run_pruner(when: datetime) -> dict[str, Any]:
    """One EventBridge delivery of the snapshot_pruner schedule at `when`, through Chalice's test client."""
    with chalice_client(lambda_app.app, project_dir=str(REPO)) as c:
        event = c.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event", detail={}, resources=[])
        event["time"] = when.isoformat().replace("+00:00", "Z")
        payload: dict[str, Any] = c.lambda_.invoke("snapshot_pruner", event).payload
        return payload


def archive_state(store: S3Store) -> tuple[set[str], set[str]]:
    """The WAL keys (below wal/shop/) and the ids of the bases still listed."""
    return set(segments(store)), {b.backup_id for b in list_bases(store, BaseLayout("", "shop"))}


def assert_pruned_as_promised(store: S3Store, before: tuple[set[str], set[str]], dry: dict[str, Any]) -> None:
    wal, bases = archive_state(store)
    gone = {k.removeprefix("wal/shop/") for k in dry["deleted_wal"]} | {f"gaps/{g}.json" for g in dry["deleted_gaps"]}
    assert before[0] - wal == gone and wal <= before[0]
    assert before[1] - bases == set(dry["deleted_bases"]) and bases == set(dry["kept_bases"])


@pytest.fixture
def refused_listing() -> Iterator[None]:
    """S3 refuses (403, not retried) every listing under base/broken/ to the functions' client."""

    class _Raw:
        def stream(self, **_: object) -> Iterator[bytes]:
            yield b"<Error><Code>AccessDenied</Code><Message>denied</Message></Error>"

    def handler(request: Any, **_: object) -> AWSResponse | None:
        if "prefix=base%2Fbroken%2F" in request.url:
            return AWSResponse(request.url, 403, {}, _Raw())  # type: ignore[arg-type]
        return None

    events: Any = wiring.client("s3").meta.events  # botocore types its handlers as returning None
    events.register("before-send.s3.ListObjectsV2", handler)
    yield
    events.unregister("before-send.s3.ListObjectsV2", handler)


def test_the_pruner_deletes_what_wal_prune_dry_run_says(
    store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(store, Clock(NOW))
    dry = dry_run(configure(tmp_path, monkeypatch, "shop"))
    before = archive_state(store)
    assert before[1] >= set(dry["deleted_bases"])  # the dry run deleted nothing

    payload = run_pruner(NOW)

    report = payload["archives"]["pruned"]["shop"]
    assert payload["archives"]["failed"] == {} and not report["errors"]
    for field in ("deleted_bases", "deleted_wal", "deleted_gaps", "locked", "kept_bases", "cutoff", "window_base"):
        assert report[field] == dry[field], field
    assert report["dry_run"] is False and payload["deleted"] == []  # no managed snapshot to prune
    assert_pruned_as_promised(store, before, dry)


def test_a_target_whose_listing_fails_does_not_stop_the_others(
    store: S3Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    refused_listing: None,
) -> None:
    build(store, Clock(NOW))
    dry = dry_run(configure(tmp_path, monkeypatch, "broken", "shop"))  # `broken` comes first
    before = archive_state(store)
    capsys.readouterr()

    with pytest.raises(StorageError, match=r"failed for broken \(the other targets were pruned\).*access denied"):
        run_pruner(NOW)

    assert_pruned_as_promised(store, before, dry)
    failed = {}  # the per-target metric (EMF lines on stdout): 1 for the failed target, 0 for the pruned one
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("{") and "ArchivePruneFailed" in line:
            document = json.loads(line)
            failed[document["target"]] = document["ArchivePruneFailed"]
    assert failed == {"broken": [1.0], "shop": [0.0]}, failed
