"""A streaming target in the catalog: `lifeboat list` (text and --json) and GET /targets/{target}/backups show its
base backups and its recoverable window, with a gap that breaks it; a target without a wal section shows none.
On moto; the bases' times are fixed, the WAL's are moto's (so only what holds whatever the date is asserted)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import jsonschema
import pytest

from chalicelib import api, wiring
from chalicelib.adapters.s3 import S3Store
from chalicelib.openapi import build
from chalicelib.pitr.basebackup import BaseBackup, BaseLayout, BaseObject, write_manifest
from chalicelib.pitr.walarchive import WalArchive
from chalicelib.pitr.walnames import Gap, Segment, WalLayout, format_lsn
from devstack.local import LocalStack, target, write_config
from devstack.postgres import free_port
from tests.cli.conftest import Lifeboat

SIZE = 1024 * 1024
STARTED = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "cli.json").read_text())


def seg(number: int) -> Segment:
    return Segment(1, number, SIZE)


def base_at(store: S3Store, started: datetime, first: int) -> BaseBackup:
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    layout = BaseLayout("", "stream")
    data = store.put_bytes(f"{layout.folder(stamp)}base.tar", b"tar", tags={"kind": "base"})
    base = BaseBackup(
        target="stream",
        backup_id=stamp,
        started_at=started,
        finished_at=started + timedelta(minutes=5),
        server_version_num=170002,
        timeline=1,
        start_lsn=format_lsn(seg(first).start_lsn + 40),
        end_lsn=format_lsn(seg(first + 1).start_lsn + 40),
        segment_size=SIZE,
        tar_size=3,
        tar_sha256="0" * 64,
        objects=[BaseObject(role="data", key=data.key, size=3, sha256=data.sha256, version_id=data.version_id)],
        backup_label="",
    )
    return write_manifest(store, layout, base, {"kind": "base"}, None)


@pytest.fixture
def streaming(aws: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BaseBackup:
    """stream: two bases (the newer one's WAL not archived), WAL 2..4; plain: no wal section."""
    stream = target("stream", free_port(), aws.secret_arn)
    stream["wal"] = {}
    plain = target("plain", free_port(), aws.secret_arn)
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(write_config(tmp_path / "c.json", aws.bucket, [stream, plain])))
    boto3.client("s3").put_bucket_versioning(Bucket=aws.bucket, VersioningConfiguration={"Status": "Enabled"})
    store = S3Store(boto3.client("s3"), aws.bucket)
    archive = WalArchive(store, WalLayout("", "stream"))
    for number in range(2, 5):
        archive.put_segment(seg(number), bytes([number]) * SIZE)
    base_at(store, STARTED + timedelta(days=1), 9)  # its WAL (9, 10) is not archived: not usable
    return base_at(store, STARTED, 2)


def row_ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row.get("backup_id") or f"window:{row['target']}" for row in rows]


def test_list_shows_bases_and_the_window(streaming: BaseBackup, lifeboat: Lifeboat) -> None:
    ran = lifeboat("list", "--json")
    assert ran.code == 0, ran
    rows = ran.json()
    jsonschema.Draft202012Validator({**SCHEMA, "$ref": "#/$defs/list"}).validate(rows)
    assert row_ids(rows) == ["base:stream:20260302T030000Z", "base:stream:20260301T030000Z", "window:stream"]
    base, window = rows[1], rows[2]["window"]
    assert base["kind"] == "base" and base["server_version"] == "17.2" and base["duration_seconds"] == 300
    assert (base["timeline"], base["start_lsn"], base["slot"]) == (1, streaming.start_lsn, STARTED.isoformat())
    assert window["earliest"] == streaming.finished_at.isoformat() and window["broken"] is False
    assert [s["base"] for s in window["spans"]] == ["20260301T030000Z"]
    assert "20260302T030000Z" in window["unusable_bases"] and window["newest_wal"] == seg(4).name

    text = lifeboat("list", "stream").out.splitlines()
    assert text[2].split()[:3] == ["base:stream:20260301T030000Z", "base", "2026-03-01"], text
    assert text[3].startswith(f"WINDOW stream: restorable {streaming.finished_at.isoformat()} .. "), text
    assert "WINDOW" not in lifeboat("list", "plain").out


def test_a_gap_is_shown_broken_in_list_and_in_the_api(streaming: BaseBackup, lifeboat: Lifeboat) -> None:
    WalArchive(S3Store(boto3.client("s3"), wiring.load_config().settings.bucket), WalLayout("", "stream")).record_gap(
        Gap(seg(3).name, seg(4).name, "slot dropped")
    )
    text = lifeboat("list", "stream").out
    assert "  BROKEN: WAL archived until" in text and f"  gap {seg(3).name} .. {seg(4).name}: slot dropped" in text

    svc = wiring.api_services()
    body = api.list_backups(svc, "stream", None)
    assert [e["backup_id"] for e in body["backups"]] == ["base:stream:20260302T030000Z", "base:stream:20260301T030000Z"]
    assert body["wal"]["broken"] is True and body["wal"]["gaps"][0]["reason"] == "slot dropped"
    assert api.list_backups(svc, "stream", "logical") == {"target": "stream", "backups": [], "wal": None}
    assert api.list_backups(svc, "plain", None)["wal"] is None
    schemas = json.loads(json.dumps(build()["components"]["schemas"]).replace("#/components/schemas/", "#/$defs/"))
    jsonschema.Draft202012Validator({"$ref": "#/$defs/BackupList", "$defs": schemas}).validate(body)
