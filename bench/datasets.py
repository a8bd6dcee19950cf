"""Benchmark datasets, generated on the spot (never downloaded).

- pgbench-style: the four pgbench tables, rows made server-side as `pgbench -i -I dtGvp` does. pgbench's
  own `-s` is an integer (scale 1 ≈ 16 MB on disk); a size in MB becomes a fractional scale here (rows
  of pgbench_accounts = scale x 100,000) so the smoke test can use a few MB. pgbench itself creates the
  tables and builds the primary keys.
- random: hard to compress: random `bytea` (2-8 KiB per row, from gen_random_uuid()) plus `jsonb`
  documents of random numbers and hex strings; about 70 % of the bytes in bytea.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass

from devstack.postgres import SUPERUSER, SUPERUSER_PASSWORD, PostgresServer

PGBENCH_MB_PER_SCALE = 15.6  # pg_database_size per pgbench scale unit, PostgreSQL 17 (fillfactor 100)
RANDOM_ROW_BYTES = 5 * 1024  # average bytea payload
RANDOM_BYTES_PER_MB = 1.28  # on-disk MB per MB of payload (TOAST headers, the jsonb table, indexes)


@dataclass(frozen=True)
class Dataset:
    name: str  # database and target name
    kind: str  # pgbench | random
    target_mb: float
    label: str

    @property
    def pgbench_scale(self) -> float:
        return self.target_mb / PGBENCH_MB_PER_SCALE


@dataclass(frozen=True)
class Built:
    dataset: Dataset
    size_bytes: int  # pg_database_size after generation
    seconds: float
    rows: dict[str, int]


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
                     FROM generate_series(1, 128 + (g * 7919 % 385)) WHERE g > 0)
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


def build(pg: PostgresServer, ds: Dataset) -> Built:
    t0 = time.monotonic()
    pg.psql(f'DROP DATABASE IF EXISTS "{ds.name}"')
    pg.psql(f'CREATE DATABASE "{ds.name}"')
    if ds.kind == "pgbench":
        _build_pgbench(pg, ds)
    elif ds.kind == "random":
        _build_random(pg, ds)
    else:
        raise ValueError(f"unknown dataset kind {ds.kind!r}")
    pg.psql("CHECKPOINT")
    size = int(pg.psql(f"SELECT pg_database_size('{ds.name}')"))
    rows = {}
    for line in pg.psql("SELECT relname || '=' || n_live_tup FROM pg_stat_user_tables", dbname=ds.name).splitlines():
        name, _, count = line.partition("=")
        rows[name] = int(count)
    return Built(ds, size, time.monotonic() - t0, rows)
