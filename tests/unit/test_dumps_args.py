"""dumps: the pg_dump command line, in the syntax of the pg_dump that runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from chalicelib.adapters.pgtools import PgTool
from chalicelib.config import Logical
from chalicelib.logical.dump_tools import compression_args, pg_dump_args


def pg_dump(major: int) -> PgTool:
    return PgTool("pg_dump", major, Path(f"/opt/pg/{major}/bin/pg_dump"))


@pytest.mark.parametrize(
    ("compression", "major", "expected"),
    [
        ("gzip:9", 15, ["--compress=9"]),
        ("gzip:1", 14, ["--compress=1"]),
        ("gzip", 15, ["--compress=6"]),
        ("none", 15, ["--compress=0"]),
        ("gzip:9", 16, ["--compress=gzip:9"]),
        ("gzip:9", 17, ["--compress=gzip:9"]),
        ("gzip", 17, ["--compress=gzip"]),
        ("none", 17, ["--compress=none"]),
        ("zstd:3", 16, ["--compress=zstd:3"]),
        ("zstd:3", 17, ["--compress=zstd:3"]),
        ("zstd:long", 17, ["--compress=zstd:long"]),
        ("lz4:12", 17, ["--compress=lz4:12"]),
        ("zstd", 18, ["--compress=zstd"]),
    ],
)
def test_compression_args(compression: str, major: int, expected: list[str]) -> None:
    assert compression_args(compression, major) == expected


def test_pg_dump_17_full_argument_list() -> None:
    opts = Logical(compression="zstd:3", lock_wait_timeout_seconds=60)
    assert pg_dump_args(opts, pg_dump(17), "00000003-0000001B-1") == [
        "--format=custom",
        "--no-password",
        "--lock-wait-timeout=60000",
        "--compress=zstd:3",
        "--snapshot=00000003-0000001B-1",
    ]


def test_pg_dump_15_uses_the_gzip_level_syntax() -> None:
    opts = Logical(compression="gzip:9", lock_wait_timeout_seconds=5)
    assert pg_dump_args(opts, pg_dump(15), None) == [
        "--format=custom",
        "--no-password",
        "--lock-wait-timeout=5000",
        "--compress=9",
    ]


def test_effective_compression_overrides_the_configured_one() -> None:
    opts = Logical(compression="zstd:3")
    assert "--compress=6" in pg_dump_args(opts, pg_dump(15), None, compression="gzip:6")
    assert not any(a.startswith("--compress=zstd") for a in pg_dump_args(opts, pg_dump(15), None, "gzip:6"))


@pytest.mark.parametrize("snapshot", [None, ""])
def test_no_snapshot_flag_without_a_snapshot(snapshot: str | None) -> None:
    args = pg_dump_args(Logical(), pg_dump(17), snapshot)
    assert not any(a.startswith("--snapshot") for a in args)


def test_lock_wait_timeout_is_in_milliseconds() -> None:
    assert "--lock-wait-timeout=3600000" in pg_dump_args(Logical(lock_wait_timeout_seconds=3600), pg_dump(17), None)
    assert "--lock-wait-timeout=1000" in pg_dump_args(Logical(lock_wait_timeout_seconds=1), pg_dump(17), None)


def test_patterns_are_separate_arguments_without_shell_quoting() -> None:
    opts = Logical(
        schemas=["sales", "Weird Schema", "app_*"],
        exclude_schemas=["tmp_*"],
        tables=["public.orders", '"MixedCase"', "it's; rm -rf /"],
        exclude_tables=["*_log", "public.audit?"],
    )
    args = pg_dump_args(opts, pg_dump(17), "snap-1")
    assert args[5:] == [
        "--schema=sales",
        "--schema=Weird Schema",
        "--schema=app_*",
        "--exclude-schema=tmp_*",
        "--table=public.orders",
        '--table="MixedCase"',
        "--table=it's; rm -rf /",
        "--exclude-table=*_log",
        "--exclude-table=public.audit?",
    ]
    assert all(isinstance(a, str) for a in args)


def test_no_password_on_the_command_line() -> None:
    args = pg_dump_args(Logical(), pg_dump(17), None)
    assert "--no-password" in args
    assert not any("password=" in a.lower() for a in args)
