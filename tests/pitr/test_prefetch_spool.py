"""The prefetch spool of `wal-fetch` (chalicelib.pitr.spool) and the prefetching fetch (chalicelib.pitr.fetch) with an
in-memory archive: what is served from the spool, when S3 is asked, and what is refused. No AWS."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from chalicelib.errors import BadRequestError, IntegrityError
from chalicelib.pitr.fetch import FATAL, FETCHED, MISSING, Prefetch, following_names, wal_fetch
from chalicelib.pitr.spool import Spool, default_directory
from chalicelib.pitr.walarchive import WalArchive
from chalicelib.pitr.walnames import Segment

SIZE = 1024 * 1024  # 1 MiB segments: PostgreSQL's smallest
FIRST = Segment(1, 0x10, SIZE)


def body(segment: Segment) -> bytes:
    return hashlib.sha256(segment.name.encode()).digest() * (SIZE // 32)


class FakeArchive:
    """What WalArchive.fetch answers, from a dict of finished segments (and `.partial` ones); counts the calls."""

    def __init__(self, finished: dict[str, bytes], partial: dict[str, bytes] | None = None) -> None:
        self.finished, self.partial = finished, partial or {}
        self.asked: list[tuple[str, bool]] = []
        self.damaged: set[str] = set()
        self.lock = threading.Lock()

    def fetch(self, name: str, finished_only: bool = False) -> tuple[bytes, str] | None:
        with self.lock:
            self.asked.append((name, finished_only))
        if name in self.damaged:
            raise IntegrityError(f"{name} is damaged")
        if name in self.finished:
            return self.finished[name], f"wal/shop/00000001/{name}"
        if not finished_only and name in self.partial:
            return self.partial[name], f"wal/shop/00000001/{name}.partial"
        return None


def archive_of(count: int, partial: bool = False) -> FakeArchive:
    segments = [Segment(1, FIRST.number + i, SIZE) for i in range(count)]
    finished = {s.name: body(s) for s in segments}
    following = segments[-1].following()
    return FakeArchive(finished, {following.name: body(following)} if partial else None)


def source(archive: FakeArchive) -> WalArchive:
    return archive  # type: ignore[return-value]  # duck-typed: only fetch is called


def names(count: int) -> list[str]:
    return [Segment(1, FIRST.number + i, SIZE).name for i in range(count)]


@pytest.fixture
def pg_wal(tmp_path: Path) -> Path:
    folder = tmp_path / "pg_wal"
    folder.mkdir()
    return folder


def spool_for(pg_wal: Path, target: str = "shop") -> Spool:
    return Spool(default_directory(pg_wal / "RECOVERYXLOG"), target)


def test_the_spool_serves_a_file_once_and_only_for_its_own_name(pg_wal: Path) -> None:
    spool = spool_for(pg_wal)
    data = body(FIRST)
    spool.put(FIRST.name, data, "wal/shop/00000001/" + FIRST.name)
    assert spool.directory == pg_wal / "lifeboat-prefetch" / "lifeboat-prefetch-shop"
    assert spool.ready() == {FIRST.name}
    other_timeline = Segment(2, FIRST.number, SIZE).name
    assert spool.take(other_timeline).data is None
    assert spool.take(FIRST.name).data == data
    assert spool.take(FIRST.name).data is None  # used once
    assert list(spool.directory.iterdir()) == []


def test_a_damaged_or_foreign_spool_file_is_refused_and_removed(pg_wal: Path) -> None:
    spool = spool_for(pg_wal)
    data = body(FIRST)
    spool.put(FIRST.name, data, "k")
    (spool.directory / FIRST.name).write_bytes(data[:-1] + b"\x00")  # same size, one byte changed
    taken = spool.take(FIRST.name)
    assert taken.data is None and taken.refused is not None and "SHA-256" in taken.refused
    assert spool.ready() == set() and list(spool.directory.iterdir()) == []

    spool.put(FIRST.name, data, "k")
    (spool.directory / FIRST.name).write_bytes(data[: SIZE // 2])
    assert "size" in str(spool.take(FIRST.name).refused)

    billing = Spool(spool.base, "billing")
    billing.put(FIRST.name, data, "k")
    for path in billing.directory.iterdir():  # another target's recovery left it in this target's spool
        path.rename(spool.directory / path.name)
    assert "billing" in str(spool.take(FIRST.name).refused)

    spool.put(FIRST.name, data, "k")
    renamed = Segment(1, FIRST.number + 1, SIZE).name
    (spool.directory / FIRST.name).rename(spool.directory / renamed)
    (spool.directory / f"{FIRST.name}.json").rename(spool.directory / f"{renamed}.json")
    assert FIRST.name in str(spool.take(renamed).refused)  # the sidecar names another segment

    spool.put(FIRST.name, data, "k")
    (spool.directory / f"{FIRST.name}.json").write_text("{not json")
    assert "unreadable" in str(spool.take(FIRST.name).refused)


def test_a_file_without_its_sidecar_is_not_ready_and_keep_only_removes_leftovers(pg_wal: Path) -> None:
    spool = spool_for(pg_wal)
    spool.directory.mkdir(parents=True)
    (spool.directory / FIRST.name).write_bytes(b"half written")  # renamed, sidecar never written
    (spool.directory / f".{FIRST.name}.tmp").write_bytes(b"x")
    assert spool.ready() == set() and spool.take(FIRST.name).data is None
    second = FIRST.following()
    spool.put(second.name, body(second), "k")
    spool.keep_only({second.name})
    assert sorted(p.name for p in spool.directory.iterdir()) == [second.name, f"{second.name}.json"]
    record = json.loads((spool.directory / f"{second.name}.json").read_text())
    assert record == {
        "name": second.name,
        "target": "shop",
        "size": SIZE,
        "sha256": hashlib.sha256(body(second)).hexdigest(),
        "key": "k",
    }


def test_following_names_cross_the_4_gib_boundary_on_the_same_timeline() -> None:
    last = Segment(3, 4095, SIZE)  # 1 MiB: 4096 segments per XLogId
    assert following_names(last.name, SIZE, 2) == ["000000030000000100000000", "000000030000000100000001"]
    assert following_names("000000010000000000000003", 3 * SIZE, 2) == []  # not a segment size


def test_a_recovery_of_20_segments_asks_s3_in_a_few_calls(pg_wal: Path) -> None:
    archive = archive_of(20, partial=True)
    prefetch = Prefetch(spool_for(pg_wal), count=8)
    target = pg_wal / "RECOVERYXLOG"
    served_from_s3 = 0
    for name in names(20):
        before = len(archive.asked)
        code, message = wal_fetch(lambda: source(archive), name, target, prefetch)
        assert code == FETCHED, message
        assert target.read_bytes() == archive.finished[name]
        served_from_s3 += (name, False) in archive.asked[before:]
    assert served_from_s3 == 1  # the first; the spool is refilled before it runs dry
    asked = [n for n, finished_only in archive.asked if finished_only and n in archive.finished]
    assert len(asked) == len(set(asked)) == 19, "each segment after the first is prefetched once"
    partial = Segment(1, FIRST.number + 20, SIZE).name
    assert (partial, True) in archive.asked and partial not in prefetch.spool.ready()  # never a .partial
    code, message = wal_fetch(lambda: source(archive), partial, target, prefetch)
    assert code == FETCHED and message.endswith(".partial"), message  # the open segment: from S3, no prefetch
    assert wal_fetch(lambda: source(archive), "00000002.history", target, prefetch)[0] == MISSING
    assert not prefetch.spool.directory.exists() or list(prefetch.spool.directory.iterdir()) == []


def test_a_spool_hit_makes_no_archive(pg_wal: Path) -> None:
    archive = archive_of(10)
    prefetch = Prefetch(spool_for(pg_wal), count=8)
    made: list[int] = []

    def make() -> WalArchive:
        made.append(1)
        return source(archive)

    wal_fetch(make, names(10)[0], pg_wal / "RECOVERYXLOG", prefetch)
    assert made == [1]
    code, message = wal_fetch(make, names(10)[1], pg_wal / "RECOVERYXLOG", prefetch)
    assert code == FETCHED and "from the prefetch spool" in message, message
    assert made == [1]  # 7 of the next 8 were there: no refill, no S3 client


def test_a_damaged_spool_file_falls_back_to_s3_and_damage_in_s3_is_still_fatal(pg_wal: Path) -> None:
    archive = archive_of(4)
    prefetch = Prefetch(spool_for(pg_wal), count=2)
    first, second, third = names(3)
    wal_fetch(lambda: source(archive), first, pg_wal / "RECOVERYXLOG", prefetch)
    spooled = prefetch.spool.directory / second
    spooled.write_bytes(b"\xff" * SIZE)
    code, message = wal_fetch(lambda: source(archive), second, pg_wal / "RECOVERYXLOG", prefetch)
    assert code == FETCHED and "refused" in message and "wal/shop/" in message, message
    assert (pg_wal / "RECOVERYXLOG").read_bytes() == archive.finished[second]
    prefetch.spool.keep_only(set())
    archive.damaged.add(third)  # damaged in S3: the prefetch skips it, the request itself stops recovery
    assert wal_fetch(lambda: source(archive), second, pg_wal / "RECOVERYXLOG", prefetch)[0] == FETCHED
    assert third not in prefetch.spool.ready()
    assert wal_fetch(lambda: source(archive), third, pg_wal / "RECOVERYXLOG", prefetch)[0] == FATAL


def test_prefetch_is_bounded_in_time(pg_wal: Path) -> None:
    archive = archive_of(4)
    release = threading.Event()
    slow = archive.fetch

    def stuck(name: str, finished_only: bool = False) -> tuple[bytes, str] | None:
        if finished_only:
            release.wait(5)
        return slow(name, finished_only)

    archive.fetch = stuck  # type: ignore[method-assign]
    prefetch = Prefetch(spool_for(pg_wal), count=3, seconds=0.2)
    code, message = wal_fetch(lambda: source(archive), names(1)[0], pg_wal / "RECOVERYXLOG", prefetch)
    release.set()
    assert code == FETCHED and "prefetched 0 more" in message, message


def test_keep_only_deletes_only_the_spools_own_files(pg_wal: Path) -> None:
    spool = spool_for(pg_wal)
    spool.put(FIRST.name, body(FIRST), "k")
    foreign = ["PG_VERSION", "postgresql.conf", ".hidden.tmp", f"{FIRST.name}.txt", "00000002.history"]
    for name in foreign:
        (spool.directory / name).write_text("not the spool's")
    (spool.directory / f".{FIRST.following().name}.tmp").write_bytes(b"an interrupted write")
    spool.keep_only(set())
    assert sorted(p.name for p in spool.directory.iterdir()) == sorted(foreign)


@pytest.mark.parametrize("layout", ["pgdata", "pg_wal", "parent", "symlinked_wal"])
def test_a_spool_is_refused_where_a_data_directory_is(tmp_path: Path, layout: str) -> None:
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text("16")
    wal = tmp_path / "waldisk"
    (wal / "archive_status").mkdir(parents=True)
    (pgdata / "pg_wal").symlink_to(wal)
    base = {"pgdata": pgdata, "pg_wal": pgdata / "pg_wal", "parent": tmp_path, "symlinked_wal": wal}[layout]
    with pytest.raises(BadRequestError, match=r"--prefetch-dir .*: it (is|contains) .*give an empty directory"):
        Spool(base, "shop")
    assert Spool(tmp_path / "elsewhere", "shop").directory == tmp_path / "elsewhere" / "lifeboat-prefetch-shop"
