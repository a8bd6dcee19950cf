"""Benchmark datasets, generated on the spot (never downloaded).

- pgbench-style: the four pgbench tables, rows made server-side as `pgbench -i -I dtGvp` does. pgbench's
  own `-s` is an integer (scale 1 ≈ 16 MB on disk); a size in MB becomes a fractional scale here (rows
  of pgbench_accounts = scale x 100,000) so the smoke test can use a few MB. pgbench itself creates the
  tables and builds the primary keys.
- random: hard to compress: random `bytea` (2-8 KiB per row, from gen_random_uuid()) plus `jsonb`
  documents of random numbers and hex strings; about 70 % of the bytes in bytea.

Every row is made by SQL inside PostgreSQL (generate_series), never by a Python loop. Generation is
cached: `CachedPostgresServer` keeps its data directory in the benchmark's workdir, and each database
carries a comment naming what it was made from (`fingerprint`): a later run with the same sizes reuses it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass

from devstack.postgres import SUPERUSER, SUPERUSER_PASSWORD, PostgresServer

PGBENCH_MB_PER_SCALE = 15.6  # pg_database_size per pgbench scale unit, PostgreSQL 17 (fillfactor 100)
RANDOM_ROW_BYTES = 5 * 1024  # average bytea payload
RANDOM_BYTES_PER_MB = 1.28  # on-disk MB per MB of payload (TOAST headers, the jsonb table, indexes)
GENERATOR_VERSION = 1  # bump when a generator changes: cached databases made by an older one are remade


@dataclass(frozen=True)
class Dataset:
    name: str  # database and target name
    kind: str  # pgbench | random
    target_mb: float
    label: str

    @property
    def pgbench_scale(self) -> float:
        return self.target_mb / PGBENCH_MB_PER_SCALE

    @property
    def fingerprint(self) -> str:
        """What the database was generated from: a cached one is reused only when this matches."""
        return f"lifeboat-bench v{GENERATOR_VERSION} {self.kind} {self.target_mb:g} MB"


@dataclass(frozen=True)
class Built:
    dataset: Dataset
    size_bytes: int  # pg_database_size after generation
    seconds: float  # generation time, 0 when reused from the cache
    rows: dict[str, int]
    cached: bool = False


@dataclass
class CachedPostgresServer(PostgresServer):
    """A PostgreSQL server whose data directory outlives the run, so datasets are generated once.

    The first start is PostgresServer's (initdb); a later one reuses the data directory with this run's
    port, socket directory and certificates (appended to postgresql.auto.conf: the last setting wins).
    """

    def start(self) -> CachedPostgresServer:
        version_file = self.data_dir / "PG_VERSION"
        version = subprocess.run(
            [str(self.bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout
        major = int(version.split()[-1].split(".")[0])
        if version_file.exists() and int(version_file.read_text()) != major:
            shutil.rmtree(self.data_dir)  # made by another major: start over
        if not version_file.exists():
            super().start()
            return self
        self.major = major
        (self.base_dir / "pw").write_text(SUPERUSER_PASSWORD + "\n")
        with open(self.data_dir / "postgresql.auto.conf", "a") as f:
            f.write(f"port = {self.port}\nunix_socket_directories = '{self.base_dir}'\n")
        if self.ssl:
            self._make_certs()
        self.pg_ctl_start()
        return self


def _pgbench(pg: PostgresServer, dbname: str, steps: str, scale: int) -> None:
    env = {**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD}
    subprocess.run(
        [
            str(pg.bin_dir / "pgbench"),
            "-i",
            "-I",
            steps,
            "-s",
            str(scale),
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            str(pg.port),
            "-U",
            SUPERUSER,
            dbname,
        ],
        env=env,
        check=True,
        capture_output=True,
    )


def _build_pgbench(pg: PostgresServer, ds: Dataset) -> None:
    scale = ds.pgbench_scale
    accounts = max(1000, round(scale * 100_000))
    whole = max(1, round(scale))
    _pgbench(pg, ds.name, "dt", whole)  # drop and create the tables, as pgbench does
    # pgbench's server-side generation ("G"), with a fractional scale for accounts
    pg.psql(
        f"""
        INSERT INTO pgbench_branches(bid, bbalance) SELECT bid, 0 FROM generate_series(1, {whole}) AS bid;
        INSERT INTO pgbench_tellers(tid, bid, tbalance)
          SELECT tid, (tid - 1) / 10 + 1, 0 FROM generate_series(1, {whole * 10}) AS tid;
        INSERT INTO pgbench_accounts(aid, bid, abalance, filler)
          SELECT aid, least((aid - 1) / 100000 + 1, {whole}), 0, '' FROM generate_series(1, {accounts}) AS aid;
    """,  # noqa: S608 (numbers only)
        dbname=ds.name,
    )
    _pgbench(pg, ds.name, "vp", whole)  # vacuum, primary keys


def _build_random(pg: PostgresServer, ds: Dataset) -> None:
    payload_mb = ds.target_mb / RANDOM_BYTES_PER_MB
    blob_rows = max(100, round(payload_mb * 0.7 * 1024 * 1024 / RANDOM_ROW_BYTES))
    doc_rows = max(100, round(payload_mb * 0.3 * 1024 * 1024 / 700))
    # uuid v4 bytes are 122 random bits in 128: close enough to incompressible for zstd/gzip/lz4.
    pg.psql(
        f"""
        CREATE TABLE random_blobs (id bigint PRIMARY KEY, payload bytea NOT NULL);
        ALTER TABLE random_blobs ALTER COLUMN payload SET STORAGE EXTERNAL;
        INSERT INTO random_blobs
          SELECT g, (SELECT string_agg(uuid_send(gen_random_uuid()), ''::bytea)
                     FROM generate_series(1, 128 + (g::bigint * 7919 % 385)::int) WHERE g > 0)
          FROM generate_series(1, {blob_rows}) AS g;
        CREATE TABLE random_docs (id bigint PRIMARY KEY, doc jsonb NOT NULL);
        INSERT INTO random_docs
          SELECT g, jsonb_build_object(
            'id', g, 'uuid', gen_random_uuid(), 'score', random(), 'amount', (random() * 1e6)::numeric(12, 2),
            'tags', (SELECT jsonb_agg(md5(random()::text)) FROM generate_series(1, 4) WHERE g > 0),
            'ts', now() - random() * interval '1000 days',
            'body', (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 14) WHERE g > 0))
          FROM generate_series(1, {doc_rows}) AS g;
    """,  # noqa: S608 (numbers only)
        dbname=ds.name,
    )
    pg.psql("VACUUM ANALYZE random_blobs", dbname=ds.name)
    pg.psql("VACUUM ANALYZE random_docs", dbname=ds.name)


def cached_fingerprint(pg: PostgresServer, name: str) -> str:
    """The comment of database `name` ("" when it does not exist or has none)."""
    sql = "SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database"
    sql += f" WHERE datname = '{name}'"  # a dataset name of ours
    return str(pg.psql(sql))


def build(pg: PostgresServer, ds: Dataset) -> Built:
    """The dataset's database: reused when a cached one has the same fingerprint, else generated."""
    t0 = time.monotonic()
    cached = cached_fingerprint(pg, ds.name) == ds.fingerprint
    if not cached:
        pg.psql(f'DROP DATABASE IF EXISTS "{ds.name}"')
        pg.psql(f'CREATE DATABASE "{ds.name}"')
        if ds.kind == "pgbench":
            _build_pgbench(pg, ds)
        elif ds.kind == "random":
            _build_random(pg, ds)
        else:
            raise ValueError(f"unknown dataset kind {ds.kind!r}: pgbench or random")
        pg.psql("CHECKPOINT")
        pg.psql(f"COMMENT ON DATABASE \"{ds.name}\" IS '{ds.fingerprint}'")
    size = int(pg.psql(f"SELECT pg_database_size('{ds.name}')"))
    rows = {}
    for line in pg.psql("SELECT relname || '=' || n_live_tup FROM pg_stat_user_tables", dbname=ds.name).splitlines():
        name, _, count = line.partition("=")
        rows[name] = int(count)
    return Built(ds, size, 0.0 if cached else time.monotonic() - t0, rows, cached)
