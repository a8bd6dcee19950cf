"""`lifeboat wal-fetch --prefetch` against moto: segments archived by WalArchive, fetched one call at a time as
PostgreSQL's restore_command does, most of them served from the spool; a spooled file altered between two calls is
refused and read from S3 again."""

from __future__ import annotations

import hashlib
from pathlib import Path

import boto3
import pytest

from chalicelib.adapters.s3 import S3Store
from chalicelib.pitr.walarchive import WalArchive
from chalicelib.pitr.walnames import Segment, WalLayout
from devstack.local import LocalStack, target, write_config
from devstack.postgres import free_port
from tests.cli.conftest import Lifeboat

SIZE = 1024 * 1024
SEGMENTS = [Segment(1, 0x20 + i, SIZE) for i in range(12)]


def body(segment: Segment) -> bytes:
    return hashlib.sha256(segment.name.encode()).digest() * (SIZE // 32)


@pytest.fixture
def archived(aws: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = target("shop", free_port(), aws.secret_arn)
    entry["wal"] = {}
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(write_config(tmp_path / "lifeboat.json", aws.bucket, [entry])))
    archive = WalArchive(S3Store(boto3.client("s3"), aws.bucket), WalLayout("", "shop"))
    for segment in SEGMENTS:
        archive.put_segment(segment, body(segment))


@pytest.mark.usefixtures("archived")
def test_wal_fetch_serves_most_segments_from_the_spool(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    lifeboat = Lifeboat(capsys)
    pg_wal = tmp_path / "pgdata" / "pg_wal"
    pg_wal.mkdir(parents=True)
    spool = pg_wal / "lifeboat-prefetch"
    sources = []
    for segment in SEGMENTS:
        ran = lifeboat("--json", "wal-fetch", "--target", "shop", segment.name, str(pg_wal / "RECOVERYXLOG"))
        assert ran.code == 0, ran
        assert (pg_wal / "RECOVERYXLOG").read_bytes() == body(segment)
        sources.append("spool" if "from the prefetch spool" in ran.json()["message"] else "s3")
        if segment == SEGMENTS[3]:  # a spooled file damaged between two calls: refused, read from S3
            (spool / SEGMENTS[4].name).write_bytes(b"\x00" * SIZE)
    assert sources == [
        "s3",
        "spool",
        "spool",
        "spool",
        "s3",
        "spool",
        "spool",
        "spool",
        "spool",
        "spool",
        "spool",
        "spool",
    ]
    assert not any(spool.glob("*.json"))  # past the archive's end nothing is left to prefetch, all was used
    last = lifeboat("wal-fetch", "--target", "shop", SEGMENTS[-1].following().name, str(pg_wal / "RECOVERYXLOG"))
    assert last.code == 1, last


@pytest.mark.usefixtures("archived")
def test_prefetch_0_spools_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ran = Lifeboat(capsys)(
        "wal-fetch", "--prefetch", "0", "--target", "shop", SEGMENTS[0].name, str(tmp_path / "RECOVERYXLOG")
    )
    assert ran.code == 0 and not (tmp_path / "lifeboat-prefetch").exists(), ran
    bad = Lifeboat(capsys)("wal-fetch", "--prefetch", "-1", "--target", "shop", SEGMENTS[0].name, str(tmp_path / "x"))
    assert bad.code == 255 and "--prefetch -1" in bad.err, bad
