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
    spool = pg_wal / "lifeboat-prefetch" / "lifeboat-prefetch-shop"
    sources = []
    for segment in SEGMENTS:
        ran = lifeboat("--json", "wal-fetch", "--target", "shop", segment.name, str(pg_wal / "RECOVERYXLOG"))
        assert ran.code == 0, ran
        assert (pg_wal / "RECOVERYXLOG").read_bytes() == body(segment)
        sources.append("spool" if "from the prefetch spool" in ran.json()["message"] else "s3")
        if segment == SEGMENTS[3]:  # a spooled file damaged between two calls: refused, read from S3
            assert (spool / SEGMENTS[4].name).is_file()
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


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.usefixtures("archived")
def test_a_prefetch_dir_that_is_or_holds_a_data_directory_is_refused_untouched(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The spool deletes what it does not want: pointed at $PGDATA or pg_wal it must not start (255: recovery
    stops with the reason), and nothing there changes, whether the request is a segment or a missing history file
    (which empties the spool)."""
    pgdata = tmp_path / "site" / "pgdata"
    (pgdata / "pg_wal" / "archive_status").mkdir(parents=True)
    for name, text in [("PG_VERSION", "16"), ("postgresql.auto.conf", "x"), ("backup_label", "y")]:
        (pgdata / name).write_text(text)
    (pgdata / "pg_wal" / SEGMENTS[5].name).write_bytes(b"a segment PostgreSQL still needs")
    before = tree(tmp_path)
    wanted = str(pgdata / "pg_wal" / "RECOVERYXLOG")
    for directory, why in [
        (pgdata, "is a PostgreSQL data directory"),
        (pgdata / "pg_wal", "is a pg_wal directory"),
        (tmp_path / "site", "contains a PostgreSQL data directory (pgdata)"),
    ]:
        for name in (SEGMENTS[0].name, "00000002.history"):
            ran = Lifeboat(capsys)("wal-fetch", "--target", "shop", "--prefetch-dir", str(directory), name, wanted)
            assert ran.code == 255 and f"--prefetch-dir {directory}: it {why}" in ran.err, (directory, ran)
            assert tree(tmp_path) == before, directory


@pytest.mark.usefixtures("archived")
def test_the_spool_lives_in_its_own_folder_and_deletes_only_its_own_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "notes.txt").write_text("someone else's")
    (shared / SEGMENTS[9].name).write_bytes(b"someone else's copy")  # segment-named, but not in the spool's folder
    pg_wal = tmp_path / "pgdata" / "pg_wal"
    pg_wal.mkdir(parents=True)
    ran = Lifeboat(capsys)(
        "wal-fetch", "--target", "shop", "--prefetch-dir", str(shared), SEGMENTS[0].name, str(pg_wal / "RECOVERYXLOG")
    )
    assert ran.code == 0, ran
    spool = shared / "lifeboat-prefetch-shop"
    assert sorted(p.name for p in spool.glob("*.json")) == [f"{s.name}.json" for s in SEGMENTS[1:9]]
    (spool / "keep-me.txt").write_text("not the spool's")  # a file the spool did not write
    gone = Lifeboat(capsys)(
        "wal-fetch", "--target", "shop", "--prefetch-dir", str(shared), "00000002.history", str(pg_wal / "x")
    )
    assert gone.code == 1, gone  # not archived: the spool is emptied of its own files only
    assert [p.name for p in spool.iterdir()] == ["keep-me.txt"]
    assert (shared / "notes.txt").read_text() == "someone else's"
    assert (shared / SEGMENTS[9].name).read_bytes() == b"someone else's copy"
