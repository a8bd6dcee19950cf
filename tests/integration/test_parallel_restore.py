"""Parallel restores (jobs=2) download the archive by concurrent ranged GETs of the recorded version, verify every
part as it lands, and refuse a part whose bytes are not the manifest's, naming it, with nothing left behind (no
database, no temporary file). Every maintenance step of a restore shares one connection.

Against moto and the session's PostgreSQL with a real pg_dump/pg_restore. The archive is ~9 MiB (no compression):
cut into 1 MiB parts as a manifest with per-part digests records them (chalicelib.logical.digests), each part read
by three ranged GETs (RANGE), so parts span ranges and the last range of each is short.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from chalicelib import wiring
from chalicelib.adapters.postgres import Login
from chalicelib.adapters.s3 import BackupStore, S3Store
from chalicelib.errors import IntegrityError
from chalicelib.logical import download, restore
from chalicelib.logical.catalog import BackupId, Catalog, Manifest, ManifestObject, PartDigest
from chalicelib.logical.digests import composite_sha256
from chalicelib.logical.dump import run_logical_backup
from chalicelib.logical.restore import RestoreOptions, RestoreResult, restore_logical
from devstack.local import LocalStack, target, write_config
from devstack.postgres import PostgresServer
from devstack.sample import BACKUP_ROLE

SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)
DB = "lifeboat_parallel"
ROWS = 60_000  # ~8.6 MB of hex text: a ~9 MiB archive without compression
PART = 1024 * 1024
RANGE = 384 * 1024


class CountingStore(S3Store):
    """The product's S3 store, counting ranged GETs; `replace_at` makes the store hand back other bytes for the
    range starting at that offset (what a corrupted object or a lying server looks like to the reader)."""

    def __init__(self, store: S3Store, replace_at: int | None = None) -> None:
        super().__init__(store.client, store.bucket)
        self.ranges: list[tuple[int, int]] = []
        self.replace_at = replace_at

    def get_range(self, key: str, version_id: str | None, start: int, end: int) -> bytes:
        self.ranges.append((start, end))
        data = super().get_range(key, version_id, start, end)
        return b"\x00" * len(data) if start == self.replace_at else data


class PartsCatalog(Catalog):
    """The catalog, showing the dump cut into PART-sized parts, each with its digest (the product's own parts are
    8 MiB: this archive would have two); `parts=False`: with a whole-object digest only (an older manifest).
    `wrong_digest`: that part's recorded digest is another one (and the object digest over them agrees, as a forger
    with write access to an unsigned manifest would make it)."""

    def __init__(self, catalog: Catalog, parts: bool = True, wrong_digest: int | None = None) -> None:
        super().__init__(catalog.store, catalog.layout, catalog.signing)
        self.parts, self.wrong_digest = parts, wrong_digest

    def manifest(self, bid: BackupId) -> Manifest:
        manifest = super().manifest(bid)
        objects = [self._with_parts(o) if o.role == "dump" else o for o in manifest.objects]
        return manifest.model_copy(update={"objects": objects})

    def _with_parts(self, obj: ManifestObject) -> ManifestObject:
        data = self.store.get_bytes(obj.key, obj.version_id)
        if not self.parts:  # as a manifest from before per-part digests records it
            return obj.model_copy(update={"parts": [], "sha256": hashlib.sha256(data).hexdigest()})
        parts = [
            PartDigest(
                number=n,
                offset=offset,
                size=len(data[offset : offset + PART]),
                sha256=hashlib.sha256(b"wrong" if n == self.wrong_digest else data[offset : offset + PART]).hexdigest(),
            )
            for n, offset in enumerate(range(0, len(data), PART), start=1)
        ]
        return obj.model_copy(update={"parts": parts, "sha256": composite_sha256([p.sha256 for p in parts])})


@pytest.fixture(scope="module")
def parallel_db(pg: PostgresServer) -> str:
    if pg.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{DB}'") == "0":
        pg.psql(f"CREATE DATABASE {DB} OWNER {BACKUP_ROLE}")
        pg.psql(
            f"SET ROLE {BACKUP_ROLE}; CREATE TABLE blobs (id int PRIMARY KEY, body text);"
            "INSERT INTO blobs SELECT g, md5(g::text) || md5(g::text || 'a') || md5(g::text || 'b')"
            f" || md5(g::text || 'c') FROM generate_series(1, {ROWS}) g",
            dbname=DB,
        )
    return DB


@pytest.fixture
def backup(
    aws: LocalStack, pg: PostgresServer, parallel_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """One uncompressed backup of `lifeboat_parallel`; jobs=2 downloads (whatever the size and this machine's cores),
    RANGE bytes a GET. Databases the test created are dropped afterwards."""
    config = write_config(
        tmp_path / "c.json", aws.bucket, [target("parallel", pg.port, aws.secret_arn, parallel_db, compression="none")]
    )
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(config))
    # download whatever the size and the cores (restore_strategy's own rule: tests/unit/test_restore_strategy.py)
    monkeypatch.setattr(restore, "restore_strategy", lambda size, jobs, cores: ("download", jobs))
    monkeypatch.setattr(download, "RANGE_SIZE", RANGE)
    outcome = run_logical_backup(wiring.backup_services(), "parallel", SLOT)
    assert outcome.status == "SUCCEEDED" and outcome.manifest is not None
    assert outcome.manifest.object("dump").size > 8 * PART, "the archive must span several parts"
    before = set(pg.psql("SELECT datname FROM pg_database").split())
    yield outcome.manifest.backup_id
    for name in set(pg.psql("SELECT datname FROM pg_database").split()) - before:
        pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _restore(
    backup_id: str,
    store: BackupStore,
    catalog: Catalog,
    database: str,
    workdir: Path,
    restore_id: str | None = None,
    **opts: Any,
) -> RestoreResult:
    cfg = wiring.load_config()
    login: Login = wiring.credentials().restore_login(cfg.target("parallel").connection)  # type: ignore[arg-type]
    return restore_logical(
        store,
        catalog,
        wiring.toolbox(),
        backup_id,
        login,
        database,
        RestoreOptions(**opts),
        restore_id=restore_id,
        workdir=workdir,
    )


def _services(**catalog_opts: Any) -> tuple[S3Store, PartsCatalog]:
    cfg = wiring.load_config()
    store = wiring.store(cfg)
    assert isinstance(store, S3Store)
    return store, PartsCatalog(wiring.catalog(cfg), **catalog_opts)


def test_jobs_2_downloads_every_part_by_ranged_gets_and_verifies(
    backup: str, pg: PostgresServer, tmp_path: Path
) -> None:
    plain, catalog = _services()
    store = CountingStore(plain)
    size = catalog.manifest(BackupId.parse(backup)).object("dump").size
    workdir = tmp_path / "work"
    workdir.mkdir()

    result = _restore(backup, store, catalog, "parallel_copy", workdir, jobs=2)

    assert result.verified, result.verification
    assert pg.psql("SELECT count(*), sum(length(body)) FROM blobs", dbname="parallel_copy") == f"{ROWS}|{ROWS * 128}"
    # every byte read once, by ranges that never cross a part boundary: three GETs a full part
    assert sorted(store.ranges)[0][0] == 0 and sum(end - start for start, end in store.ranges) == size
    parts = -(-size // PART)
    assert len(store.ranges) == 3 * (parts - 1) + -(-(size - (parts - 1) * PART) // RANGE)
    assert all(start // PART == (end - 1) // PART for start, end in store.ranges)
    assert list(workdir.iterdir()) == [], "the downloaded archive is removed"


@pytest.mark.parametrize(("part", "how"), [(3, "bytes"), (5, "digest")])
def test_a_part_that_is_not_the_manifests_is_refused_by_name_and_nothing_is_left(
    backup: str, pg: PostgresServer, tmp_path: Path, part: int, how: str
) -> None:
    plain, catalog = _services(wrong_digest=part if how == "digest" else None)
    store = CountingStore(plain, replace_at=(part - 1) * PART if how == "bytes" else None)
    workdir = tmp_path / "work"
    workdir.mkdir()

    with pytest.raises(IntegrityError) as refused:
        _restore(backup, store, catalog, "parallel_bad", workdir, jobs=2)

    assert f"SHA-256 in part {part} (bytes {(part - 1) * PART} to {part * PART - 1})" in str(refused.value)
    assert pg.psql("SELECT count(*) FROM pg_database WHERE datname = 'parallel_bad'") == "0"
    assert list(workdir.iterdir()) == [], "no temporary file is left"


def test_an_archive_without_part_digests_is_checked_whole_after_the_ranged_download(
    backup: str, pg: PostgresServer, tmp_path: Path
) -> None:
    """The legacy path (a manifest from before per-part digests): ranges are the reader's own, the whole-object
    SHA-256 is checked once the file is complete."""
    plain, catalog = _services(parts=False)
    result = _restore(backup, CountingStore(plain), catalog, "parallel_legacy", tmp_path, jobs=2)
    assert result.verified and pg.psql("SELECT count(*) FROM blobs", dbname="parallel_legacy") == str(ROWS)

    with pytest.raises(IntegrityError, match="does not match its manifest's SHA-256"):
        _restore(backup, CountingStore(plain, replace_at=2 * RANGE), catalog, "parallel_legacy_bad", tmp_path, jobs=2)
    assert pg.psql("SELECT count(*) FROM pg_database WHERE datname = 'parallel_legacy_bad'") == "0"


def test_a_restore_opens_one_maintenance_connection(
    backup: str, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every psycopg connection the restore opens, counted at psycopg's own connect: one to the maintenance database
    (existence, create, comments, the swap, a drop) and one in the restored database for its row counts; pg_restore
    makes its own. Before held_session, a plain restore opened 7 and a replacing one 9."""
    connects: list[str] = []
    original = psycopg.Connection.connect.__func__  # type: ignore[attr-defined]

    def counted(cls: type[psycopg.Connection[Any]], *args: Any, **kwargs: Any) -> psycopg.Connection[Any]:
        connects.append(str(kwargs.get("dbname")))
        return original(cls, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(psycopg.Connection, "connect", classmethod(counted))
    plain, catalog = _services(parts=False)  # jobs=1 streams, and the stream's per-part check is not this test's

    _restore(backup, plain, catalog, "parallel_once", tmp_path, jobs=1)
    assert sorted(connects) == sorted([DB, "parallel_once"]), connects

    connects.clear()
    _restore(backup, plain, catalog, "parallel_once", tmp_path, jobs=2, replace=True, restore_id="replace-1")
    assert sorted(connects) == sorted([DB, "parallel_once_lifeboat_eplace-1"]), connects
